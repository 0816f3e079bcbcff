"""Where tasks run: a local cluster (default), an existing scheduler, Slurm/PBS jobs, or here.

geoseg never invents its own distribution: it asks Dask (and dask-jobqueue) for a client and
submits tasks. Kubernetes clusters are existing schedulers too (see ``workflows/k8s``).

GPU layout: one worker process per GPU, each seeing only its GPU (``CUDA_VISIBLE_DEVICES``),
holding one copy of the model and offering the resource ``GPU=1``, of which every prediction
task takes ``1/cluster.gpu_tasks`` (:func:`task_policy`); so a GPU runs ``cluster.gpu_tasks``
blocks at once (while one runs the model, the others read and normalize theirs). A local cluster
does this itself; Slurm jobs get it from ``--gres=gpu:1`` per worker job (one worker process
each); elsewhere start one ``dask worker --resources GPU=1`` per GPU and set
``cluster.resources`` (``{GPU: 0.5}``: two blocks at once), which tasks then take as given.

CPU-only work on CPU workers: the workers of a local cluster without GPUs (and without
``cluster.resources``) run ``threads_per_worker`` prediction slots, offered as the resource
``MODEL`` (:data:`MODEL_RESOURCE`) of which every prediction task takes 1, plus
``cluster.cpu_task_threads`` threads (default 1) that only CPU-only tasks can use while the
slots are busy; CPU-only tasks get a priority below every prediction (``cpu_priority`` of
:class:`~geoseg.tasks.TaskPolicy`), so a free thread takes a waiting prediction first. With one
thread per worker, scene k's vectorize blocks waited for scene k+1's prediction and then held
the only thread, so scene k+2 started late and the model idled (``docs/cluster.md``, "Keeping
the model busy on CPU workers"). After the last prediction every thread vectorizes.

CPU-only work beside GPU workers: a local cluster of GPU workers also starts CPU-only workers
(``cluster.cpu_workers``) offering ``CPU`` = their threads, and every CPU-only task (vectorize
blocks) then asks for ``CPU=1`` (:attr:`~geoseg.tasks.TaskPolicy.cpu_resources`), so none takes
a GPU worker's slot. Clusters without GPU workers, Slurm/PBS worker jobs and existing schedulers
keep CPU-only tasks unconstrained.

Allocator: the workers of clusters geoseg starts (local, Slurm/PBS jobs) run under jemalloc
where their node has it, else under glibc tuned to keep its large blocks (``cluster.allocator``,
:mod:`geoseg.allocator`, a nanny preload);
workers of an existing scheduler get it with ``dask worker … --preload-nanny geoseg.allocator``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from geoseg.allocator import ENV_CHOICE, GLIBC_TUNING, resolve_allocator
from geoseg.config import ClusterConfig
from geoseg.errors import ConfigError
from geoseg.tasks import TaskPolicy

__all__ = [
    "CPU_PRIORITY",
    "MODEL_RESOURCE",
    "SYNCHRONOUS",
    "ClusterSession",
    "available_cores",
    "connect",
    "cpu_worker_layout",
    "cuda_device_count",
    "local_worker_layout",
    "model_slots",
    "quiet_config",
    "quiet_environ",
    "resource_arg",
    "session",
    "task_policy",
    "torch_threads",
    "worker_resources",
    "worker_setup",
]

log = logging.getLogger(__name__)

#: ``scheduler`` value that runs every task in the calling process (no distributed).
SYNCHRONOUS = "synchronous"

#: Nanny preload that gives worker processes the configured memory allocator.
ALLOCATOR_PRELOAD = "geoseg.allocator"

#: What a GPU worker geoseg starts offers per GPU; each prediction task takes
#: ``1/cluster.gpu_tasks`` of it (:func:`task_policy`), unless ``cluster.resources`` is set.
GPU_RESOURCE = {"GPU": 1.0}

#: What the CPU-only workers beside GPU workers offer per thread, and each CPU-only task takes.
CPU_RESOURCE = {"CPU": 1.0}

#: What a worker of a local CPU cluster offers per prediction slot (``threads_per_worker``),
#: and each prediction task takes: at most that many predictions at once, whatever its extra
#: threads for CPU-only tasks (``cluster.cpu_task_threads``).
MODEL_RESOURCE = {"MODEL": 1.0}

#: Added to the Dask priority of CPU-only tasks on workers that also predict (a local CPU
#: cluster): below any scene's prediction (batch runs lower a later scene's priority by 1 per
#: scene), so a free thread takes a waiting prediction first; their order among themselves stays.
CPU_PRIORITY = -(10**9)

#: Set to the worker's cores on GPU workers: GDAL decodes the compressed tiles of one window
#: read in that many threads (4-band uint16 DEFLATE, 2 cores: 48 → 105 Mpx/s), and reading is
#: what a GPU waits for. CPU workers leave their cores to the model.
READ_THREADS_ENV = "GDAL_NUM_THREADS"

#: Dask housekeeping that takes cores from the model, quietened on the workers (and the
#: scheduler) of the clusters geoseg starts: the statistical profiler samples every task
#: thread's stack every 10 ms, the event-loop tick runs every 20 ms, the memory monitor every
#: 100 ms and the dashboard's system monitor every 500 ms. On 2 cores they took 8 % of a core
#: while idle (→ 1 %) and a 3072² U-Net/ResNet-34 run went 22.3 → 21.1 s. Only the dashboard's
#: Profile tab is lost; a user's own setting of any of these keys wins (:func:`quiet_config`).
QUIET_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "250ms",
}


def available_cores() -> int:
    """CPU cores this process may use: the Slurm allocation, else its CPU affinity."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if slurm and slurm.isdigit():
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


