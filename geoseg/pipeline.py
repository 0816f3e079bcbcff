"""One scene from file to finished rasters: check inputs, build the lazy prediction, write COGs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.config import PredictConfig
from geoseg.errors import ConfigError, SceneError
from geoseg.graph import iter_blocks, lazy_prediction
from geoseg.maskfile import CLASSES_TAG, NODATA, classes_tag
from geoseg.maskfile import output_paths as mask_output_paths
from geoseg.models.bundle import Bundle, BundleInfo, check_align, check_unchanged, load_bundle
from geoseg.models.registry import NON_LOCAL_ARCHITECTURES, inference_tile_size
from geoseg.normalize import band_conversions
from geoseg.predict import BlockJob, ModelRef, OutputSpec, cache_model, has_model
from geoseg.remote.uri import name as file_name  # a URI's name without its query string
from geoseg.scene import BandRef, Scene, open_scene, select_bands
from geoseg.tasks import TaskPolicy
from geoseg.thumb import QuicklookCanvas, QuicklookSpec, quicklook_shape
from geoseg.tiling import SceneGrid, TileLattice
from geoseg.writers import RasterSpec, StreamingCOGWriter, check_writable

__all__ = [
    "CLASSES_TAG",
    "check_precision",
    "check_scene",
    "load_model",
    "model_ref",
    "PredictResult",
    "PredictionPlan",
    "output_paths",
    "plan_prediction",
    "plan_scene_prediction",
    "plan_scene",
    "predict_scene",
    "run_prediction",
    "tile_lattice",
]

log = logging.getLogger(__name__)

#: Called after every finished block with ``(blocks done, blocks total)``.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict_scene` wrote and measured.

    Attributes:
        outputs: role (``mask``, ``mask-style``, ``mask-categories``, ``confidence``,
            ``probabilities``) → path written.
        grid: the block grid used.
        class_pixels: class id → number of pixels in the mask (nodata excluded).
        nodata_pixels: number of nodata pixels in the mask.
        seconds: wall-clock time of the whole scene.
        tiles: tiles run through the model.
        quicklook: the scene's quick-look summed from the blocks' parts
            (:class:`~geoseg.thumb.QuicklookCanvas`), when the plan asked for one
            (:meth:`PredictionPlan.with_quicklook`); else None.
    """

    outputs: dict[str, Path]
    grid: SceneGrid
    class_pixels: dict[int, int]
    nodata_pixels: int
    seconds: float
    tiles: int = field(default=0)
    quicklook: QuicklookCanvas | None = None


def output_paths(mask: Path, cfg: PredictConfig) -> dict[str, Path]:
    """The files a prediction writes: the mask with its style and category names, plus
    ``*.confidence.tif`` / ``*.probabilities.tif`` (:func:`geoseg.maskfile.output_paths`)."""
    return mask_output_paths(mask, cfg.confidence, cfg.probabilities)


#: Model pixels per forward pass when no batch size is configured: 4 tiles of 512², 1 of 1024².
AUTO_BATCH_PIXELS = 4 * 512 * 512


