"""Re-run a command under jemalloc when the model runs in the command's own process."""

from __future__ import annotations

import logging
import os
import sys

import click

from geoseg.config import ClusterConfig

__all__ = ["rerun_under_allocator"]

log = logging.getLogger(__name__)


def rerun_under_allocator(cluster: ClusterConfig) -> None:
    """Re-execute this process once under jemalloc (or tuned glibc), if the model runs in it.

    Only with ``scheduler: synchronous`` (workers of clusters get their allocator from their
    nanny), only when the command line is this process's own (``geoseg …``, not a test runner
    calling the command), and never twice (:func:`geoseg.allocator.reexec_environ`). Same
    process id, arguments and environment plus ``LD_PRELOAD``/``MALLOC_CONF`` (or
    :data:`geoseg.allocator.GLIBC_TUNING`).

    Raises:
        ConfigError: ``allocator: jemalloc`` and this machine has none.
    """
    from geoseg.allocator import GLIBC_TUNING, REEXEC_GUARD, allocator_in_use, reexec_environ
    from geoseg.cli import OWN_PROCESS
    from geoseg.cluster import SYNCHRONOUS

    if cluster.scheduler != SYNCHRONOUS:
        return
    root = click.get_current_context().find_root()
    env = reexec_environ(cluster.allocator)
    if env is not None and (root.obj or {}).get(OWN_PROCESS) and len(sys.orig_argv) > 1:
        what = "jemalloc" if "jemalloc" in env["LD_PRELOAD"] else "tuned glibc"
        names = ("LD_PRELOAD", "MALLOC_CONF") if what == "jemalloc" else tuple(GLIBC_TUNING)
        log.info("re-running under %s: %s", what, " ".join(f"{k}={env[k]}" for k in names))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    log.info("the model runs in this process; allocator: %s%s", allocator_in_use(),
             " (re-executed)" if os.environ.get(REEXEC_GUARD) else "")
