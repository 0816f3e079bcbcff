"""What a batch run would do with each scene, before anything runs (``geoseg inspect``).

:func:`inspect_batch` opens every scene of a :class:`~geoseg.batch.BatchPlan` (metadata only),
runs the checks ``geoseg run`` runs (:func:`geoseg.pipeline.check_scene`, so both agree on which
scenes can run) and plans its blocks; nothing is read beyond the headers and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.batch import BatchPlan
    from geoseg.batch.discover import SceneSource

__all__ = ["SceneInspection", "inspect_batch", "memory_bound"]


@dataclass(frozen=True)
class SceneInspection:
    """How a batch run would process one scene; ``error`` set (and the rest None) when it
    would fail.

    Attributes:
        scene: the scene's name (its output folder). kind: ``raster`` or ``bands``.
        path: the raster, or the band files' directory.
        size: ``(height, width)``, px. dtype: the pixels' numpy dtype name.
        bands: model band → file it is read from (``name.tif#2`` for a band of a raster;
            `` (resampled)`` when it is not on the scene grid).
        blocks, tiles: Dask blocks and model tiles of the scene.
        block_size, tile_size, halo: px, as planned (rounded to the model's stride).
        peak_memory_mib: estimated peak memory of one prediction worker, MiB (±30 %).
        client_memory_mib: most memory the scene holds in the client while in flight, MiB
            (:func:`~geoseg.batch.estimate.scene_client_bytes`).
        error: why the run would fail on this scene.
    """

    scene: str
    kind: str
    path: str
    size: tuple[int, int] | None = None
    dtype: str | None = None
    bands: dict[str, str] | None = None
    blocks: int | None = None
    tiles: int | None = None
    block_size: int | None = None
    tile_size: int | None = None
    halo: int | None = None
    peak_memory_mib: int | None = None
    client_memory_mib: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields that are set, ``size`` as a list."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.size is not None:
            out["size"] = list(self.size)
        return {k: v for k, v in out.items() if v is not None}


def inspect_batch(plan: BatchPlan) -> list[SceneInspection]:
    """One :class:`SceneInspection` per scene of this job (``plan.todo``), in order.

    Peak memory assumes a worker holds ``cluster.gpu_tasks`` blocks at once when the device is
    a GPU (one reads while another computes), one block on CPU. The model is measured for it,
    and its bundle checked in full, once (:func:`~geoseg.batch.estimate.measure_model`: in a
    child process, so that this one never imports torch).

    Raises:
        BundleError: the bundle fails the full check (as ``geoseg run`` would, before any
            scene).
    """
    from geoseg.batch.estimate import measure_model
    from geoseg.cluster import cuda_device_count

    device = plan.cfg.predict.device
    gpu = device != "cpu" and (device != "auto" or cuda_device_count() > 0)
    tasks = plan.cfg.cluster.gpu_tasks if gpu else 1
    if plan.todo:
        measure_model(plan.bundle)
    return [_inspect(source, plan, tasks) for source in plan.todo]


def _inspect(source: SceneSource, plan: BatchPlan, tasks: int) -> SceneInspection:
    import numpy as np

    from geoseg.batch.estimate import scene_client_bytes, worker_peak_bytes
    from geoseg.batch.sources import open_source
    from geoseg.pipeline import batch_size, check_scene

    bundle, cfg = plan.bundle, plan.cfg
    name, kind, path = source.name, source.kind, str(source.path)
    try:
        scene = open_source(source, bundle.meta.band_names, cfg.run.band_fill)
        bands, grid = check_scene(scene, bundle, cfg.predict, str(source.path))
        p = cfg.predict
        outputs = 1 + int(p.confidence) + len(bundle.meta.classes) * int(p.probabilities)
        peak = worker_peak_bytes(bundle, grid, batch_size(p, grid.lattice), len(bands),
                                 np.dtype(scene.dtype).itemsize, p.stitch == "blend",
                                 outputs, tasks)
        client = scene_client_bytes(grid.block_size, outputs, cfg.run.quicklook_size)
    except Exception as exc:  # noqa: BLE001 - report it, as the run would
        return SceneInspection(name, kind, path, error=str(exc))
    index = kind == "raster"
    return SceneInspection(
        name, kind, path,
        size=(scene.height, scene.width),
        dtype=scene.dtype,
        bands={b.name: Path(b.path).name + (f"#{b.index}" if index else "")
               + (" (resampled)" if b.warp else "") for b in bands},
        blocks=len(grid),
        tiles=sum(len(b.tiles) for b in grid.blocks()),
        block_size=grid.block_size,
        tile_size=grid.lattice.tile_size,
        halo=grid.lattice.halo,
        peak_memory_mib=round(peak / 2**20),
        client_memory_mib=round(client / 2**20),
    )


def memory_bound(plan: BatchPlan, rows: list[SceneInspection]) -> dict[str, int]:
    """The run's memory bound, MiB: ``scenes_in_flight``, the largest ``per_scene_client_mib``
    of ``rows`` and ``client_mib`` = the client's base + scenes in flight × that
    (:func:`~geoseg.batch.estimate.client_peak_bytes`), and ``worker_mib``, the largest
    prediction worker peak (scenes in flight add none there: block tasks queue on the
    scheduler and each worker runs as many at once as with one scene)."""
    from geoseg.batch.estimate import client_peak_bytes

    n = plan.cfg.run.scenes_in_flight
    per_scene = max((r.client_memory_mib or 0 for r in rows), default=0)
    return {
        "scenes_in_flight": n,
        "per_scene_client_mib": per_scene,
        "client_mib": round(client_peak_bytes(n, per_scene * 2**20) / 2**20),
        "worker_mib": max((r.peak_memory_mib or 0 for r in rows), default=0),
    }