def batch_size(cfg: PredictConfig, lattice: TileLattice) -> int:
    """Tiles per forward pass: ``cfg.batch_size``, else about :data:`AUTO_BATCH_PIXELS` model px."""
    if cfg.batch_size is not None:
        return cfg.batch_size
    return max(1, AUTO_BATCH_PIXELS // lattice.tile_size**2)


def plan_scene(scene: Scene, bundle: BundleInfo, cfg: PredictConfig, align: int) -> SceneGrid:
    """The block grid for ``scene``: tile size and halo from ``cfg`` or the bundle, fitted.

    Without a configured tile size, local architectures run at
    :func:`~geoseg.models.registry.inference_tile_size` (at least 1024 px), the others at the
    bundle's tile size.
    """
    lattice = tile_lattice(bundle, cfg, align)
    return SceneGrid.fit(scene.height, scene.width, lattice, cfg.block_size, cfg.stitch == "blend")


def tile_lattice(bundle: BundleInfo, cfg: PredictConfig, align: int) -> TileLattice:
    """The tile lattice every scene of a run uses: tile size and halo from ``cfg`` or the
    bundle, rounded up to multiples of ``align`` (the model's stride).

    Raises:
        ConfigError: the halo leaves a tile no core (halo ≥ tile size / 2).
    """
    meta = bundle.meta
    halo = meta.halo if cfg.halo is None else cfg.halo
    tile_size = cfg.tile_size or inference_tile_size(meta.arch, meta.tile_size, halo)
    try:
        lattice = TileLattice.fit(tile_size, halo, align)
    except ValueError as exc:
        raise ConfigError(
            f"tile size {tile_size} px with a halo of {halo} px per side ({exc}); lower "
            "predict.halo (--halo) or raise predict.tile_size (--tile-size)") from None
    if (lattice.tile_size, lattice.halo) != (tile_size, halo):
        log.info(
            "tile %d / halo %d rounded up to %d / %d (multiples of the model stride %d)",
            tile_size, halo, lattice.tile_size, lattice.halo, align,
        )
    if meta.arch in NON_LOCAL_ARCHITECTURES and lattice.tile_size != meta.tile_size:
        log.warning(
            "%s pools over the whole tile: with tile size %d instead of the bundle's %d the "
            "mask depends on the tile size", meta.arch, lattice.tile_size, meta.tile_size,
        )
    return lattice


def check_precision(cfg: PredictConfig) -> None:
    """Raise :class:`ConfigError` when mixed precision is asked of the CPU."""
    if cfg.precision != "fp32" and cfg.device == "cpu":
        raise ConfigError(f"precision {cfg.precision} needs a CUDA device; use fp32 on CPU")


def _check_scene(scene: Scene, bundle: BundleInfo, source: str) -> None:
    expected = bundle.meta.input_dtype
    if scene.dtype != expected:
        raise SceneError(
            f"{source}: pixels are {scene.dtype} but the model's normalization is for "
            f"{expected}; give a {expected} scene or a bundle trained on {scene.dtype} data"
        )


@dataclass(frozen=True)
class PredictionPlan:
    """A checked prediction, ready to run: every input validated, nothing computed yet.

    Attributes:
        scene: the input scene.
        bundle: the bundle (checked from its header, or loaded).
        grid: the block grid.
        job: what every block task shares (its ``model`` ref still has ``threads`` unset).
        outputs: role → path to write.
        overwrite: replace existing outputs.
    """

    scene: Scene
    bundle: BundleInfo
    grid: SceneGrid
    job: BlockJob
    outputs: dict[str, Path]
    overwrite: bool

    def with_quicklook(self, bands: Sequence[BandRef], size: int) -> PredictionPlan:
        """This plan, its block tasks also returning their share of the scene's quick-look:
        ``bands`` (red, green, blue: three of ``job.bands``) in a picture at most ``size`` px
        a side (:func:`~geoseg.thumb.quicklook_shape`). :func:`run_prediction` then sums the
        parts into :attr:`PredictResult.quicklook`.

        Raises:
            ValueError: a band that the job does not read.
        """
        missing = [b.name for b in bands if b not in self.job.bands]
        if len(bands) != 3 or missing:
            raise ValueError(f"quick-look bands {[b.name for b in bands]}: need three of the "
                             f"bands the job reads ({[b.name for b in self.job.bands]})")
        r, g, b = (self.job.bands.index(band) for band in bands)
        spec = QuicklookSpec(quicklook_shape(self.scene.height, self.scene.width, size),
                             (r, g, b))
        return replace(self, job=replace(self.job, quicklook=spec))


def plan_prediction(
    scene_path: str | os.PathLike[str],
    bundle_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    cfg: PredictConfig,
    overwrite: bool = False,
    threads: int | None = None,
) -> PredictionPlan:
    """Validate a prediction's inputs and settings and plan its blocks, without running it.

    Raises:
        SceneError, BundleError, ConfigError, OutputExistsError: bad input; nothing is written.
    """
    scene = open_scene(scene_path)
    bundle = load_bundle(bundle_path)
    return plan_scene_prediction(scene, bundle, mask_path, cfg, overwrite, threads,
                                 source=str(scene_path))


def check_scene(
    scene: Scene, bundle: BundleInfo, cfg: PredictConfig, source: str = ""
) -> tuple[tuple[BandRef, ...], SceneGrid]:
    """Every check a scene passes before its blocks are planned: its bands match the model's,
    its dtype is the one the bundle's normalization is for, the precision suits the device.
    ``geoseg inspect`` and ``geoseg run`` both call it, so they agree on which scenes can run.

    Args:
        source: how messages name the scene (its path); default ``scene.name``.

    Returns:
        the model's bands in the scene (model order) and the scene's block grid.

    Raises:
        SceneError, ConfigError: the scene cannot run with this bundle and settings.
    """
    source = source or scene.name
    bands = select_bands(scene, bundle.meta.band_names, source)
    band_conversions(bands, bundle.meta.bands, str(bundle.path))  # as the block job will
    _check_scene(scene, bundle, source)
    check_precision(cfg)
    return bands, plan_scene(scene, bundle, cfg, bundle.align)


def plan_scene_prediction(
    scene: Scene,
    bundle: BundleInfo,
    mask_path: str | os.PathLike[str],
    cfg: PredictConfig,
    overwrite: bool = False,
    threads: int | None = None,
    source: str = "",
) -> PredictionPlan:
    """:func:`plan_prediction` for an opened scene (one raster or band files) and bundle.

    Raises:
        SceneError, ConfigError, OutputExistsError: bad input; nothing is written.
    """
    mask_path = Path(mask_path)
    meta = bundle.meta
    bands, grid = check_scene(scene, bundle, cfg, source)
    paths = output_paths(mask_path, cfg)
    inputs = {Path(f).resolve() for f in scene.files}
    for path in paths.values():
        if path.resolve() in inputs:
            raise ConfigError(f"{path}: the output would overwrite an input of the scene")
        check_writable(path, overwrite)
    ref = model_ref(bundle, cfg, threads)
    job = BlockJob(
        bands=bands,
        height=scene.height,
        width=scene.width,
        stats=meta.bands,
        model=ref,
        outputs=OutputSpec(len(meta.classes), cfg.confidence, cfg.probabilities),
        batch_size=batch_size(cfg, grid.lattice),
        blend=cfg.stitch == "blend",
        halo=grid.lattice.halo,
        crs_wkt=scene.crs_wkt,
        transform=scene.transform,
    )
    return PredictionPlan(scene, bundle, grid, job, paths, overwrite)


def model_ref(bundle: BundleInfo, cfg: PredictConfig, threads: int | None = None) -> ModelRef:
    """How block tasks find ``bundle``'s model and run it under ``cfg`` (``threads``: torch
    threads per worker)."""
    return ModelRef(
        path=str(bundle.path),
        sha256=bundle.sha256,
        device=cfg.device,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        threads=threads,
    )


def load_model(
    bundle: BundleInfo, ref: ModelRef, client: Any = None, policy: TaskPolicy | None = None
) -> None:
    """Load ``bundle``'s model (as ``ref``) where block tasks run, and check it in full there
    (:func:`~geoseg.models.bundle.load_bundle`): this process without a client, else the
    workers (:func:`geoseg.workers.load_on_workers`, one small task). Once per process or
    client; a batch run calls it before its first scene, so a bad bundle stops the run.

    Raises:
        BundleError: non-finite weights, weights that do not fit the architecture, a built
            model whose size divisor is not ``bundle.align``.
    """
    if client is not None:
        from geoseg.workers import load_on_workers

        load_on_workers(client, bundle, ref, policy)
        return
    if has_model(ref):
        return
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle.path)
    check_unchanged(bundle.path, bundle.sha256, loaded.sha256)
    check_align(bundle, loaded.align)
    cache_model(ref, loaded.build())


