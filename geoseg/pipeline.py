"""One scene from file to finished rasters: check inputs, build the lazy prediction, write COGs."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.config import PredictConfig
from geoseg.errors import ConfigError, SceneError
from geoseg.models.bundle import Bundle, load_bundle
from geoseg.models.registry import NON_LOCAL_ARCHITECTURES, model_align
from geoseg.predict import NODATA, BlockJob, ModelRef, OutputSpec, cache_model
from geoseg.scene import Scene, open_scene, select_bands
from geoseg.stitch import iter_blocks, lazy_prediction
from geoseg.tiling import SceneGrid, TileLattice
from geoseg.writers import RasterSpec, StreamingCOGWriter, check_writable

__all__ = ["CLASSES_TAG", "PredictResult", "output_paths", "plan_scene", "predict_scene"]

#: GeoTIFF metadata tag holding the classes (JSON list of ``{id, name, color}``) in every mask.
CLASSES_TAG = "GEOSEG_CLASSES"

log = logging.getLogger(__name__)

#: Called after every finished block with ``(blocks done, blocks total)``.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict_scene` wrote and measured.

    Attributes:
        outputs: role (``mask``, ``confidence``, ``probabilities``) → path written.
        grid: the block grid used.
        class_pixels: class id → number of pixels in the mask (nodata excluded).
        nodata_pixels: number of nodata pixels in the mask.
        seconds: wall-clock time of the whole scene.
    """

    outputs: dict[str, Path]
    grid: SceneGrid
    class_pixels: dict[int, int]
    nodata_pixels: int
    seconds: float
    tiles: int = field(default=0)


def output_paths(mask: Path, cfg: PredictConfig) -> dict[str, Path]:
    """The files a prediction writes: the mask, plus ``*.confidence.tif`` / ``*.probabilities.tif``."""
    stem = mask.name[: -len(mask.suffix)] if mask.suffix else mask.name
    paths = {"mask": mask}
    if cfg.confidence:
        paths["confidence"] = mask.with_name(f"{stem}.confidence.tif")
    if cfg.probabilities:
        paths["probabilities"] = mask.with_name(f"{stem}.probabilities.tif")
    return paths


def plan_scene(scene: Scene, bundle: Bundle, cfg: PredictConfig, align: int) -> SceneGrid:
    """The block grid for ``scene``: tile size and halo from ``cfg`` or the bundle, fitted."""
    meta = bundle.meta
    tile_size = cfg.tile_size or meta.tile_size
    halo = meta.halo if cfg.halo is None else cfg.halo
    lattice = TileLattice.fit(tile_size, halo, align)
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
    return SceneGrid.fit(scene.height, scene.width, lattice, cfg.block_size, cfg.stitch == "blend")


def _check_scene(scene: Scene, bundle: Bundle, source: str) -> None:
    expected = bundle.meta.input_dtype
    if scene.dtype != expected:
        raise SceneError(
            f"{source}: pixels are {scene.dtype} but the model's normalization is for "
            f"{expected}; give a {expected} scene or a bundle trained on {scene.dtype} data"
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
) -> PredictResult:
    """Predict a scene's class mask (and optional confidence and probabilities) as COGs.

    Args:
        scene_path: a multi-band raster.
        bundle_path: a geoseg model bundle.
        mask_path: the mask COG to write; siblings for the optional outputs.
        cfg: tiling, stitching and inference settings.
        client: a ``distributed.Client``, or None to compute in this process.
        overwrite: replace existing outputs.
        threads: torch threads per worker process (None: torch's default).
        progress: called after every block.

    Raises:
        SceneError, BundleError, ConfigError, OutputExistsError: bad input; nothing is written.
    """
    start = time.perf_counter()
    scene_path, mask_path = Path(scene_path), Path(mask_path)
    scene = open_scene(scene_path)
    bundle = load_bundle(bundle_path)
    meta = bundle.meta
    bands = select_bands(scene, meta.band_names, str(scene_path))
    _check_scene(scene, bundle, str(scene_path))
    if cfg.precision != "fp32" and cfg.device == "cpu":
        raise ConfigError(f"precision {cfg.precision} needs a CUDA device; use fp32 on CPU")
    paths = output_paths(mask_path, cfg)
    for path in paths.values():
        check_writable(path, overwrite)

    model = bundle.build()
    grid = plan_scene(scene, bundle, cfg, model_align(model))
    ref = ModelRef(
        path=str(bundle.path),
        sha256=bundle.sha256,
        device=cfg.device,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        threads=threads,
    )
    if client is None:
        cache_model(ref, model)
    else:
        from geoseg.workers import register_model

        register_model(client, ref)
    del model
    outputs = OutputSpec(len(meta.classes), cfg.confidence, cfg.probabilities)
    job = BlockJob(
        bands=bands,
        height=scene.height,
        width=scene.width,
        stats=meta.bands,
        model=ref,
        outputs=outputs,
        batch_size=cfg.batch_size,
        blend=cfg.stitch == "blend",
        halo=grid.lattice.halo,
    )
    array = lazy_prediction(grid, job)
    log.info(
        "%s: %dx%d px, %d blocks of %d px, tile %d, halo %d, %s stitching",
        scene.name, scene.width, scene.height, len(grid), grid.block_size,
        grid.lattice.tile_size, grid.lattice.halo, cfg.stitch,
    )
    counts = np.zeros(256, dtype=np.int64)
    tags = {
        "GEOSEG_MODEL_SHA256": bundle.sha256,
        "GEOSEG_SCENE": scene_path.name,
        CLASSES_TAG: json.dumps([c.model_dump() for c in meta.classes]),
    }
    with ExitStack() as stack:
        writers = _open_writers(stack, paths, scene, bundle, outputs, overwrite, tags)
        done = 0
        for (i, j), block in iter_blocks(array, client):
            window = grid.block(i, j).core
            band = 0
            for role, writer in writers.items():
                n = writer.spec.count
                writer.write(window, block[band : band + n])
                band += n
            counts += np.bincount(block[0].ravel(), minlength=256)
            done += 1
            if progress is not None:
                progress(done, len(grid))
        for writer in writers.values():
            writer.commit()
    n_tiles = sum(len(b.tiles) for b in grid.blocks())
    return PredictResult(
        outputs=paths,
        grid=grid,
        class_pixels={c.id: int(counts[c.id]) for c in meta.classes},
        nodata_pixels=int(counts[NODATA]),
        seconds=time.perf_counter() - start,
        tiles=n_tiles,
    )


def _open_writers(
    stack: ExitStack,
    paths: dict[str, Path],
    scene: Scene,
    bundle: Bundle,
    outputs: OutputSpec,
    overwrite: bool,
    tags: dict[str, str],
) -> dict[str, StreamingCOGWriter]:
    meta = bundle.meta
    grid = dict(crs_wkt=scene.crs_wkt, transform=scene.transform, height=scene.height,
                width=scene.width, nodata=NODATA, tags=tags)
    specs = {
        "mask": RasterSpec(**grid, colormap=meta.colormap, descriptions=("class",),
                           resampling="mode"),
        "confidence": RasterSpec(**grid, descriptions=("confidence_percent",),
                                 resampling="average"),
        "probabilities": RasterSpec(**grid, count=outputs.n_classes,
                                    descriptions=tuple(f"p_{c.name}" for c in meta.classes),
                                    resampling="average"),
    }
    return {
        role: stack.enter_context(StreamingCOGWriter(path, specs[role], overwrite))
        for role, path in paths.items()
    }
