"""Where tasks run: a local cluster (default), an existing scheduler, or this process.

geoseg never invents its own distribution: it asks Dask for a client and submits tasks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from geoseg.config import ClusterConfig

__all__ = ["SYNCHRONOUS", "connect", "local_worker_layout"]

log = logging.getLogger(__name__)

#: ``scheduler`` value that runs every task in the calling process (no distributed).
SYNCHRONOUS = "synchronous"


def local_worker_layout(cfg: ClusterConfig, cores: int | None = None) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` for a local cluster on ``cores`` CPU cores."""
    cores = cores or os.cpu_count() or 1
    workers = cfg.workers or max(1, cores // 2)
    return workers, max(1, cores // workers)


@contextmanager
def connect(cfg: ClusterConfig) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or ``None`` for the synchronous scheduler).

    A local cluster is started and stopped here; an existing scheduler is only connected to.
    """
    if cfg.scheduler == SYNCHRONOUS:
        yield None
        return
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        with Client(cfg.scheduler, timeout="30s") as client:
            log.info("connected to %s", cfg.scheduler)
            yield client
        return
    workers, _ = local_worker_layout(cfg)
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        memory_limit=cfg.memory_limit,
        dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        log.info("local cluster: %d workers, dashboard %s", workers, client.dashboard_link)
        yield client