def run_prediction(
    plan: PredictionPlan,
    client: Any = None,
    progress: ProgressCallback | None = None,
    policy: TaskPolicy | None = None,
) -> PredictResult:
    """Run a planned prediction and write its COGs (atomically; nothing partial on failure).

    Args:
        plan: from :func:`plan_prediction`.
        client: a ``distributed.Client``, or None to compute in this process.
        progress: called after every block with ``(done, total)``.
        policy: resources, retries and stall timeout of the block tasks on ``client``
            (:func:`geoseg.cluster.task_policy`).
    """
    start = time.perf_counter()
    scene, bundle, grid, job = plan.scene, plan.bundle, plan.grid, plan.job
    meta = bundle.meta
    load_model(bundle, job.model, client, policy)
    array = lazy_prediction(grid, job, policy.resources if policy and client else None)
    log.info(
        "%s: %dx%d px, %d blocks of %d px, tile %d, halo %d, %s stitching",
        scene.name, scene.width, scene.height, len(grid), grid.block_size,
        grid.lattice.tile_size, grid.lattice.halo, "blend" if job.blend else "trim",
    )
    counts = np.zeros(256, dtype=np.int64)
    canvas = QuicklookCanvas.empty(job.quicklook.shape) if job.quicklook else None
    tags = {
        "GEOSEG_MODEL_SHA256": bundle.sha256,
        "GEOSEG_SCENE": file_name(str(scene.files[0])) if len(scene.files) == 1 else scene.name,
        CLASSES_TAG: classes_tag(meta.classes),
    }
    with ExitStack() as stack:
        writers = _open_writers(stack, plan.outputs, scene, bundle, job.outputs, plan.overwrite,
                                tags)
        for done, ((i, j), result) in enumerate(iter_blocks(array, client, policy), start=1):
            block = result.classes
            window = grid.block(i, j).core
            band = 0
            for writer in writers.values():
                n = writer.spec.count
                writer.write(window, block[band : band + n])
                band += n
            counts += np.bincount(block[0].ravel(), minlength=256)
            if canvas is not None and result.quicklook is not None:
                canvas.add(result.quicklook)
            if progress is not None:
                progress(done, len(grid))
        for writer in writers.values():
            writer.commit()
    return PredictResult(
        outputs=plan.outputs,
        grid=grid,
        class_pixels={c.id: int(counts[c.id]) for c in meta.classes},
        nodata_pixels=int(counts[NODATA]),
        seconds=time.perf_counter() - start,
        tiles=sum(len(b.tiles) for b in grid.blocks()),
        quicklook=canvas,
    )


