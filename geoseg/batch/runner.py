"""``geoseg run``: one scene → mask COG, GeoPackage, quick-looks, STAC Item and a record.

One Dask client serves the whole run (the model is shipped to each worker once);
:mod:`geoseg.batch.inflight` runs :func:`process_scene` for several scenes at once. Each scene is
isolated: whatever goes wrong with it is recorded as its failure and the run goes on (or stops,
with ``on_error="fail"``). Outputs appear under their final names only when a scene is complete
(:mod:`geoseg.batch.state`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from geoseg.batch.discover import SceneSource
from geoseg.batch.outdir import output_error
from geoseg.batch.record import ClassCount, SceneRecord, utc_now
from geoseg.batch.sources import open_source
from geoseg.batch.state import (
    RECORD,
    STATE_DIR,
    SceneFolder,
    atomic_write_json,
)
from geoseg.config import Config
from geoseg.errors import SceneError
from geoseg.models.bundle import BundleInfo
from geoseg.tasks import TaskPolicy

if TYPE_CHECKING:
    from geoseg.pipeline import PredictionPlan, PredictResult
    from geoseg.scene import Scene

__all__ = ["BatchEvents", "BatchResult", "QuietEvents", "failure_path", "file_name",
           "message_of", "process_scene", "select_split", "settings_of", "shown"]

log = logging.getLogger(__name__)


class BatchEvents(Protocol):
    """What a batch run tells its display (a progress bar, or log lines).

    ``scene_started`` and ``scene_finished`` come in scene order from the thread that called
    the run; ``progress`` (``stage`` ``predict`` or ``vectorize``, blocks ``done`` of ``total``
    of scene ``scene``) comes from the scenes' own threads, several at once with scenes in
    flight, so a display must be thread-safe. A ``progress`` without the ``scene`` parameter
    (displays written before scenes in flight) is called without it.
    """

    def scene_started(self, index: int, total: int, name: str) -> None: ...
    def progress(self, stage: str, done: int, total: int, scene: str = "") -> None: ...
    def scene_finished(self, entry: dict[str, Any]) -> None: ...


class QuietEvents:
    """Events that only log."""

    def scene_started(self, index: int, total: int, name: str) -> None:
        log.info("[%d/%d] %s", index + 1, total, name)

    def progress(self, stage: str, done: int, total: int, scene: str = "") -> None:
        pass

    def scene_finished(self, entry: dict[str, Any]) -> None:
        log.info("%s: %s %s", entry["scene"], entry["status"], entry.get("error") or "")


@dataclass
class BatchResult:
    """The outcome of :func:`run_batch`: one entry per scene handled, in scene order."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(e["status"] == status for e in self.entries)

    @property
    def failed(self) -> int:
        return self.count("failed")


def select_split(sources: list[SceneSource], split: tuple[int, int] | None) -> list[SceneSource]:
    """The scenes of split ``(i, n)``: those whose index in ``sources`` is ``i`` modulo ``n``."""
    if split is None:
        return sources
    i, n = split
    return [s for k, s in enumerate(sources) if k % n == i]


def settings_of(cfg: Config) -> dict[str, Any]:
    """The settings that change outputs (not speed): the resume fingerprint covers these."""
    p = cfg.predict
    out = {
        "predict": p.model_dump(include={"tile_size", "halo", "stitch", "precision",
                                         "confidence", "probabilities"}),
        "band_fill": cfg.run.band_fill,
        "vectorize": cfg.vectorize.model_dump(exclude={"block_size"})
        if cfg.vectorize.enabled else None,
    }
    return out


def failure_path(out_dir: Path, name: str) -> Path:
    """Where a scene's last failure is recorded (removed when it next succeeds)."""
    return out_dir / STATE_DIR / f"{name}.failed.json"


def _class_areas(mask: Path, pixels: dict[int, int]) -> dict[int, float]:
    """Class id → area in m²: pixel count × pixel area (mean geodesic pixel area when the
    CRS is geographic, an approximation over the scene's latitudes)."""
    import numpy as np
    from pyproj import CRS

    from geoseg.vectorize import read_mask_info

    info = read_mask_info(mask)
    if info.row_area_m2 is not None:
        pixel = float(np.mean(info.row_area_m2))
    else:
        unit = CRS.from_wkt(info.crs_wkt).axis_info[0].unit_conversion_factor or 1.0
        pixel = info.pixel_area_m2 * unit * unit
    return {c: n * pixel for c, n in pixels.items()}


