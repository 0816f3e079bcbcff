"""Model architectures and bundles (safetensors weights + validated metadata)."""

from geoseg.models.bundle import (
    BandSpec,
    Bundle,
    BundleMeta,
    ClassSpec,
    load_bundle,
    read_bundle_meta,
    save_bundle,
)
from geoseg.models.registry import (
    ARCHITECTURES,
    NON_LOCAL_ARCHITECTURES,
    build_model,
    model_align,
    recommended_halo,
)

__all__ = [
    "ARCHITECTURES",
    "NON_LOCAL_ARCHITECTURES",
    "BandSpec",
    "Bundle",
    "BundleMeta",
    "ClassSpec",
    "build_model",
    "load_bundle",
    "model_align",
    "read_bundle_meta",
    "recommended_halo",
    "save_bundle",
]