def predict_scene(
    scene_path: str | os.PathLike[str],
    bundle_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    cfg: PredictConfig,
    client: Any = None,
    overwrite: bool = False,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    policy: TaskPolicy | None = None,
) -> PredictResult:
    """Predict a scene's class mask (and optional confidence and probabilities) as COGs.

    :func:`plan_prediction` then :func:`run_prediction`; see them for the arguments.

    Raises:
        SceneError, BundleError, ConfigError, OutputExistsError: bad input; nothing is written.
    """
    plan = plan_prediction(scene_path, bundle_path, mask_path, cfg, overwrite, threads)
    return run_prediction(plan, client, progress, policy)


def _open_writers(
    stack: ExitStack,
    paths: dict[str, Path],
    scene: Scene,
    bundle: BundleInfo,
    outputs: OutputSpec,
    overwrite: bool,
    tags: dict[str, str],
) -> dict[str, StreamingCOGWriter]:
    meta = bundle.meta
    grid: dict[str, Any] = dict(crs_wkt=scene.crs_wkt, transform=scene.transform,
                                height=scene.height, width=scene.width, nodata=NODATA, tags=tags)
    specs = {
        "mask": RasterSpec(**grid, classes=meta.classes, descriptions=("class",),
                           resampling="mode"),
        "confidence": RasterSpec(**grid, descriptions=("confidence_percent",),
                                 resampling="average"),
        "probabilities": RasterSpec(**grid, count=outputs.n_classes,
                                    descriptions=tuple(f"p_{c.name}" for c in meta.classes),
                                    resampling="average"),
    }
    return {
        role: stack.enter_context(StreamingCOGWriter(path, specs[role], overwrite))
        for role, path in paths.items() if role in specs  # the rest are the mask's sidecars
    }
