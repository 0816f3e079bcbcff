"""map_as_finished: where tasks run (a real in-process Dask cluster, or here), retries, the
stall timeout, results as they finish, and cancellation when the consumer stops early.

Order is forced with ``distributed.Event`` and checked with call counters, never timestamps.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dask
import pytest

from geoseg.errors import ClusterError
from geoseg.tasks import TaskPolicy, map_as_finished

CALLS: Counter[str] = Counter()
_LOCK = threading.Lock()


def _count(token: str) -> int:
    with _LOCK:
        CALLS[token] += 1
        return CALLS[token]


def flaky(item: tuple[str, int, int]) -> int:
    """Raise the first ``fails`` times it runs for ``token``, then return ``value``."""
    token, fails, value = item
    if _count(token) <= fails:
        raise ValueError(f"{token}: failure {CALLS[token]}")
    return value


def gated(item: tuple[str, int]) -> int:
    """``value`` once the event ``name`` is set ("" = at once); counts its runs by name."""
    name, value = item
    _count(f"ran-{name}")
    if name:
        from distributed import Event

        Event(name).wait()
    return value


def halves(value: int) -> tuple[int, int]:
    return value, value * 10


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One in-process worker with two threads: one can wait on an event while the other runs."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def gate(client) -> Iterator[str]:
    """A fresh event name; the event is set afterwards so no worker thread stays blocked."""
    from distributed import Event

    name = f"gate-{uuid.uuid4().hex}"
    event = Event(name, client=client)
    yield name
    event.set()


def _eventually(holds: Callable[[], bool], tries: int = 1000) -> bool:
    """Whether ``holds()`` becomes true within ``tries`` looks (10 ms apart): messages between
    client, scheduler and workers arrive after the call that sent them returned."""
    for _ in range(tries):
        if holds():
            return True
        time.sleep(0.01)
    return False


def _scheduler_forgets_everything(client: Any) -> bool:
    """Whether the scheduler ends up holding no task (releases and cancellations reach it on
    the client's stream)."""
    return _eventually(
        lambda: not client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))


def _workers_queue_nothing(client: Any) -> bool:
    """Whether the workers end up holding no task that is yet to run: the scheduler tells
    them of cancellations on its own stream, after it forgot the tasks itself."""
    waiting = {"ready", "constrained", "waiting", "fetch", "flight"}

    def queued(dask_worker: Any) -> int:
        return sum(ts.state in waiting for ts in dask_worker.state.tasks.values())

    return _eventually(lambda: not any(client.run(queued).values()))


# --- here, in this process -------------------------------------------------------------------


def test_here_runs_in_order_and_lazily() -> None:
    token = f"here-{uuid.uuid4().hex}"
    items = [(f"{token}-{k}", 0, 10 * k) for k in range(4)]
    results = map_as_finished(flaky, items)
    assert next(results) == (0, 0) and next(results) == (1, 10)
    results.close()  # the consumer stops early: the other tasks never run
    assert [CALLS[f"{token}-{k}"] for k in range(4)] == [1, 1, 0, 0]


def test_here_collections_and_keep() -> None:
    items = [dask.delayed(pow)(k, 2) for k in range(3)]
    assert list(map_as_finished(None, items)) == [(0, 0), (1, 1), (2, 4)]
    assert list(map_as_finished(lambda v: v + 1, [1, 2], keep=halves)) == [
        (0, (2, 20)), (1, (3, 30))]


def test_here_an_error_is_raised_at_once_without_retries() -> None:
    token = f"here-fails-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="failure 1"):
        list(map_as_finished(flaky, [(token, 1, 0)], policy=TaskPolicy(retries=3)))
    assert CALLS[token] == 1


# --- on a cluster ------------------------------------------------------------------------------


def test_results_come_as_they_finish(client, gate) -> None:
    """Task 0 waits until tasks 1 and 2 have been yielded: it comes last, with its position."""
    from distributed import Event

    held = set(client.refcount)  # futures this client holds already
    results = map_as_finished(gated, [(gate, 0), ("", 1), ("", 2)], client)
    first = [next(results), next(results)]
    assert sorted(first) == [(1, 1), (2, 2)]
    assert len(set(client.refcount) - held) == 2  # the first result released once yielded
    Event(gate, client=client).set()
    assert list(results) == [(0, 0)]
    assert not set(client.refcount) - held and _scheduler_forgets_everything(client)


def test_collections_keep_their_annotations(client) -> None:
    items = [dask.delayed(pow)(k, 2) for k in range(3)]
    assert sorted(map_as_finished(None, items, client)) == [(0, 0), (1, 1), (2, 4)]
    with dask.annotate(resources={"TPU": 1}):  # no worker offers it
        needy = [dask.delayed(pow, pure=False)(k, 2) for k in range(2)]
    with pytest.raises(ClusterError, match=r"no block finished in 0\.2 s \(2 of 2 left\)"):
        list(map_as_finished(None, needy, client, TaskPolicy(stall_timeout=0.2), what="block"))
    assert _scheduler_forgets_everything(client)  # cancelled


def test_retries_then_success_or_the_task_error(client) -> None:
    token = f"retry-{uuid.uuid4().hex}"
    policy = TaskPolicy(retries=2)
    assert list(map_as_finished(flaky, [(token, 2, 7)], client, policy)) == [(0, 7)]
    assert CALLS[token] == 3
    token = f"retry-out-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="failure 2"):  # the task's own error, not wrapped
        list(map_as_finished(flaky, [(token, 2, 7)], client, TaskPolicy(retries=1)))
    assert CALLS[token] == 2


def test_stall_timeout_raises_cluster_error_and_cancels(client, gate) -> None:
    policy = TaskPolicy(stall_timeout=0.2)
    items = [(gate, k) for k in range(3)]
    with pytest.raises(ClusterError, match=r"no thing finished in 0\.2 s \(3 of 3 left\).*"
                                           r"offering any resources.*very slow things"):
        list(map_as_finished(gated, items, client, policy, what="thing"))
    assert _scheduler_forgets_everything(client)
    # tasks ask for the policy's resources: none offered, so nothing ever starts
    token = f"needy-{uuid.uuid4().hex}"
    with pytest.raises(ClusterError, match=r"offering \{'GPU': 1\} resources"):
        list(map_as_finished(gated, [(token, 0)], client,
                             TaskPolicy({"GPU": 1}, stall_timeout=0.2)))
    assert CALLS[f"ran-{token}"] == 0 and _scheduler_forgets_everything(client)


def test_stopping_early_cancels_the_rest(client, gate) -> None:
    """The consumer takes one result and stops: every other task is cancelled on the
    scheduler, and those still queued never run."""
    from distributed import Event

    items = [("", 0)] + [(gate, k) for k in range(1, 8)]
    results = map_as_finished(gated, items, client)
    assert next(results) == (0, 0)
    results.close()
    assert _scheduler_forgets_everything(client) and _workers_queue_nothing(client)
    Event(gate, client=client).set()  # the tasks already running finish, nothing else starts
    assert list(map_as_finished(gated, [("", 9)], client)) == [(0, 9)]
    assert CALLS[f"ran-{gate}"] <= 2  # of 7: at most one per worker thread had started


def test_keep_leaves_the_kept_part_on_the_worker(client) -> None:
    results = list(map_as_finished(lambda v: v + 1, [1, 2, 3], client, keep=halves))
    assert sorted(k for k, _ in results) == [0, 1, 2]
    for k, (sent, kept) in results:
        assert sent == k + 2
        assert client.who_has([kept])[kept.key]  # held by a worker until dropped
        assert kept.result() == 10 * (k + 2)
