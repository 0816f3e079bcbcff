"""``vectorize_mask``: the client loop that streams finished polygons into the GeoPackage."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import ConfigError
from geoseg.gpkg import GpkgWriter
from geoseg.tasks import TaskPolicy
from geoseg.vectorize import join as join_module
from geoseg.vectorize.blocks import BlockTask, block_windows, polygonize_task, run_blocks
from geoseg.vectorize.join import BorderJoin, FarRegion, RemoteDissolve, dissolve_kept, split_border
from geoseg.vectorize.maskinfo import MaskInfo, read_mask_info
from geoseg.vectorize.seams import sieve_plan

__all__ = ["ProgressCallback", "VectorizeResult", "vectorize_mask"]

log = logging.getLogger(__name__)

#: Called after every finished block with ``(blocks done, blocks total)``.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class VectorizeResult:
    """What :func:`vectorize_mask` wrote.

    Attributes:
        path: the GeoPackage. layer: its layer name. n_features: polygons written.
        class_features: class id → polygons. class_area_m2: class id → area, m².
        seconds: wall-clock time. blocks: number of blocks.
    """

    path: Path
    layer: str
    n_features: int
    class_features: dict[int, int]
    class_area_m2: dict[int, float]
    seconds: float
    blocks: int = 0


def _release_free_memory(client: Any) -> None:
    """Have the allocator of every process that will vectorize (the workers, or this process)
    hand back what it keeps from the prediction, so polygons do not stack on its peak."""
    from geoseg.allocator import release_free_memory

    released = client.run(release_free_memory) if client is not None else {
        "this process": release_free_memory()}
    log.debug("free memory released before vectorizing: %s", released)


def _remote_dissolve(client: Any, policy: TaskPolicy | None, block_size: int, info: MaskInfo,
                     connectivity: int) -> RemoteDissolve:
    """Dissolve large regions as Dask tasks (with the block tasks' retries and stall timeout):
    their pieces kept on workers go straight to the workers that dissolve them, and the
    dissolves' transient arrays stay out of the client."""
    task = functools.partial(_dissolve_task, block_size=block_size, info=info,
                             connectivity=connectivity)

    def remote(regions: list[FarRegion]) -> Iterator[tuple[int, bytes, bool]]:
        # scattered, not embedded in the task graph: no graph serialization copies of the pieces
        local = client.scatter([np.asarray(p, dtype=object) for p, _ in regions], hash=False)
        work = [(i, pieces, [handle for handle, _ in refs], [ids for _, ids in refs])
                for i, (pieces, (_, refs)) in enumerate(zip(local, regions, strict=True))]
        return run_blocks(task, work, client, policy, "region dissolve")

    return remote


def _dissolve_task(work: tuple[int, Any, list[dict[int, bytes]], list[list[int]]],
                   block_size: int, info: MaskInfo, connectivity: int
                   ) -> tuple[int, bytes, bool]:
    i, local, kept, ids = work
    return i, *dissolve_kept(list(local), kept, ids, block_size, info, connectivity)


def _features(cls: np.ndarray, geoms: np.ndarray, stats: np.ndarray,
              names: dict[int, str], with_conf: bool) -> dict[str, Any]:
    cols: dict[str, Any] = dict(
        geometry=geoms, class_id=cls.astype(np.int32),
        class_name=np.array([names.get(int(c), f"class_{int(c)}") for c in cls], dtype=object),
        area_m2=stats[:, 1])
    if with_conf:
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["mean_confidence"] = stats[:, 2] / stats[:, 3]
    return cols


def vectorize_mask(
    mask_path: str | os.PathLike[str],
    out_gpkg: str | os.PathLike[str],
    *,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    connectivity: int = 4,
    layer: str = "landcover",
    block_size: int = 2048,
    client: Any = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    policy: TaskPolicy | None = None,
) -> VectorizeResult:
    """Polygonize a geoseg mask COG into a GeoPackage layer, one polygon per region.

    Args:
        mask_path: single-band uint8 mask (class ids, nodata 255, ``GEOSEG_CLASSES`` tag).
        out_gpkg: GeoPackage to write (atomically; QGIS style included).
        min_area_m2: sieve regions smaller than this (m²; CRS units² when projected), merging
            them into their largest neighbour; 0 disables. Exact, see the module docstring.
        simplify_m: coverage-preserving simplification tolerance, metres (CRS units when
            projected; ≈ m / 111 320 degrees when geographic); 0 disables.
        connectivity: 4 or 8, for regions, sieve and polygons alike.
        layer: layer name. block_size: block side, pixels.
        client: a ``distributed.Client`` to run blocks on, or None for this process.
        overwrite: replace ``out_gpkg``. progress: called with ``(done, total)`` block steps.
        policy: retries, stall timeout, priority and ``cpu_resources`` of the block tasks
            on a cluster (its prediction ``resources`` unused).

    Fields: ``class_id`` int32, ``class_name`` str, ``area_m2`` float64 (geodesic for a
    geographic CRS), ``mean_confidence`` float64 percent (only with a ``.confidence.tif``).

    Raises:
        ConfigError: bad option. SceneError: unusable mask. OutputExistsError: no overwrite.
    """
    import shapely

    start = time.perf_counter()
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    if block_size < 16 or min_area_m2 < 0 or simplify_m < 0:
        raise ConfigError(f"block size must be ≥ 16 px (got {block_size}); min area and "
                          f"simplify ≥ 0 (got {min_area_m2}, {simplify_m})")
    info = read_mask_info(mask_path)
    _release_free_memory(client)
    wins, ncols = block_windows(info.height, info.width, block_size)
    tasks = [BlockTask(i, w, info, connectivity) for i, w in enumerate(wins)]
    steps = [0, len(tasks) * (2 if min_area_m2 > 0 else 1)]

    def tick() -> None:
        steps[0] += 1
        if progress is not None:
            progress(steps[0], steps[1])

    names = {c.id: c.name for c in info.classes}
    with_conf = info.confidence is not None
    fields = [("class_id", "int32"), ("class_name", "object"), ("area_m2", "float64")]
    fields += [("mean_confidence", "float64")] if with_conf else []
    counts: dict[int, int] = {}
    areas: dict[int, float] = {}
    held: list[dict[str, Any]] = []

    with GpkgWriter(out_gpkg, layer, info.crs_wkt, info.classes, fields, overwrite) as writer:
        def emit(cols: dict[str, Any]) -> None:
            for c, a in zip(cols["class_id"], cols["area_m2"], strict=True):
                counts[int(c)] = counts.get(int(c), 0) + 1
                areas[int(c)] = areas.get(int(c), 0.0) + float(a)
            if simplify_m > 0:
                g = cols["geometry"]
                if len(g) and isinstance(g[0], bytes):
                    cols["geometry"] = shapely.from_wkb(g)
                held.append(cols)
            else:
                writer.write(**cols)

        if min_area_m2 > 0:
            pixel = info.pixel_area_m2
            if info.row_area_m2 is not None:
                pixel = float(np.mean(info.row_area_m2))
                log.warning("geographic CRS: sieve threshold uses the mean pixel area %.1f m²",
                            pixel)
            tasks = sieve_plan(tasks, ncols, min_area_m2 / pixel, connectivity, client, tick,
                               policy)
        results: Iterator[tuple[dict[str, Any], Any]]
        if client is None:
            join = BorderJoin(len(tasks) // ncols, ncols, connectivity, info, block_size)
            results = ((r, None) for r in run_blocks(polygonize_task, tasks, None))
        else:  # large border pieces stay on the workers until their region is dissolved there
            join = BorderJoin(len(tasks) // ncols, ncols, connectivity, info, block_size,
                              _remote_dissolve(client, policy, block_size, info, connectivity),
                              fetch=lambda handle: handle.result())
            keep = functools.partial(split_border, max_bytes=join_module.KEEP_PIECE_BYTES)
            results = run_blocks(polygonize_task, tasks, client, policy, split=keep)
        for r, kept in results:
            join.add(r["index"], r["n"], r["cls"], r["edges"], r["border"], kept)
            done_cls, done_geoms, done_stats = r["done"]
            emit(_features(done_cls, done_geoms, done_stats, names, with_conf))
            emit(_features(*join.ready(), names, with_conf))
            tick()
        emit(_features(*join.ready(final=True), names, with_conf))
        if held:
            cols = {k: np.concatenate([h[k] for h in held]) for k in held[0]}
            tol = simplify_m if info.row_area_m2 is None else simplify_m / 111_320.0
            # a valid coverage already (every T-junction is a vertex): no coverage_clean
            cols["geometry"] = shapely.coverage_simplify(cols["geometry"], tol)
            writer.write(**cols)
        writer.commit()
    n = sum(counts.values())
    log.info("%s: %d polygons in %d blocks", out_gpkg, n, len(tasks))
    return VectorizeResult(Path(out_gpkg), layer, n, counts, areas,
                           time.perf_counter() - start, len(tasks))
