"""Run configuration: pydantic models at the boundary (YAML presets + command-line overrides).

Every model forbids unknown keys, so a typo in a YAML file is an error naming the field.
Core functions never take these models whole; they take the small frozen objects built from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoseg.errors import ConfigError

__all__ = [
    "ClusterConfig",
    "Config",
    "PredictConfig",
    "RunConfig",
    "VectorizeConfig",
    "load_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PredictConfig(_Section):
    """How a scene is cut, run through the model and stitched."""

    tile_size: int | None = Field(
        None, gt=0, description="model input tile side in pixels (default: the bundle's)"
    )
    halo: int | None = Field(
        None, ge=0, description="context pixels per tile side, dropped after prediction "
        "(default: the bundle's; rounded up to the model's stride)"
    )
    block_size: int = Field(
        2048, gt=0, description="side of one Dask block in pixels (rounded up to a whole "
        "number of tile cores); sets memory per task"
    )
    batch_size: int = Field(4, gt=0, description="tiles per forward pass")
    stitch: Literal["trim", "blend"] = Field(
        "trim", description="trim: keep each tile's core; blend: cosine-weighted probabilities"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (resolved on workers)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision on CUDA; CPU always runs fp32"
    )
    channels_last: bool = Field(False, description="NHWC memory format for convolutions")
    confidence: bool = Field(False, description="also write max probability (percent)")
    probabilities: bool = Field(False, description="also write per-class probabilities (percent)")


class VectorizeConfig(_Section):
    """How a mask becomes polygons (``geoseg vectorize`` and the batch run)."""

    enabled: bool = Field(True, description="write the GeoPackage in batch runs")
    min_area_m2: float = Field(
        0.0, ge=0, description="sieve regions smaller than this into their largest neighbour, m²"
    )
    simplify_m: float = Field(
        0.0, ge=0, description="coverage-preserving simplification tolerance, metres"
    )
    connectivity: Literal[4, 8] = Field(4, description="pixel connectivity of regions")
    layer: str = Field("landcover", min_length=1, description="GeoPackage layer name")
    block_size: int = Field(2048, ge=16, description="side of one vectorizing block, px")


class RunConfig(_Section):
    """Batch behaviour of ``geoseg run``."""

    on_error: Literal["continue", "fail"] = Field(
        "continue", description="continue: report a failed scene and go on; fail: stop there"
    )
    band_fill: float | None = Field(
        0, description="value marking missing pixels in band files that declare no nodata "
        "(0 for Sentinel-2 and Landsat); null: every pixel is data"
    )
    quicklook_size: int = Field(
        512, ge=64, le=4096, description="longest side of the report's quick-look pictures, px"
    )
    html: bool = Field(True, description="write report.html with quick-looks")
    stac: bool = Field(True, description="write a STAC Item per scene")


class ClusterConfig(_Section):
    """Where tasks run."""

    scheduler: str | None = Field(
        None, description="address of an existing Dask scheduler (tcp://host:8786), or "
        "'synchronous' to run in this process; default: a local cluster"
    )
    workers: int | None = Field(
        None, gt=0, description="worker processes of the local cluster (default: one per 2 cores)"
    )
    threads_per_worker: int = Field(1, gt=0, description="task threads per worker process")
    memory_limit: str = Field("auto", description="memory limit per local worker, e.g. '4GiB'")


class Config(_Section):
    """The whole configuration; each section mirrors a stage."""

    predict: PredictConfig = Field(default_factory=PredictConfig)
    vectorize: VectorizeConfig = Field(default_factory=VectorizeConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Build a :class:`Config` from an optional YAML file and nested overrides.

    Overrides win over the file; ``None`` values in overrides are ignored (unset flags).

    Raises:
        ConfigError: unreadable YAML, unknown keys or invalid values (the field is named).
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
        data = loaded
    clean = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in (overrides or {}).items()
    }
    try:
        return Config.model_validate(_merge(data, clean))
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}invalid config: {problems}") from exc