def process_scene(
    source: SceneSource,
    bundle: BundleInfo,
    cfg: Config,
    folder: SceneFolder,
    client: Any,
    threads: int | None,
    fp: str,
    progress: Callable[[str, int, int], None],
    policy: TaskPolicy | None = None,
) -> SceneRecord:
    """Compute one scene into its staging folder and commit it; return its ``ok`` record.

    The stages, each timed into the record's ``timings_s``: open and plan (``open``), predict
    the mask COG (``predict``), polygons (``vectorize``, when enabled), then quick-looks, class
    areas and the STAC Item (``report``); the record is written last, and the folder committed.

    Raises:
        Exception: anything that went wrong; the staging folder is removed first. An error of
            the output folder itself (disk full, read-only) is raised as
            :class:`~geoseg.errors.OutputError`, classified before the partial files go.
    """
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    try:
        scene, stage, plan = _open_scene(source, bundle, cfg, folder, threads)
        timings["open"] = time.perf_counter() - t
        t = time.perf_counter()
        result = _predict_mask(plan, client, progress, policy)
        timings["predict"] = time.perf_counter() - t
        outputs = dict(result.outputs)
        if cfg.vectorize.enabled:
            t = time.perf_counter()
            outputs["vectors"] = _vectorize(outputs["mask"], stage / f"{source.name}.gpkg",
                                            cfg, client, progress, policy)
            timings["vectorize"] = time.perf_counter() - t
        t = time.perf_counter()
        outputs.update(_quicklooks(scene, plan, result, outputs["mask"], stage,
                                   cfg.run.quicklook_size))
        classes = _class_counts(outputs["mask"], result.class_pixels, bundle)
        if cfg.run.stac:
            outputs["stac"] = _write_stac(scene, outputs, stage, bundle, cfg, result.class_pixels,
                                          folder.name, folder.root_uri)
        timings["report"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        record = _ok_record(source, bundle, fp, plan, result, classes,
                            {role: p.relative_to(stage).as_posix() for role, p in outputs.items()},
                            timings)
        atomic_write_json(stage / RECORD, record.to_json())
        folder.commit()
        return record
    except BaseException as exc:
        # before the partial files go (a full disk may then look empty)
        option = "--out" if folder.remote is None else "--scratch"  # where it was built
        stopping = output_error(folder.final.parent, exc, option=option) \
            if isinstance(exc, Exception) else None
        folder.clean()
        if stopping is not None:
            raise stopping from exc
        raise


def _open_scene(
    source: SceneSource, bundle: BundleInfo, cfg: Config, folder: SceneFolder, threads: int | None
) -> tuple[Scene, Path, PredictionPlan]:
    """Stage ``open``: open the scene's files, create its staging folder and plan the
    prediction into it (every check, nothing computed), its block tasks also returning their
    share of the quick-look. Returns the scene, the staging folder and the plan."""
    from geoseg.batch.quicklook import pick_rgb
    from geoseg.pipeline import plan_scene_prediction
    from geoseg.remote.uri import is_remote

    remote = any(is_remote(f) for f in source.files)
    scene = open_source(source, bundle.meta.band_names, cfg.run.band_fill,
                        cfg.storage.cloud_options() if remote else None)
    stage = folder.open()
    plan = plan_scene_prediction(scene, bundle, stage / f"{source.name}.tif", cfg.predict,
                                 overwrite=True, threads=threads, source=shown(source.path))
    plan = plan.with_quicklook(pick_rgb(plan.job.bands), cfg.run.quicklook_size)
    return scene, stage, plan


def _predict_mask(
    plan: PredictionPlan,
    client: Any,
    progress: Callable[[str, int, int], None],
    policy: TaskPolicy | None,
) -> PredictResult:
    """Stage ``predict``: run the plan (the mask COG and its companions, block by block).

    Raises:
        SceneError: every pixel of the scene is nodata.
    """
    from geoseg.pipeline import run_prediction

    result = run_prediction(plan, client, lambda d, n: progress("predict", d, n), policy=policy)
    if not any(result.class_pixels.values()):
        scene = plan.scene
        files = ", ".join(str(f) for f in scene.files)
        raise SceneError(
            f"{files}: every pixel is nodata (nodata value {scene.nodata}, masks, alpha or "
            "NaN), so there is nothing to classify; check the file, or its nodata value "
            "(`gdalinfo`)")
    return result


def _vectorize(
    mask: Path,
    gpkg: Path,
    cfg: Config,
    client: Any,
    progress: Callable[[str, int, int], None],
    policy: TaskPolicy | None,
) -> Path:
    """Stage ``vectorize``: the mask's polygons into the GeoPackage ``gpkg``; returns its path."""
    from geoseg.vectorize import vectorize_mask

    v = cfg.vectorize
    vec = vectorize_mask(mask, gpkg, min_area_m2=v.min_area_m2, simplify_m=v.simplify_m,
                         connectivity=v.connectivity, layer=v.layer, block_size=v.block_size,
                         client=client, overwrite=True,
                         progress=lambda d, n: progress("vectorize", d, n), policy=policy)
    return vec.path


def _quicklooks(
    scene: Scene, plan: PredictionPlan, result: PredictResult, mask: Path, stage: Path, size: int
) -> dict[str, Path]:
    """Stage ``report``, pictures: ``quicklook.png`` (the scene, true colour where it can) and
    ``mask.png`` (the mask in its colours), at most ``size`` px a side. Role → path.

    The scene's picture is the one its blocks summed while they were predicted
    (``result.quicklook``); only a result without it has the scene read again."""
    from geoseg.batch.quicklook import (
        canvas_quicklook,
        mask_quicklook,
        scene_quicklook,
        write_png,
    )

    picture = (canvas_quicklook(result.quicklook) if result.quicklook is not None
               else scene_quicklook(scene, plan.job.bands, size))
    return {
        "thumbnail": write_png(stage / "quicklook.png", picture),
        "mask-thumbnail": write_png(stage / "mask.png", mask_quicklook(mask, size)),
    }


def _class_counts(mask: Path, pixels: dict[int, int], bundle: BundleInfo) -> dict[str, ClassCount]:
    """Stage ``report``, areas: class name → id, pixel count and area (m², to the mm²)."""
    names = {c.id: c.name for c in bundle.meta.classes}
    areas = _class_areas(mask, pixels)
    return {names[c]: ClassCount(id=c, pixels=n, area_m2=round(areas[c], 3))
            for c, n in pixels.items()}


def _write_stac(
    scene: Scene,
    outputs: dict[str, Path],
    stage: Path,
    bundle: BundleInfo,
    cfg: Config,
    class_pixels: dict[int, int],
    name: str,
    root: str | None = None,
) -> Path:
    """Stage ``report``, STAC: the scene's Item, with ``outputs`` as its assets and how it was
    made (geoseg version, bundle, settings, inputs), as ``stac.json``; returns its path.

    The Item links to the run's catalog (:func:`~geoseg.batch.catalog.with_item_links`):
    relative links for a local output folder (``root`` None); absolute ones, ``self``
    included, under the output root URI ``root`` (the assets' relative hrefs then resolve
    against that ``self``)."""
    from geoseg.batch.catalog import with_item_links
    from geoseg.batch.stac import stac_item

    meta = bundle.meta
    provenance = {
        "geoseg:version": _version(),
        "geoseg:bundle": {"file": Path(bundle.path).name, "sha256": bundle.sha256,
                          "arch": meta.arch, "encoder": meta.encoder,
                          "description": meta.description},
        "geoseg:settings": settings_of(cfg),
        "geoseg:inputs": [shown(f) for f in scene.files],
    }
    classes = [c.model_dump() for c in meta.classes]
    item = stac_item(scene, outputs, stage, classes, class_pixels, provenance)
    item = with_item_links(item, name, root)
    path = stage / "stac.json"
    atomic_write_json(path, item)
    return path


def _ok_record(
    source: SceneSource,
    bundle: BundleInfo,
    fp: str,
    plan: PredictionPlan,
    result: PredictResult,
    classes: dict[str, ClassCount],
    outputs: dict[str, str],
    timings: dict[str, float],
) -> SceneRecord:
    """The record of a finished scene (``outputs``: role → path relative to its folder)."""
    scene = plan.scene
    return SceneRecord(
        scene=source.name,
        original=source.original,
        kind=source.kind,
        inputs=tuple(shown(f) for f in scene.files),
        bands={b.name: f"{file_name(b.path)}#{b.index}" + (" (resampled)" if b.warp else "")
               for b in plan.job.bands},
        encodings=plan.job.converted,
        stac=_stac_read(source, bundle),
        size=(scene.height, scene.width),
        crs=_crs_name(scene.crs_wkt),
        warnings=tuple(scene.warnings),  # usable, but the user should know (by file)
        outputs=outputs,
        classes=classes,
        nodata_pixels=result.nodata_pixels,
        blocks=len(result.grid),
        tiles=result.tiles,
        timings_s={k: round(v, 3) for k, v in timings.items()},
        fingerprint=fp,
        finished=utc_now(),
        geoseg_version=_version(),
        bundle_sha256=bundle.sha256,
    )


def _stac_read(source: SceneSource, bundle: BundleInfo) -> dict[str, Any] | None:
    """What a STAC scene was read from, for its record: the item's id and document and each
    band's asset (:meth:`SceneSource.band_match`), URIs redacted; None for other scenes."""
    from geoseg.remote.uri import redact

    if source.stac is None:
        return None
    bands = {}
    for band, match in source.band_match(bundle.meta.band_names).items():
        asset = match.to_json()
        asset["href"] = redact(str(asset["href"]))
        bands[band] = asset
    return {"id": source.stac.id, "document": redact(str(source.stac.document)), "bands": bands}


def _crs_name(wkt: str) -> str:
    from pyproj import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geoseg")
    except PackageNotFoundError:
        return "unknown"


def shown(path: str | os.PathLike[str]) -> str:
    """How a record names an input file: a local path as it is, a URI with its credentials
    (signed-URL and SAS tokens, userinfo) redacted."""
    from geoseg.remote.uri import is_remote, redact

    return redact(path) if isinstance(path, str) and is_remote(path) else str(path)


def file_name(path: str | os.PathLike[str]) -> str:
    """The last component of a local path or URI (a URI's query string dropped)."""
    from geoseg.remote.uri import is_remote, name

    return name(path) if isinstance(path, str) and is_remote(path) else Path(path).name


def message_of(exc: BaseException) -> str:
    """How a scene's failure reads in its entry: geoseg's own errors as they are, others
    prefixed with their type; credentials redacted either way."""
    from geoseg.remote.uri import redact

    text = redact(str(exc).strip()) or type(exc).__name__
    if type(exc).__module__.startswith("geoseg"):
        return text
    return f"{type(exc).__name__}: {text}"