#: Paths that exist on a Linux machine whose GPUs torch may see: NVIDIA's driver (its device
#: files are created on first use when only the kernel module is there), ROCm, WSL's GPU.
_GPU_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def cuda_device_count() -> int:
    """The CUDA devices torch sees here (``torch.cuda.device_count()``), without importing torch
    into this process: none on a Linux machine without a GPU driver or on macOS; else torch's
    own count, asked in a short-lived child process (a client that never runs the model stays
    light; :mod:`geoseg.batch`) unless torch is loaded here already."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].cuda.device_count())
    if sys.platform == "darwin" or (sys.platform.startswith("linux") and not any(
            os.path.exists(p) for p in _GPU_DRIVER_PATHS)):
        return 0
    import subprocess

    code = "import torch; print(torch.cuda.device_count())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    lines = done.stdout.split()
    if done.returncode != 0 or not lines or not lines[-1].isdigit():
        log.warning("cannot count the GPUs (torch in a child process: %s); using none",
                    (done.stderr.strip().splitlines() or ["no answer"])[-1])
        return 0
    return int(lines[-1])


def visible_gpus(cfg: ClusterConfig, device: str = "auto") -> list[str]:
    """CUDA device ids a local cluster spreads its workers over (one worker each)."""
    if device == "cpu" or cfg.gpus == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    else:
        ids = [str(i) for i in range(cuda_device_count())]
    if cfg.gpus is not None and cfg.gpus > len(ids):
        raise ConfigError(f"cluster.gpus is {cfg.gpus} but this machine shows {len(ids)} GPU(s)")
    return ids[: cfg.gpus] if cfg.gpus is not None else ids


def local_worker_layout(
    cfg: ClusterConfig, cores: int | None = None, gpus: int = 0
) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` for a local cluster on ``cores`` CPU cores.

    With ``gpus`` > 0 there is one worker per GPU; otherwise one per two cores.
    """
    cores = cores or available_cores()
    workers = gpus or cfg.workers or max(1, cores // 2)
    return workers, max(1, cores // workers)


def torch_threads(cfg: ClusterConfig, gpus: int = 0) -> int | None:
    """Torch intra-op threads per worker for the clusters geoseg starts (None: torch's default)."""
    if cfg.scheduler == SYNCHRONOUS:
        return None
    if cfg.scheduler:
        return None
    if cfg.kind == "local":
        return local_worker_layout(cfg, gpus=gpus)[1]
    jobs = cfg.slurm if cfg.kind == "slurm" else cfg.pbs
    return max(1, jobs.cpus // jobs.processes)


def worker_resources(cfg: ClusterConfig, gpus: int = 0) -> dict[str, float]:
    """The resources a worker geoseg starts offers: those ``cfg.resources`` names and, on a
    worker with ``gpus`` GPUs, ``GPU=gpus`` whatever a task takes of it (tasks taking
    ``{GPU: 0.5}`` share a GPU two at a time)."""
    offered = dict(cfg.resources)
    offered.update({k: v * gpus for k, v in GPU_RESOURCE.items()} if gpus else {})
    return offered


def resource_arg(resources: dict[str, float]) -> str:
    """``dask worker --resources`` value: ``GPU=1,foo=2``."""
    return ",".join(f"{k}={v:g}" for k, v in sorted(resources.items()))


def model_slots(cfg: ClusterConfig, gpus: int = 0) -> bool:
    """True when the workers geoseg starts for ``cfg`` offer :data:`MODEL_RESOURCE` per
    prediction slot and extra threads for CPU-only tasks: a local cluster without GPUs, without
    ``cluster.resources`` given, with ``cluster.cpu_task_threads`` > 0."""
    return (not cfg.scheduler and cfg.kind == "local" and gpus == 0 and not cfg.resources
            and cfg.cpu_task_threads > 0)


def task_policy(cfg: ClusterConfig, gpu_workers: bool = False,
                cpu_workers: bool = False, model_workers: bool = False) -> TaskPolicy:
    """The resources, retries and stall timeout of prediction tasks under ``cfg``.

    ``gpu_workers``: the cluster geoseg starts has GPU workers offering ``GPU=1``; each task
    then needs ``GPU=1/cfg.gpu_tasks``, so that many tasks share a GPU and one reads its block
    while another runs the model. ``cfg.resources`` given by the user are used as they are.
    ``cpu_workers``: CPU-only workers offering :data:`CPU_RESOURCE` run beside them (a local
    GPU cluster); CPU-only tasks then take ``CPU=1`` (``cpu_resources``). ``cfg.cpu_resources``
    given by the user are used as they are.
    ``model_workers``: CPU workers offering :data:`MODEL_RESOURCE` per prediction slot, with
    extra threads (:func:`model_slots`); each prediction task then takes ``MODEL=1`` and
    CPU-only tasks get :data:`CPU_PRIORITY`.
    """
    if cfg.resources:
        resources = dict(cfg.resources)
    elif gpu_workers:  # a hair under 1/k, so that k of them always fit in float arithmetic
        resources = {k: v / cfg.gpu_tasks - 1e-9 for k, v in GPU_RESOURCE.items()}
    elif model_workers:
        resources = dict(MODEL_RESOURCE)
    else:
        resources = {}
    if cfg.cpu_resources:
        cpu = dict(cfg.cpu_resources)
    else:
        cpu = dict(CPU_RESOURCE) if cpu_workers else {}
    return TaskPolicy(resources, cfg.retries, cfg.stall_timeout, cpu_resources=cpu,
                      cpu_priority=CPU_PRIORITY if model_workers and not gpu_workers else 0)


def cpu_worker_layout(cfg: ClusterConfig, gpus: int, cores: int | None = None) -> tuple[int, int]:
    """``(CPU-only workers, threads each)`` a local cluster of ``gpus`` GPU workers starts
    beside them on ``cores`` cores: ``cfg.cpu_workers`` (default one per 4 cores the GPU
    workers leave, ``cores - gpus``, at least 1), sharing those cores."""
    cores = cores or available_cores()
    free = max(1, cores - gpus)
    workers = cfg.cpu_workers or max(1, free // 4)
    return workers, max(1, free // workers)


def worker_setup(cfg: ClusterConfig, read_threads: int = 0) -> tuple[list[str], dict[str, str]]:
    """``dask worker`` arguments and environment of the workers geoseg's job scripts and pods
    start: the allocator's nanny preload (with ``GEOSEG_ALLOCATOR`` where ``cfg.allocator``
    pins one: a jemalloc nanny fails on a node without it), ``GDAL_NUM_THREADS`` on GPU workers
    (``read_threads`` cores; 0 for CPU workers) and :func:`quiet_environ`."""
    args = [] if cfg.allocator == "system" else ["--preload-nanny", ALLOCATOR_PRELOAD]
    env: dict[str, str] = (
        {ENV_CHOICE: cfg.allocator} if cfg.allocator in ("jemalloc", "glibc") else {}
    )
    if read_threads:
        env[READ_THREADS_ENV] = str(read_threads)
    return args, {**env, **quiet_environ()}


def quiet_config() -> dict[str, Any]:
    """Those of :data:`QUIET_CONFIG` that the user's Dask config does not set: not in a config
    file or ``DASK_*`` variable, and at their default in this process."""
    import dask
    import distributed  # noqa: F401  (registers distributed's defaults)

    defaults = dask.config.merge(*dask.config.defaults)
    user = dask.config.collect()  # config files and DASK_* variables, without the defaults
    return {key: value for key, value in QUIET_CONFIG.items()
            if dask.config.get(key, None, config=user) is None
            and dask.config.get(key, None) == dask.config.get(key, None, config=defaults)}


def quiet_environ() -> dict[str, str]:
    """:func:`quiet_config` as ``DASK_*`` environment variables, for workers started by job
    scripts and pods (``distributed.worker.profile.enabled`` →
    ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED``)."""
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in quiet_config().items()
    }


def _check_resources(client: Any, resources: dict[str, float], address: str,
                     key: str = "cluster.resources") -> None:
    """Fail fast when no worker of an existing scheduler offers the tasks' resources
    (``key``: the config field that asks for them)."""
    if not resources:
        return
    client.wait_for_workers(1, timeout=60)
    offered = [w.get("resources", {}) for w in client.scheduler_info()["workers"].values()]
    if not any(all(r.get(k, 0) >= v for k, v in resources.items()) for r in offered):
        raise ConfigError(
            f"no worker of {address} offers resources {resource_arg(resources)}: start "
            f"workers with `dask worker {address} --resources {resource_arg(resources)}` or "
            f"unset {key}"
        )


def _allocator_options(cfg: ClusterConfig, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Nanny options giving the worker processes ``cfg.allocator`` (:mod:`geoseg.allocator`)."""
    return {"preload_nanny": [ALLOCATOR_PRELOAD],
            "env": {**(env or {}), ENV_CHOICE: cfg.allocator}}


@contextmanager
def _restored_environ(*names: str) -> Iterator[None]:
    """Put ``names`` back as they were: nannies set their pre-spawn environment in this process."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _local_cluster(cfg: ClusterConfig, gpu_ids: list[str]) -> Any:
    from distributed import LocalCluster

    workers, cores = local_worker_layout(cfg, gpus=len(gpu_ids))
    if not gpu_ids:
        threads, resources = cfg.threads_per_worker, dict(cfg.resources)
        if model_slots(cfg):  # prediction slots as MODEL, plus threads for CPU-only tasks
            threads += cfg.cpu_task_threads
            resources = {k: v * cfg.threads_per_worker for k, v in MODEL_RESOURCE.items()}
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            memory_limit=cfg.memory_limit,
            resources=resources or None,
            dashboard_address=":0",
            **_allocator_options(cfg),
        )
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT
    from distributed.worker_memory import parse_memory_limit

    n_cpu, cpu_threads = cpu_worker_layout(cfg, len(gpu_ids))
    memory = (
        MEMORY_LIMIT // (workers + n_cpu) if cfg.memory_limit == "auto"
        else parse_memory_limit(cfg.memory_limit, cfg.threads_per_worker, logger=log)
    )
    specs = {
        f"gpu{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": max(cfg.threads_per_worker, cfg.gpu_tasks),
                "memory_limit": memory,
                "resources": worker_resources(cfg, gpus=1),
                **_allocator_options(cfg, {"CUDA_VISIBLE_DEVICES": gpu,
                                           READ_THREADS_ENV: str(cores)}),
            },
        }
        for gpu in gpu_ids
    }
    for k in range(n_cpu):  # CPU-only tasks (vectorize blocks) go here, never to a GPU worker
        specs[f"cpu{k}"] = {
            "cls": Nanny,
            "options": {
                "nthreads": cpu_threads,
                "memory_limit": memory,
                "resources": {name: v * cpu_threads for name, v in CPU_RESOURCE.items()},
                **_allocator_options(cfg, {"CUDA_VISIBLE_DEVICES": ""}),
            },
        }
    return SpecCluster(
        workers=specs,
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        name="geoseg-gpu",
    )


@contextmanager
def connect(cfg: ClusterConfig, device: str = "auto") -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or ``None`` for the synchronous scheduler).

    A local cluster or batch-job cluster is started and stopped here (its scheduler runs in
    this process with ``allowed-failures`` from ``cfg``; it and its workers run
    :data:`QUIET_CONFIG`); an existing scheduler is only
    connected to, after checking that some worker offers ``cfg.resources``.

    Args:
        cfg: the cluster section.
        device: ``predict.device``; ``cpu`` keeps a local cluster off the GPUs.
    """
    if cfg.scheduler == SYNCHRONOUS:
        yield None
        return
    import dask
    from distributed import Client

    if cfg.scheduler:
        with Client(cfg.scheduler, timeout="30s") as client:
            log.info("connected to %s", cfg.scheduler)
            _check_resources(client, dict(cfg.resources), cfg.scheduler)
            _check_resources(client, dict(cfg.cpu_resources), cfg.scheduler,
                             "cluster.cpu_resources")
            yield client
        return
    settings = {"distributed.scheduler.allowed-failures": cfg.allowed_failures, **quiet_config()}
    with dask.config.set(settings), \
            _restored_environ("LD_PRELOAD", "MALLOC_CONF", *GLIBC_TUNING, READ_THREADS_ENV):
        if cfg.kind == "local":
            resolve_allocator(cfg.allocator)  # fail here, not in a nanny, if jemalloc is missing
            gpu_ids = visible_gpus(cfg, device)
            cluster = _local_cluster(cfg, gpu_ids)
            what = f"{len(gpu_ids)} GPU workers" if gpu_ids else "local cluster"
        else:
            from geoseg.jobqueue import jobqueue_cluster

            cluster = jobqueue_cluster(cfg)
            what = f"{cfg.kind} worker jobs"
        with cluster, Client(cluster) as client:
            log.info("%s, dashboard %s", what, client.dashboard_link)
            yield client


def gpu_workers(cfg: ClusterConfig, device: str = "auto") -> int:
    """GPUs behind the workers of the cluster geoseg starts for ``cfg`` (0: CPU workers)."""
    if cfg.scheduler or device == "cpu":
        return 0
    if cfg.kind == "local":
        return len(visible_gpus(cfg, device))
    return (cfg.slurm if cfg.kind == "slurm" else cfg.pbs).gpus


@dataclass(frozen=True)
class ClusterSession:
    """How the tasks of one command run on the cluster ``cfg`` describes.

    Built by :func:`session` before anything starts, so that a command can check its whole
    plan (which needs ``threads``) and fail before a cluster or batch jobs are started;
    :meth:`connect` then starts or joins the cluster.

    Attributes:
        cfg: the cluster section.
        device: ``predict.device`` (``cpu`` keeps a local cluster off the GPUs).
        gpus: GPUs behind the workers geoseg starts (0: CPU workers).
        threads: torch intra-op threads per worker (None: torch's default).
        policy: resources, retries and stall timeout of the block tasks.
    """

    cfg: ClusterConfig
    device: str
    gpus: int
    threads: int | None
    policy: TaskPolicy

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """Yield a ``distributed.Client`` (``None`` for the synchronous scheduler): see
        :func:`connect`."""
        with connect(self.cfg, self.device) as client:
            yield client


def session(cfg: ClusterConfig, device: str = "auto", cpu_tasks: bool = True) -> ClusterSession:
    """The cluster set-up every command shares: GPU count → torch threads → task policy.

    Nothing starts here; ``with session(cfg, device).connect() as client:`` starts or joins
    the cluster. ``cpu_tasks=False`` (a command that submits no CPU-only task: ``geoseg
    predict``, ``geoseg run --no-vectorize``) starts local CPU workers without the
    ``cluster.cpu_task_threads`` threads: an idle thread costs nothing but its allocator arena,
    which jemalloc keeps (a 4096² run without vectorizing peaked at 1726 MiB in the worker with
    one, 1643 MiB without).

    Raises:
        ConfigError: ``cfg.gpus`` asks for more GPUs than this machine shows.
    """
    if not cpu_tasks and cfg.cpu_task_threads:
        cfg = cfg.model_copy(update={"cpu_task_threads": 0})
    gpus = gpu_workers(cfg, device)
    cpu_beside = gpus > 0 and cfg.kind == "local"  # _local_cluster starts CPU-only workers
    return ClusterSession(cfg, device, gpus, torch_threads(cfg, gpus),
                          task_policy(cfg, gpu_workers=gpus > 0, cpu_workers=cpu_beside,
                                      model_workers=model_slots(cfg, gpus)))
