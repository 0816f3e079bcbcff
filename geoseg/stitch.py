"""The lazy prediction: one Dask task per block, each reading its own pixels.

``lazy_prediction`` returns a ``(bands, H, W)`` uint8 dask array on the scene's grid whose
chunks are the block cores. Nothing runs until a writer pulls the blocks (``iter_blocks``).
Every task reads its block plus halo from the files itself, so no pixel passes through the
client and no process ever holds more than one block per running task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from geoseg.predict import BlockJob, predict_block
from geoseg.tiling import SceneGrid

__all__ = ["iter_blocks", "lazy_prediction"]


def _block_task(grid: SceneGrid, job: BlockJob, block_id: tuple[int, int, int]) -> np.ndarray:
    return predict_block(grid.block(block_id[1], block_id[2]), job)


def lazy_prediction(
    grid: SceneGrid, job: BlockJob, resources: dict[str, float] | None = None
) -> Any:
    """The scene's predictions as a lazy dask array.

    Args:
        grid: the block grid (block cores become the array's chunks).
        job: what every block task shares.
        resources: Dask worker resources each task needs (e.g. ``{"GPU": 1}``), or None.

    Returns:
        ``dask.array.Array`` of shape ``(job.outputs.count, H, W)``, dtype uint8.
    """
    import dask
    import dask.array as da
    from dask.base import tokenize

    annotations = {"resources": resources} if resources else {}
    with dask.annotate(**annotations):
        return da.map_blocks(
            _block_task,
            grid=grid,
            job=job,
            chunks=((job.outputs.count,), *grid.chunks),
            dtype=np.uint8,
            meta=np.empty((0, 0, 0), dtype=np.uint8),
            name="geoseg-predict-" + tokenize(grid, job),
        )


def iter_blocks(array: Any, client: Any = None) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Compute the array's blocks, yielding ``((i, j), block)`` as each finishes.

    With a ``distributed.Client`` all blocks are submitted at once (Dask queues them so memory
    stays bounded) and fetched one by one as they complete; without one, each block is
    computed in turn in this process.
    """
    chunks = array.to_delayed()
    items = [((i, j), chunks[0, i, j]) for i in range(chunks.shape[1]) for j in range(chunks.shape[2])]
    if client is None:
        for index, task in items:
            yield index, task.compute(scheduler="synchronous")
        return
    from distributed import as_completed

    futures = client.compute([task for _, task in items])
    where = {future.key: index for future, (index, _) in zip(futures, items, strict=True)}
    try:
        for future in as_completed(futures):
            yield where[future.key], future.result()
            future.release()
    finally:
        client.cancel(futures)
