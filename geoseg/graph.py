"""The lazy prediction: one Dask task per block, each reading its own pixels.

``lazy_prediction`` returns a ``(bands, H, W)`` uint8 dask array on the scene's grid whose
chunks are the block cores. Nothing runs until a writer pulls the blocks (``iter_blocks``).
Every task reads its block plus halo from the files itself, so no pixel passes through the
client and no process ever holds more than one block per running task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.errors import ClusterError, GeoSegError, detached
from geoseg.predict import BlockJob, predict_block
from geoseg.tiling import SceneGrid

__all__ = ["TaskPolicy", "as_finished", "iter_blocks", "lazy_prediction"]


@dataclass(frozen=True)
class TaskPolicy:
    """How block tasks run on a cluster.

    Attributes:
        resources: Dask resources each block task needs (e.g. ``{"GPU": 1}``); empty: none.
        retries: times a task that raised is run again before the scene fails.
        stall_timeout: seconds without any finished block before the scene fails; None: never.
    """

    resources: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    stall_timeout: float | None = None


def _block_task(grid: SceneGrid, job: BlockJob, block_id: tuple[int, int, int]) -> np.ndarray:
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


def iter_blocks(
    array: Any, client: Any = None, policy: TaskPolicy | None = None
) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Compute the array's blocks, yielding ``((i, j), block)`` as each finishes.

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
    items = [((i, j), chunks[0, i, j]) for i in range(rows) for j in range(cols)]
    if client is None:
        for index, task in items:
            yield index, task.compute(scheduler="synchronous")
        return
    policy = policy or TaskPolicy()
    futures = client.compute([task for _, task in items], retries=policy.retries)
    where = {future.key: index for future, (index, _) in zip(futures, items, strict=True)}
    label = lambda future: str(where[future.key])  # noqa: E731
    for future, block in as_finished(client, futures, policy, "block", label):
        yield where[future.key], block


def as_finished(client: Any, futures: list[Any], policy: TaskPolicy, what: str = "task",
                label: Callable[[Any], str] | None = None) -> Iterator[tuple[Any, Any]]:
    """``(future, result)`` of Dask futures as they finish, each released once yielded; all
    cancelled when the caller stops early or fails. ``what``/``label(future)`` name a task in
    errors.

    Raises:
        ClusterError: a task killed ``allowed-failures`` workers, or none finished within
            ``policy.stall_timeout`` seconds (no worker offering the resources, paused
            workers, a hung task…) instead of waiting for ever.
    """
    from distributed import wait
    from distributed.scheduler import KilledWorker

    pending = set(futures)
    try:
        while pending:
            try:
                done, pending = wait(pending, policy.stall_timeout, "FIRST_COMPLETED")
            except TimeoutError:
                raise ClusterError(
                    f"no {what} finished in {policy.stall_timeout:g} s ({len(pending)} of "
                    f"{len(futures)} left): are there running workers offering "
                    f"{policy.resources or 'any'} resources (not paused for memory)? raise "
                    f"cluster.stall_timeout for very slow {what}s"
                ) from None
            for future in done:
                try:
                    result = future.result()
                except KilledWorker as exc:
                    name = label(future) if label else str(future.key)
                    raise ClusterError(
                        f"{what} {name}: {exc} (raise cluster.allowed_failures, or give "
                        "workers more memory)"
                    ) from exc
                yield future, result
                future.release()
    finally:
        client.cancel(futures)
