"""The lazy prediction graph: one Dask task per block, each reading its own pixels.

``lazy_prediction`` returns a dask array laid out on the scene's grid whose chunks are the block
cores; each chunk computes to a :class:`~geoseg.predict.BlockResult` (the block's uint8
outputs, and its share of the scene's quick-look when the job asks for one), so the array is
pulled block by block with ``iter_blocks``, never computed whole. Nothing runs until a writer
pulls the blocks.

Every task reads its block plus halo from the files itself, so no pixel passes through the
client and no process ever holds more than one block per running task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from geoseg.errors import GeoSegError, detached
from geoseg.predict import BlockJob, BlockResult, predict_block
from geoseg.tasks import TaskPolicy, map_as_finished
from geoseg.tiling import SceneGrid

__all__ = ["iter_blocks", "lazy_prediction"]


def _block_task(grid: SceneGrid, job: BlockJob, block_id: tuple[int, int, int]) -> BlockResult:
    try:
        return predict_block(grid.block(block_id[1], block_id[2]), job)
    except GeoSegError as exc:  # e.g. a truncated file: reaches the client as itself
        raise detached(exc) from None


def lazy_prediction(
    grid: SceneGrid, job: BlockJob, resources: dict[str, float] | None = None
) -> Any:
    """The scene's predictions as a lazy dask array.

    Args:
        grid: the block grid (block cores become the array's chunks).
        job: what every block task shares.
        resources: Dask worker resources each task needs (e.g. ``{"GPU": 1}``), or None.

    Returns:
        ``dask.array.Array`` of shape ``(job.outputs.count, H, W)`` whose chunks compute to
        :class:`~geoseg.predict.BlockResult` objects (dtype object): pull them with
        :func:`iter_blocks`; ``compute()`` of the whole array cannot concatenate them.
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
            dtype=object,
            meta=np.empty((0, 0, 0), dtype=object),
            name="geoseg-predict-" + tokenize(grid, job),
        )


def iter_blocks(
    array: Any, client: Any = None, policy: TaskPolicy | None = None
) -> Iterator[tuple[tuple[int, int], Any]]:
    """Compute the array's blocks, yielding ``((i, j), block)`` as each finishes (``block``:
    what the chunk's task returns, a :class:`~geoseg.predict.BlockResult` for
    :func:`lazy_prediction`).

    With a ``distributed.Client`` all blocks are submitted at once (Dask queues them so memory
    stays bounded) and fetched one by one as they complete; without one, each block is
    computed in turn in this process.

    The graph is not optimized: every block is already one task, and low-level fusion would
    drop the ``resources`` annotations of :func:`lazy_prediction`.

    Raises:
        ClusterError: a block task killed ``allowed-failures`` workers, or no block finished
            within ``policy.stall_timeout`` seconds.
    """
    chunks = array.to_delayed(optimize_graph=False)
    rows, cols = chunks.shape[1:]
    index = [(i, j) for i in range(rows) for j in range(cols)]
    tasks = [chunks[0, i, j] for i, j in index]
    for k, block in map_as_finished(None, tasks, client, policy, what="block",
                                    label=lambda k: str(index[k])):
        yield index[k], block
