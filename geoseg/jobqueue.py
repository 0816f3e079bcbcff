"""Dask workers as Slurm or PBS batch jobs (dask-jobqueue), for ``--cluster slurm|pbs``.

Every worker job offers the prediction resources once (``GPU=1`` with a GPU), retires before
its job's time limit (:func:`worker_lifetime`, staggered, so that ``adapt`` replaces it before
Slurm kills it mid-block) and runs ``cluster.job.setup`` and geoseg's worker environment
(:func:`geoseg.cluster.worker_setup`) first.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from geoseg.cluster import resource_arg, worker_resources, worker_setup
from geoseg.config import ClusterConfig, PBSConfig, SlurmConfig
from geoseg.errors import ConfigError

__all__ = ["jobqueue_cluster", "jobqueue_kwargs", "parse_walltime", "worker_lifetime"]

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_walltime(text: str) -> int:
    """Seconds in a Slurm/PBS time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"walltime {text!r}: expected [D-]HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None and b is None:  # "MM"
        return 60 * (a or 0)
    if days is None and c is None:  # "MM:SS"
        return 60 * (a or 0) + (b or 0)
    return 86400 * (days or 0) + 3600 * (a or 0) + 60 * (b or 0) + (c or 0)


def worker_lifetime(jobs: SlurmConfig | PBSConfig) -> tuple[int, int]:
    """``(lifetime, stagger)`` in seconds: workers retire before their job's time limit.

    Defaults: lifetime = walltime − max(10 %, 2 min), stagger = 5 % of walltime, so the
    worst-case lifetime + stagger still ends before the limit.
    """
    from dask.utils import parse_timedelta

    wall = parse_walltime(jobs.walltime)
    stagger = int(parse_timedelta(jobs.lifetime_stagger)) if jobs.lifetime_stagger else wall // 20
    if jobs.lifetime:
        lifetime = int(parse_timedelta(jobs.lifetime))
    else:
        lifetime = wall - max(wall // 10, 120) - stagger
    if lifetime <= 0 or lifetime + stagger > wall:
        raise ConfigError(
            f"worker lifetime {lifetime} s + stagger {stagger} s does not fit the walltime "
            f"{jobs.walltime}; lengthen walltime or set lifetime/lifetime_stagger"
        )
    return lifetime, stagger


def jobqueue_kwargs(cfg: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments of dask-jobqueue's ``SLURMCluster``/``PBSCluster`` for ``cfg.kind``.

    Every worker process offers the prediction resources once (``GPU=1`` with GPUs), lives
    :func:`worker_lifetime` and runs ``cfg.job.setup`` first.
    """
    if cfg.kind not in ("slurm", "pbs"):
        raise ConfigError(f"cluster.kind {cfg.kind!r} has no batch jobs")
    jobs: SlurmConfig | PBSConfig = cfg.slurm if cfg.kind == "slurm" else cfg.pbs
    if jobs.gpus > 1 or (jobs.gpus and jobs.processes > 1):
        # worker processes of one job would all see every GPU of the job and share the first
        raise ConfigError(
            f"cluster.{cfg.kind}: worker jobs take one GPU and one worker process each (gpus: 1, "
            f"processes: 1; got {jobs.gpus} and {jobs.processes}); ask for more jobs instead: "
            "the scheduler packs them onto multi-GPU nodes, one worker per GPU"
        )
    offered = worker_resources(cfg, gpus=jobs.gpus)
    lifetime, stagger = worker_lifetime(jobs)
    extra_args = ["--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s"]
    if offered:
        extra_args += ["--resources", resource_arg(offered)]
    setup_args, env = worker_setup(cfg, read_threads=jobs.cpus if jobs.gpus else 0)
    extra_args += setup_args
    prologue = [*cfg.job.setup, *(f"export {name}={value}" for name, value in env.items())]
    directives = list(jobs.directives)
    kwargs: dict[str, Any] = {
        "cores": jobs.cpus,
        "processes": jobs.processes,
        "memory": jobs.memory,
        "walltime": jobs.walltime,
        "account": jobs.account,
        "job_name": f"{cfg.job.name}-worker",
        "python": jobs.python or sys.executable,
        "interface": jobs.interface,
        "log_directory": jobs.log_directory,
        "job_script_prologue": prologue,
        "worker_extra_args": extra_args,
        "scheduler_options": {"dashboard_address": ":0"},
    }
    if isinstance(jobs, SlurmConfig):
        if jobs.gpus:
            kind = f"gpu:{jobs.gpu_type}" if jobs.gpu_type else "gpu"
            directives.append(f"--gres={kind}:{jobs.gpus}")
        if jobs.qos:
            directives.append(f"--qos={jobs.qos}")
        kwargs["queue"] = jobs.partition
    else:
        kwargs["queue"] = jobs.queue
        kwargs["resource_spec"] = jobs.resource_spec
    kwargs["job_extra_directives"] = directives
    return kwargs


def jobqueue_cluster(cfg: ClusterConfig) -> Any:
    """A started ``SLURMCluster``/``PBSCluster`` for ``cfg`` adapting to ``cfg.<kind>.jobs`` jobs.

    Raises:
        ConfigError: dask-jobqueue is not installed, or ``cfg`` does not fit batch jobs.
    """
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ConfigError(
            f"--cluster {cfg.kind} needs dask-jobqueue: pip install dask-jobqueue"
        ) from exc
    if cfg.kind == "slurm":
        cluster_class: type[dask_jobqueue.JobQueueCluster] = dask_jobqueue.SLURMCluster
    else:
        cluster_class = dask_jobqueue.PBSCluster
    jobs = cfg.slurm if cfg.kind == "slurm" else cfg.pbs
    cluster = cluster_class(**jobqueue_kwargs(cfg))
    log.debug("worker job script:\n%s", cluster.job_script())
    # adapt (not scale) so the jobs of workers that retire at their lifetime are replaced
    cluster.adapt(minimum_jobs=jobs.jobs, maximum_jobs=jobs.jobs)
    return cluster
