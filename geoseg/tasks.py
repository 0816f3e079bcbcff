"""Running tasks: on a Dask cluster with retries and a stall timeout, or here, one by one.

:func:`map_as_finished` is the one place that decides where a batch of tasks runs (a
``distributed.Client``, or this process when there is none) and how a cluster failure reads:
a task that killed its workers, or no task finishing in time, is a :class:`ClusterError`
naming the task, never a hang. Prediction (:func:`geoseg.graph.iter_blocks`) and vectorizing
(:func:`geoseg.vectorize.blocks.run_blocks`) both run their blocks through it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from geoseg.errors import ClusterError

__all__ = ["TaskPolicy", "map_as_finished"]


@dataclass(frozen=True)
class TaskPolicy:
    """How tasks run on a cluster.

    Attributes:
        resources: Dask resources each task needs (e.g. ``{"GPU": 1}``); empty: none.
        retries: times a task that raised is run again before the scene fails.
        stall_timeout: seconds without any finished task before the scene fails; None: never.
        cpu_resources: Dask resources of CPU-only tasks (vectorize blocks): ``{"CPU": 1}`` on
            a cluster geoseg starts with GPU workers, whose CPU-only workers beside them offer
            ``CPU`` (:func:`geoseg.cluster.task_policy`), so that no such task takes a GPU
            worker's slot; empty: any worker.
        priority: Dask priority of the tasks (higher first). A batch run with several scenes
            in flight gives an earlier scene a higher priority, so that scenes finish in order.
        cpu_priority: added to ``priority`` for CPU-only tasks: negative
            (:data:`geoseg.cluster.CPU_PRIORITY`) where they share workers with prediction
            tasks (a local CPU cluster), so that a free thread takes a waiting prediction first.
    """

    resources: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    stall_timeout: float | None = None
    cpu_resources: dict[str, float] = field(default_factory=dict)
    priority: int = 0
    cpu_priority: int = 0


def map_as_finished(
    fn: Callable[[Any], Any] | None,
    items: Sequence[Any],
    client: Any = None,
    policy: TaskPolicy | None = None,
    *,
    what: str = "task",
    label: Callable[[int], str] | None = None,
    keep: Callable[[Any], tuple[Any, Any]] | None = None,
) -> Generator[tuple[int, Any], None, None]:
    """``(position in items, result)`` of every task, as each finishes.

    Args:
        fn: the function each item is passed to; None: the items are Dask collections (e.g.
            ``Delayed``) whose graphs hold the work, computed as they are so that their
            annotations (``resources``) stay.
        items: the tasks' arguments (or collections), in any number.
        client: a ``distributed.Client``: every task is submitted at once (Dask queues them)
            and results are fetched, each released once yielded, as they finish; all tasks are
            cancelled when the caller stops early or fails. None: each task runs in turn in
            this process, in order, without retries or timeout.
        policy: retries, stall timeout and priority on the cluster, and the ``resources``
            each ``fn`` task (and its ``keep`` task) asks for (collections carry their own);
            None: ``TaskPolicy()``.
        what: what a task is called in errors ("block", "vectorize block"…).
        label: ``label(position)`` names a task in errors; None: its Dask key.
        keep: ``result -> (sent, kept)``, run where the task ran; ``(sent, kept)`` is then
            yielded instead of the result. On a cluster ``kept`` is a future: its value stays
            on the worker until the caller drops the future (a worker that dies meanwhile has
            it recomputed). Here ``kept`` is the value.

    Raises:
        ClusterError: a task killed ``allowed-failures`` workers, or none finished within
            ``policy.stall_timeout`` seconds (no worker offering the resources, paused
            workers, a hung task…) instead of waiting for ever.
    """
    if client is None:
        for k, item in enumerate(items):
            result = fn(item) if fn is not None else item.compute(scheduler="synchronous")
            yield k, keep(result) if keep is not None else result
        return
    policy = policy or TaskPolicy()
    if fn is None:
        futures = client.compute(list(items), retries=policy.retries, priority=policy.priority)
    else:
        futures = [client.submit(fn, item, pure=False, retries=policy.retries,
                                 resources=policy.resources or None, priority=policy.priority)
                   for item in items]
    kept: dict[Any, Any] = {}
    if keep is not None:  # only the sent part comes here, the kept part stays on the worker
        where = {"resources": policy.resources or None, "priority": policy.priority}
        parts = [client.submit(keep, f, pure=False, retries=policy.retries, **where)
                 for f in futures]
        futures = [client.submit(operator.getitem, p, 0, pure=False, **where) for p in parts]
        kept = {f.key: client.submit(operator.getitem, p, 1, pure=False, **where)
                for f, p in zip(futures, parts, strict=True)}
        del parts  # only what is sent and kept holds the results now
    position = {future.key: k for k, future in enumerate(futures)}
    name = (lambda future: label(position[future.key])) if label else None
    for future, result in _as_finished(client, futures, policy, what, name):
        k = position[future.key]
        yield k, (result, kept.pop(future.key)) if keep is not None else result


def _as_finished(client: Any, futures: list[Any], policy: TaskPolicy, what: str,
                 label: Callable[[Any], str] | None) -> Iterator[tuple[Any, Any]]:
    """``(future, result)`` of Dask futures as they finish, each released once yielded; all
    cancelled when the caller stops early or fails. ``what``/``label(future)`` name a task in
    errors (see :func:`map_as_finished`)."""
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
