"""Run configuration: pydantic models at the boundary (YAML presets + command-line overrides).

Every model forbids unknown keys, so a typo in a YAML file is an error naming the field.
Core functions never take these models whole; they take the small frozen objects built from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoseg.errors import ConfigError

__all__ = [
    "ClusterConfig",
    "Config",
    "PredictConfig",
    "RunConfig",
    "VectorizeConfig",
    "load_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PredictConfig(_Section):
    """How a scene is cut, run through the model and stitched."""

    tile_size: int | None = Field(
        None, gt=0, description="model input tile side in pixels (default: the bundle's for "
        "DeepLabV3+ and other whole-tile-pooling models; else at least 1024 and 4 × halo)"
    )
    halo: int | None = Field(
        None, ge=0, description="context pixels per tile side, dropped after prediction "
        "(default: the bundle's; rounded up to the model's stride)"
    )
    block_size: int = Field(
        2048, gt=0, description="side of one Dask block in pixels (rounded up to a whole "
        "number of tile cores); sets memory per task"
    )
    batch_size: int | None = Field(
        None, gt=0, description="tiles per forward pass (default: about 1 Mpx per pass, "
        "i.e. 1 tile of 1024², 4 of 512²)"
    )
    stitch: Literal["trim", "blend"] = Field(
        "trim", description="trim: keep each tile's core; blend: cosine-weighted probabilities"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (resolved on workers)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision on CUDA; CPU always runs fp32"
    )
    channels_last: bool = Field(False, description="NHWC memory format for convolutions")
    confidence: bool = Field(False, description="also write max probability (percent)")
    probabilities: bool = Field(False, description="also write per-class probabilities (percent)")


class VectorizeConfig(_Section):
    """How a mask becomes polygons (``geoseg vectorize`` and the batch run)."""

    enabled: bool = Field(True, description="write the GeoPackage in batch runs")
    min_area_m2: float = Field(
        0.0, ge=0, description="sieve regions smaller than this into their largest neighbour, m²"
    )
    simplify_m: float = Field(
        0.0, ge=0, description="coverage-preserving simplification tolerance, metres"
    )
    connectivity: Literal[4, 8] = Field(4, description="pixel connectivity of regions")
    layer: str = Field("landcover", min_length=1, description="GeoPackage layer name")
    block_size: int = Field(2048, ge=16, description="side of one vectorizing block, px")


class RunConfig(_Section):
    """Batch behaviour of ``geoseg run``."""

    on_error: Literal["continue", "fail"] = Field(
        "continue", description="continue: report a failed scene and go on; fail: stop there"
    )
    band_fill: float | None = Field(
        0, description="value marking missing pixels in band files that declare no nodata "
        "(0 for Sentinel-2 and Landsat); null: every pixel is data"
    )
    quicklook_size: int = Field(
        512, ge=64, le=4096, description="longest side of the report's quick-look pictures, px"
    )
    html: bool = Field(True, description="write report.html with quick-looks")
    stac: bool = Field(True, description="write a STAC Item per scene")


class _BatchJobs(_Section):
    """Batch-scheduler jobs (Slurm, PBS) for worker jobs and rendered workflows."""

    account: str | None = Field(None, description="account (project) charged for the jobs")
    cpus: int = Field(4, gt=0, description="CPU cores per job")
    memory: str = Field("16GiB", description="memory per job, e.g. '16GiB'")
    gpus: int = Field(0, ge=0, description="GPUs per job (Slurm: --gres=gpu:N); worker jobs "
                      "take at most one (one worker per GPU), array tasks any number")
    walltime: str = Field("01:00:00", description="time limit per job, [D-]HH:MM:SS")
    processes: int = Field(1, gt=0, description="Dask worker processes per CPU worker job "
                           "(GPU worker jobs run one)")
    jobs: int = Field(1, gt=0, description="worker jobs started by --cluster slurm|pbs")
    lifetime: str | None = Field(
        None, description="worker lifetime, e.g. '55m': workers retire before the job's time "
        "limit and new jobs replace them (default: walltime minus 10 %, at least 2 minutes)"
    )
    lifetime_stagger: str | None = Field(
        None, description="random spread of worker lifetimes so jobs do not all end at once "
        "(default: 5 % of walltime)"
    )
    directives: list[str] = Field(
        default_factory=list, description="extra scheduler directives, e.g. '--constraint=a100'"
    )
    log_directory: str = Field("logs", description="folder for job logs (relative: submit dir)")
    python: str | None = Field(
        None, description="Python on the compute nodes for worker jobs (default: this one)"
    )
    interface: str | None = Field(
        None, description="network interface Dask binds to (e.g. ib0, lo); default: hostname's"
    )


class SlurmConfig(_BatchJobs):
    """Slurm: the job-array and driver workflows, and --cluster slurm worker jobs."""

    partition: str | None = Field(None, description="partition (-p) for every job")
    qos: str | None = Field(None, description="quality of service (--qos)")
    gpu_type: str | None = Field(None, description="GPU type in the gres, e.g. 'a100' → gpu:a100:N")
    array_tasks: int = Field(4, gt=0, description="tasks of the job array: the scene list is "
                             "split into this many parts (--split I/N)")
    array_parallel: int | None = Field(
        None, gt=0, description="at most this many array tasks run at once (%N)"
    )
    driver_walltime: str = Field(
        "24:00:00", description="time limit of the driver job (it waits for the whole run)"
    )


class PBSConfig(_BatchJobs):
    """PBS/Torque: --cluster pbs worker jobs."""

    queue: str | None = Field(None, description="queue (-q)")
    resource_spec: str | None = Field(
        None, description="-l resource spec, e.g. 'select=1:ncpus=8:ngpus=1:mem=32gb'"
    )


class KubernetesConfig(_Section):
    """Kubernetes manifests rendered by `geoseg workflow render k8s`."""

    namespace: str = Field("geoseg", description="namespace of every object")
    image: str = Field("geoseg:0.1.0", description="container image with geoseg installed")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="image pull policy"
    )
    workers: int = Field(2, gt=0, description="Dask worker pods (one GPU each when gpus > 0)")
    cpu: str = Field("4", description="CPU request and limit per worker pod")
    memory: str = Field("16Gi", description="memory request and limit per worker pod")
    gpus: int = Field(1, ge=0, description="nvidia.com/gpu per worker pod (0: CPU workers)")
    volume_claim: str = Field(
        "geoseg-data", description="PersistentVolumeClaim holding scenes, model and outputs"
    )
    mount_path: str = Field("/data", description="where the claim is mounted in every pod")
    array_tasks: int = Field(4, gt=0, description="completions of the Indexed Job "
                             "(scene list split --split I/N)")
    array_parallel: int = Field(2, gt=0, description="Indexed Job pods running at once")
    node_selector: dict[str, str] = Field(default_factory=dict, description="pod nodeSelector")
    service_account: str | None = Field(None, description="service account of the pods")


class JobConfig(_Section):
    """What a rendered workflow runs: ``geoseg run INPUTS --model MODEL --out OUT --config …``.

    Paths are as the compute nodes (or pods) see them.
    """

    name: str = Field("geoseg", description="job name prefix")
    inputs: list[str] = Field(default_factory=lambda: ["scenes"],
                              description="scene files or folders")
    model: str = Field("model.safetensors", description="model bundle")
    out: str = Field("out", description="output folder (one sub-folder per scene)")
    config: str | None = Field(
        None, description="config file the jobs pass to geoseg (default: the rendered one)"
    )
    on_error: Literal["continue", "fail"] = Field(
        "continue", description="a failing scene is reported and skipped, or stops the job"
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines run first in batch jobs, e.g. 'source ~/venv/bin/activate'",
    )
    command: str = Field("geoseg", description="the geoseg executable on the compute nodes")


class ClusterConfig(_Section):
    """Where tasks run: a local cluster, an existing scheduler, or batch-scheduler jobs."""

    kind: Literal["local", "slurm", "pbs"] = Field(
        "local", description="local: a cluster on this machine; slurm/pbs: worker jobs via "
        "dask-jobqueue (ignored when `scheduler` is set)"
    )
    scheduler: str | None = Field(
        None, description="address of an existing Dask scheduler (tcp://host:8786), or "
        "'synchronous' to run in this process; default: a local cluster"
    )
    workers: int | None = Field(
        None, gt=0, description="worker processes of the local cluster (default: one per 2 "
        "cores, or one per GPU)"
    )
    threads_per_worker: int = Field(1, gt=0, description="task threads per worker process")
    memory_limit: str = Field("auto", description="memory limit per local worker, e.g. '4GiB'")
    allocator: Literal["auto", "jemalloc", "glibc", "system"] = Field(
        "auto", description="memory allocator of the processes that run the model: jemalloc "
        "(LD_PRELOAD libjemalloc.so.2, 1.2-2.2x faster smp models on CPU), glibc (glibc malloc "
        "told to keep its large blocks: MALLOC_MMAP_MAX_=0 MALLOC_ARENA_MAX=1, nearly as "
        "fast), system (the environment's allocator, untouched), or auto: jemalloc where the "
        "node has it, else glibc. Applies to workers of clusters "
        "geoseg starts (local, Slurm/PBS jobs) and to `--scheduler synchronous` runs"
    )
    gpus: int | None = Field(
        None, ge=0, description="GPUs of the local cluster, one worker per GPU pinned with "
        "CUDA_VISIBLE_DEVICES (default: every visible GPU when predict.device is not cpu)"
    )
    gpu_tasks: int = Field(
        2, ge=1, description="prediction tasks a GPU worker geoseg starts runs at once: while "
        "one runs the model, the others read, decode and normalize their blocks (each task holds "
        "its block, so memory grows with it). Local GPU workers get at least this many threads"
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Dask resources every prediction task needs, e.g. "
        "{GPU: 1}; workers must offer them (dask worker --resources GPU=1). Default: {GPU: 1} "
        "on clusters of GPU workers geoseg starts, none otherwise"
    )
    allowed_failures: int = Field(
        3, ge=0, description="worker deaths a task may cause before it fails (KilledWorker); "
        "schedulers geoseg starts only"
    )
    retries: int = Field(1, ge=0, description="retries of a block task that raised an error")
    stall_timeout: float | None = Field(
        900.0, gt=0, description="seconds without any finished block before a scene is failed "
        "(no worker offers the resources, lost cluster…); null: wait forever"
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    pbs: PBSConfig = Field(default_factory=PBSConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    job: JobConfig = Field(default_factory=JobConfig)


class Config(_Section):
    """The whole configuration; each section mirrors a stage."""

    predict: PredictConfig = Field(default_factory=PredictConfig)
    vectorize: VectorizeConfig = Field(default_factory=VectorizeConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Build a :class:`Config` from an optional YAML file and nested overrides.

    Overrides win over the file; ``None`` values in overrides are ignored (unset flags).

    Raises:
        ConfigError: unreadable YAML, unknown keys or invalid values (the field is named).
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
        data = loaded
    clean = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in (overrides or {}).items()
    }
    try:
        return Config.model_validate(_merge(data, clean))
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}invalid config: {problems}") from exc
