"""geoseg: huge satellite scenes → seamless land-cover masks, on Dask and smp models.

The public API is small; importing it loads neither torch nor distributed.
"""

from __future__ import annotations

from geoseg.config import Config, load_config
from geoseg.errors import (
    BundleError,
    ConfigError,
    GeoSegError,
    OutputExistsError,
    SceneError,
)
from geoseg.models.bundle import BundleMeta, load_bundle, read_bundle_meta, save_bundle
from geoseg.pipeline import PredictResult, predict_scene
from geoseg.scene import Scene, open_scene
from geoseg.tiling import SceneGrid, TileLattice, Window

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "BundleMeta",
    "Config",
    "ConfigError",
    "GeoSegError",
    "OutputExistsError",
    "PredictResult",
    "Scene",
    "SceneError",
    "SceneGrid",
    "TileLattice",
    "Window",
    "__version__",
    "load_bundle",
    "load_config",
    "open_scene",
    "predict_scene",
    "read_bundle_meta",
    "save_bundle",
]
