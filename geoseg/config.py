"""Run configuration: pydantic models at the boundary (YAML presets + command-line overrides).

Every model forbids unknown keys, so a typo in a YAML file is an error naming the field, and
every value is checked against its real format when the config is loaded (Slurm names and time
limits, Kubernetes names and image references, memory sizes, the device…): the renderers of job
scripts and manifests trust what they get. No string value may hold a control character or a
line break. A section goes as it is to the functions of its stage (:class:`PredictConfig` to
prediction planning in :mod:`geoseg.pipeline`, :class:`ClusterConfig` to :mod:`geoseg.cluster`,
the whole :class:`Config` only to the batch runner, which hands each stage its section); the
block tasks that run on workers never get these models: they get the small frozen objects built
from them (``BlockJob``, ``ModelRef``, ``TaskPolicy``, the grids of :mod:`geoseg.tiling`).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    from geoseg.remote.gdal_env import CloudOptions

__all__ = [
    "ClusterConfig",
    "Config",
    "PredictConfig",
    "RunConfig",
    "StorageConfig",
    "VectorizeConfig",
    "load_config",
    "read_config_text",
]

#: Largest config file read (a preset is a few KiB; this stops `-c /dev/zero` and the like).
MAX_CONFIG_BYTES = 1 << 20

# --- value formats ----------------------------------------------------------------------------

#: Control characters (C0, DEL, C1), Unicode line/paragraph separators and bidi overrides: each
#: either ends a line for some reader (YAML, a terminal) or hides what a script really says.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _one_line(value: Any) -> Any:
    """``value`` (a string, or a list/dict of them) when no string in it has a control char."""
    texts = value if isinstance(value, list) else (
        [*value, *value.values()] if isinstance(value, dict) else [value])
    for text in texts:
        if isinstance(text, str) and (bad := _CONTROL.search(text)):
            raise ValueError(f"{text!r} holds the control character U+{ord(bad[0]):04X}; "
                             "write the value on one line without control characters")
    return value


def _no_bool(value: Any) -> Any:
    """Refuse a YAML boolean where a number is expected (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"got {str(value).lower()}, a boolean; write a number")
    return value


#: Whole numbers: no true → 1, no "8" → 8, no 8.0 → 8.
Int = Annotated[int, Strict(), BeforeValidator(_no_bool)]
#: Numbers: ints and floats, no booleans.
Number = Annotated[float, BeforeValidator(_no_bool)]


def _pattern(regex: str, what: str, example: str, max_len: int = 0) -> AfterValidator:
    """A validator: the whole string matches ``regex`` (ASCII classes), at most ``max_len``."""
    compiled = re.compile(regex, re.ASCII)

    def check(value: str) -> str:
        if not compiled.fullmatch(value) or (max_len and len(value) > max_len):
            longest = f", at most {max_len} characters" if max_len else ""
            raise ValueError(f"{value!r} is not {what}{longest}; write e.g. {example!r}")
        return value

    return AfterValidator(check)


def _check(test: Callable[[str], Any], problem: str) -> AfterValidator:
    """A validator: ``test(value)`` is true, else ValueError ``'<value>' <problem>``."""

    def check(value: str) -> str:
        if not test(value):
            raise ValueError(f"{value!r} {problem}")
        return value

    return AfterValidator(check)


_WORD = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
#: Slurm/PBS partition, account, qos, GPU type: letters, digits, '_', '.', '-'.
SchedulerName = Annotated[str, _pattern(_WORD, "a scheduler name (letters, digits, '_', '.', "
                                        "'-')", "gpu", 64)]
#: Slurm/PBS time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
TimeLimit = Annotated[str, _pattern(r"([0-9]+-)?[0-9]+(:[0-9]+){0,2}",
                                    "a time limit ([D-]HH:MM:SS, or minutes)", "04:00:00")]
#: A path the shell needs no quotes for (it goes into job scripts other tools write).
_SAFE_PATH = r"[A-Za-z0-9_./+@%,:=~][A-Za-z0-9_./+@%,:=~-]*"


def _bytes(value: str) -> str:
    """A memory size dask can parse (``16GiB``, ``32GB``, ``500MB``), more than 0 bytes."""
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(value) if re.fullmatch(r"[0-9]+(\.[0-9]+)? ?[A-Za-z]{0,3}", value,
                                                  re.ASCII) else 0
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"{value!r} is not a memory size; write e.g. '16GiB' or '32GB'")
    return value


def _duration(value: str) -> str:
    """A duration dask can parse (``55m``, ``2h``, ``90s``), more than 0 seconds."""
    from dask.utils import parse_timedelta

    try:
        seconds = parse_timedelta(value)
    except (ValueError, KeyError, TypeError):
        seconds = 0
    if not seconds or seconds <= 0:
        raise ValueError(f"{value!r} is not a duration; write e.g. '55m', '2h' or '90s'")
    return value


MemorySize = Annotated[str, AfterValidator(_bytes)]
#: A Dask resource name (``--resources NAME=amount,…``).
ResourceName = Annotated[str, _pattern(r"[A-Za-z_][A-Za-z0-9_.-]*", "a resource name", "GPU",
                                       64)]
Duration = Annotated[str, AfterValidator(_duration)]

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
#: Kubernetes DNS label (RFC 1123): namespaces.
DnsLabel = Annotated[str, _pattern(_DNS_LABEL, "a Kubernetes DNS label (lowercase letters, "
                                   "digits and '-', starting and ending alphanumeric)",
                                   "geoseg", 63)]
#: Kubernetes DNS subdomain (RFC 1123): claims, service accounts.
DnsSubdomain = Annotated[str, _pattern(
    rf"{_DNS_LABEL}(\.{_DNS_LABEL})*", "a Kubernetes DNS subdomain (lowercase letters, digits, "
    "'-' and '.')", "geoseg-data", 253)]
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LabelKey = Annotated[str, _pattern(
    rf"({_DNS_LABEL}(\.{_DNS_LABEL})*/)?{_LABEL_NAME}", "a Kubernetes label key ([prefix/]name)",
    "nvidia.com/gpu.product", 317)]
LabelValue = Annotated[str, _pattern(f"({_LABEL_NAME})?", "a Kubernetes label value",
                                     "NVIDIA-A100-SXM4-80GB", 63)]
_PATH_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_HOST_PART}(\.{_HOST_PART})*(:[0-9]+)?"
#: Container image reference: [registry[:port]/]path[:tag][@digest] (OCI distribution grammar).
ImageRef = Annotated[str, _pattern(
    rf"({_DOMAIN}/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*(:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    "a container image reference ([registry/]path[:tag][@digest])",
    "registry.example.org/geoseg:0.1.0", 512)]
#: A path argument of `geoseg run`: not empty, not taken for an option.
PathArg = Annotated[str, _check(lambda v: v and not v.startswith("-"),
                                "is not a path: empty, or starts with '-' (geoseg would read "
                                "it as an option); write './-name' for such a file")]


def _shell_line(line: str) -> str:
    """One complete shell line: quotes closed, no trailing backslash, no here-document."""
    try:
        shlex.split(line)
        complete = not line.rstrip().endswith("\\") and not re.search(r"(?<!<)<<(?!<)", line)
    except ValueError:
        complete = False
    if not line.strip() or not complete:
        raise ValueError(f"{line!r} is not one complete shell line (empty, an unclosed quote, "
                         "a trailing backslash or a here-document); each entry must stand alone")
    return line


#: Characters that mean shell (not just quoting) in a command line.
_SHELL_SYNTAX = re.compile(r"[$`;&|<>(){}\[\]*?~#!]")


def _argv(value: Any) -> Any:
    """A command as a list of arguments; a legacy plain string is split like a shell would,
    and refused where it needs a shell (expansions, operators, redirections, globs)."""
    if not isinstance(value, str):
        return value
    _one_line(value)  # a line break would be a second command to a shell, a space to shlex
    if bad := _SHELL_SYNTAX.search(value):
        raise ValueError(f"{value!r} needs a shell ({bad[0]!r}); give the command as a list of "
                         "arguments, e.g. [python, -m, geoseg], and put shell in cluster.job.setup")
    try:
        return shlex.split(value)
    except ValueError:
        raise ValueError(f"{value!r} has an unclosed quote; give the command as a list of "
                         "arguments, e.g. [/opt/my tools/geoseg]") from None


def _program(argv: list[str]) -> list[str]:
    if not argv or not argv[0] or argv[0].startswith("-") or re.match(r"[A-Za-z_]\w*=", argv[0]):
        raise ValueError(f"{argv!r}: the first argument must be the program (not empty, an "
                         "option or a VAR=value assignment); e.g. [geoseg] or [env, X=1, geoseg]")
    if not all(argv):
        raise ValueError(f"{argv!r} has an empty argument")
    return argv


class _Section(BaseModel):
    # an error names the field and the problem, never repeats the input (it may be a secret
    # given where none belongs, e.g. storage.options.secret)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    @field_validator("*", mode="after")
    @classmethod
    def _text_is_one_line(cls, value: Any) -> Any:
        return _one_line(value)


def _layer(name: str) -> str:
    """A GeoPackage table name geoseg may create (not one GeoPackage or SQLite reserves)."""
    problem = ""
    if name != name.strip():
        problem = "has leading or trailing spaces"
    elif len(name) > 63:
        problem = "is longer than 63 characters (PostGIS and other tools truncate names)"
    elif name.lower().startswith(("gpkg_", "rtree_", "sqlite_")):
        problem = "starts with a prefix GeoPackage/SQLite reserve (gpkg_, rtree_, sqlite_)"
    elif name.lower() == "layer_styles":
        problem = "is the table holding the QGIS style"
    if problem:
        raise ValueError(f"{name!r} {problem}; use a plain name such as 'landcover'")
    return name


class PredictConfig(_Section):
    """How a scene is cut, run through the model and stitched."""

    tile_size: Int | None = Field(
        None, gt=0, description="model input tile side in pixels (default: the bundle's for "
        "DeepLabV3+ and other whole-tile-pooling models; else at least 1024 and 4 × halo)"
    )
    halo: Int | None = Field(
        None, ge=0, description="context pixels per tile side, dropped after prediction "
        "(default: the bundle's; rounded up to the model's stride); less than tile_size / 2"
    )
    block_size: Int = Field(
        2048, gt=0, description="side of one Dask block in pixels (rounded up to a whole "
        "number of tile cores); sets memory per task"
    )
    batch_size: Int | None = Field(
        None, gt=0, description="tiles per forward pass (default: about 1 Mpx per pass, "
        "i.e. 1 tile of 1024², 4 of 512²)"
    )
    stitch: Literal["trim", "blend"] = Field(
        "trim", description="trim: keep each tile's core; blend: cosine-weighted probabilities"
    )
    device: Annotated[str, _pattern(r"auto|cpu|cuda(:[0-9]+)?", "a device (auto, cpu, cuda or "
                                    "cuda:N with N a GPU index)", "cuda:0")] = Field(
        "auto", description="auto, cpu, cuda or cuda:N (resolved on workers)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision on CUDA; CPU always runs fp32"
    )
    channels_last: bool = Field(False, description="NHWC memory format for convolutions")
    confidence: bool = Field(False, description="also write max probability (percent)")
    probabilities: bool = Field(False, description="also write per-class probabilities (percent)")

    @field_validator("halo")
    @classmethod
    def _halo_leaves_a_core(cls, halo: int | None, info: ValidationInfo) -> int | None:
        tile = info.data.get("tile_size")
        if halo is not None and tile is not None and 2 * halo >= tile:
            raise ValueError(f"{halo} leaves no core in a tile_size of {tile} (a halo on both "
                             f"sides); use halo < {-(-tile // 2)} or a larger tile_size")
        return halo


class VectorizeConfig(_Section):
    """How a mask becomes polygons (``geoseg vectorize`` and the batch run)."""

    enabled: bool = Field(True, description="write the GeoPackage in batch runs")
    min_area_m2: Number = Field(
        0.0, ge=0, description="sieve regions smaller than this into their largest neighbour, m²"
    )
    simplify_m: Number = Field(
        0.0, ge=0, description="coverage-preserving simplification tolerance, metres"
    )
    connectivity: Literal[4, 8] = Field(4, description="pixel connectivity of regions")
    layer: Annotated[str, AfterValidator(_layer)] = Field(
        "landcover", min_length=1, description="GeoPackage layer name: at most 63 characters, "
        "no leading/trailing spaces, not gpkg_*, rtree_*, sqlite_* or layer_styles")
    block_size: Int = Field(2048, ge=16, description="side of one vectorizing block, px")


class RunConfig(_Section):
    """Batch behaviour of ``geoseg run``."""

    on_error: Literal["continue", "fail"] = Field(
        "continue", description="continue: report a failed scene and go on; fail: stop there"
    )
    band_fill: Number | None = Field(
        0, description="value marking missing pixels in band files that declare no nodata "
        "(0 for Sentinel-2 and Landsat); null: every pixel is data"
    )
    quicklook_size: Int = Field(
        512, ge=64, le=4096, description="longest side of the report's quick-look pictures, px"
    )
    html: bool = Field(True, description="write report.html with quick-looks")
    stac: bool = Field(True, description="write a STAC Item per scene")
    scenes_in_flight: Int = Field(
        2, ge=1, description="scenes processed at once, each in its own client thread: the "
        "prediction of the next scene overlaps the tail work (COG with overviews, polygons, "
        "quick-looks, STAC, record) of the one before; earlier scenes' blocks go first and the "
        "report stays in scene order. Memory grows with it (geoseg inspect shows the bound). "
        "1: one scene after another (sequential)"
    )


class _BatchJobs(_Section):
    """Batch-scheduler jobs (Slurm, PBS) for worker jobs and rendered workflows."""

    account: SchedulerName | None = Field(
        None, description="account (project) charged for the jobs")
    cpus: Int = Field(4, gt=0, description="CPU cores per job")
    memory: MemorySize = Field("16GiB", description="memory per job, e.g. '16GiB' (as "
                               "dask.utils.parse_bytes reads it)")
    gpus: Int = Field(0, ge=0, description="GPUs per job (Slurm: --gres=gpu:N); worker jobs "
                      "take at most one (one worker per GPU), array tasks any number")
    walltime: TimeLimit = Field("01:00:00", description="time limit per job, [D-]HH:MM:SS")
    processes: Int = Field(1, gt=0, description="Dask worker processes per CPU worker job "
                           "(GPU worker jobs run one)")
    jobs: Int = Field(1, gt=0, description="worker jobs started by --cluster slurm|pbs")
    lifetime: Duration | None = Field(
        None, description="worker lifetime, e.g. '55m': workers retire before the job's time "
        "limit and new jobs replace them (default: walltime minus 10 %, at least 2 minutes)"
    )
    lifetime_stagger: Duration | None = Field(
        None, description="random spread of worker lifetimes so jobs do not all end at once "
        "(default: 5 % of walltime)"
    )
    directives: list[Annotated[str, _pattern(
        r"--?[A-Za-z][A-Za-z0-9_-]*([= ].*)?", "a scheduler option (-x or --name[=value])",
        "--constraint=a100")]] = Field(
        default_factory=list, description="extra scheduler directives, one option each, e.g. "
        "'--constraint=a100'")
    log_directory: Annotated[str, _pattern(_SAFE_PATH, "a folder path without spaces, quotes or "
                                           "shell characters", "logs")] = Field(
        "logs", description="folder for job logs (relative: submit dir); no spaces or quotes")
    python: Annotated[str, _pattern(_SAFE_PATH, "a path to python without spaces, quotes or "
                                    "shell characters", "/opt/geoseg/.venv/bin/python")] | None = (
        Field(None, description="Python on the compute nodes for worker jobs (default: this one)"))
    interface: Annotated[str, _pattern(r"[A-Za-z0-9_.:@-]{1,15}", "a network interface name",
                                       "ib0")] | None = Field(
        None, description="network interface Dask binds to (e.g. ib0, lo); default: hostname's"
    )


class SlurmConfig(_BatchJobs):
    """Slurm: the job-array and driver workflows, and --cluster slurm worker jobs."""

    partition: Annotated[str, _pattern(rf"{_WORD}(,{_WORD})*", "a Slurm partition list "
                                       "(names of letters, digits, '_', '.', '-', comma-"
                                       "separated)", "gpu", 256)] | None = Field(
        None, description="partition (-p) for every job")
    qos: SchedulerName | None = Field(None, description="quality of service (--qos)")
    gpu_type: SchedulerName | None = Field(
        None, description="GPU type in the gres, e.g. 'a100' → gpu:a100:N")
    array_tasks: Int = Field(4, gt=0, description="tasks of the job array: the scene list is "
                             "split into this many parts (--split I/N)")
    array_parallel: Int | None = Field(
        None, gt=0, description="at most this many array tasks run at once (%N)"
    )
    driver_walltime: TimeLimit = Field(
        "24:00:00", description="time limit of the driver job (it waits for the whole run)"
    )


class PBSConfig(_BatchJobs):
    """PBS/Torque: --cluster pbs worker jobs."""

    queue: Annotated[str, _pattern(rf"{_WORD}(@{_WORD})?", "a PBS queue (queue[@server])",
                                   "gpu")] | None = Field(None, description="queue (-q)")
    resource_spec: Annotated[str, _pattern(
        r"[A-Za-z0-9_.:=+,/@-]+", "a PBS resource spec without spaces",
        "select=1:ncpus=8:mem=32gb")] | None = Field(
        None, description="-l resource spec, e.g. 'select=1:ncpus=8:ngpus=1:mem=32gb'")


#: Kubernetes quantities: memory (bytes, with binary or decimal suffixes) and CPU (cores or m).
_K8S_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
              "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "": 1}
_K8S_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTPE]i|[kMGTPE]|)", re.ASCII)
_K8S_CPU = re.compile(r"([0-9]+(?:\.[0-9]+)?)(m?)", re.ASCII)


def _quantity(pattern: re.Pattern[str], text: str) -> tuple[float, str]:
    """``(number, unit)`` of a Kubernetes quantity matching ``pattern``."""
    m = pattern.fullmatch(text)
    if m is None:
        raise ConfigError(f"{text!r} is not a Kubernetes quantity; write e.g. '16Gi' or '8'")
    return float(m[1]), m[2]


def _positive_quantity(pattern: re.Pattern[str], example: str) -> AfterValidator:
    def check(value: str) -> str:
        m = pattern.fullmatch(value)
        if m is None or float(m[1]) <= 0:
            raise ValueError(f"{value!r} is not a positive quantity; write e.g. {example}")
        return value

    return AfterValidator(check)


class KubernetesConfig(_Section):
    """Kubernetes manifests rendered by `geoseg workflow render k8s`."""

    namespace: DnsLabel = Field("geoseg", description="namespace of every object (a DNS label)")
    image: ImageRef = Field("geoseg:0.1.0", description="container image with geoseg installed: "
                            "[registry/]path[:tag][@digest]")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="image pull policy"
    )
    workers: Int = Field(2, gt=0, description="Dask worker pods (one GPU each when gpus > 0)")
    cpu: Annotated[str, _positive_quantity(_K8S_CPU, "'8' or '3500m'")] = Field(
        "4", description="CPU request and limit per worker pod, e.g. '8' or '3500m'")
    memory: Annotated[str, _positive_quantity(_K8S_MEMORY, "'16Gi' or '500M'")] = Field(
        "16Gi", description="memory request and limit per worker pod, e.g. '16Gi'")
    gpus: Int = Field(1, ge=0, description="nvidia.com/gpu per worker pod (0: CPU workers)")
    volume_claim: DnsSubdomain | None = Field(
        "geoseg-data", description="PersistentVolumeClaim holding scenes, model and outputs, "
        "mounted at mount_path in the pods that read or write data when a job path needs it (a "
        "local input or output, or the model under mount_path). No claim is mounted when "
        "cluster.job.inputs and cluster.job.out are all object-storage URIs (s3://, gs://, "
        "az://, https://) and the model is in the image; null: never a claim (local job paths "
        "are then refused)"
    )
    mount_path: Annotated[str, _check(
        lambda v: v.startswith("/") and ".." not in v.split("/"),
        "is not an absolute path without '..'; write e.g. '/data'")] = Field(
        "/data", description="where the claim is mounted in every pod (absolute)")
    array_tasks: Int = Field(4, gt=0, description="completions of the Indexed Job "
                             "(scene list split --split I/N)")
    array_parallel: Int = Field(2, gt=0, description="Indexed Job pods running at once")
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="pod nodeSelector (label key: value)")
    service_account: DnsSubdomain | None = Field(
        None, description="service account of the pods")
    secret: DnsSubdomain | None = Field(
        None, description="name of a Secret in the namespace whose keys become environment "
        "variables (envFrom) of the pods that read and write data (workers, driver, Indexed Job; "
        "not the scheduler): the object-storage credentials, e.g. AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_ACCESS_KEY. Only the name "
        "is written into the manifests; create the Secret with kubectl (docs/cluster.md)")
    scratch_size: Annotated[str, _positive_quantity(_K8S_MEMORY, "'50Gi'")] | None = Field(
        None, description="sizeLimit of the scratch emptyDir the pods get when no claim is "
        "mounted (outputs staged before upload, Dask's local directory; TMPDIR), e.g. '50Gi'; "
        "default: no limit beyond the node's ephemeral storage")

    @property
    def memory_bytes(self) -> int:
        """Bytes in :attr:`memory` (``"16Gi"`` → 17179869184)."""
        number, unit = _quantity(_K8S_MEMORY, self.memory)
        return int(number * _K8S_UNITS[unit])

    @property
    def whole_cores(self) -> int:
        """Whole cores in :attr:`cpu` (``"7.5"`` → 7, ``"3500m"`` → 3), at least 1."""
        number, unit = _quantity(_K8S_CPU, self.cpu)
        return max(1, int(number / (1000 if unit else 1)))


class JobConfig(_Section):
    """What a rendered workflow runs: ``geoseg run INPUTS --model MODEL --out OUT --config …``.

    Paths are as the compute nodes (or pods) see them; none may start with '-'.
    """

    name: Annotated[str, _pattern(_WORD, "a job name (letters, digits, '_', '.', '-', starting "
                                  "with a letter or digit)", "geoseg", 64)] = Field(
        "geoseg", description="job name prefix; also names the rendered files (Kubernetes: "
        "lowercase letters, digits and '-', at most 50 characters)")
    inputs: list[PathArg] = Field(default_factory=lambda: ["scenes"], min_length=1,
                                  description="scene files or folders")
    model: PathArg = Field("model.safetensors", description="model bundle")
    out: PathArg = Field("out", description="output folder (one sub-folder per scene)")
    config: PathArg | None = Field(
        None, description="config file the jobs pass to geoseg (default: the rendered one)"
    )
    on_error: Literal["continue", "fail"] = Field(
        "continue", description="a failing scene is reported and skipped, or stops the job"
    )
    setup: list[Annotated[str, AfterValidator(_shell_line)]] = Field(
        default_factory=list,
        description="shell lines run first in batch jobs, e.g. 'source ~/venv/bin/activate'; "
        "each entry one complete line (quotes closed, no line breaks)",
    )
    command: Annotated[list[str], BeforeValidator(_argv), AfterValidator(_program)] = Field(
        default_factory=lambda: ["geoseg"], description="the geoseg executable on the compute "
        "nodes, as a list of arguments (e.g. [python, -m, geoseg]); each is shell-quoted in job "
        "scripts. A plain string is split like a shell would and refused if it needs a shell "
        "($, `, ;, |, &, <, >, globs, ~): put such lines in setup")


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
    workers: Int | None = Field(
        None, gt=0, description="worker processes of the local cluster (default: one per 2 "
        "cores, or one per GPU)"
    )
    threads_per_worker: Int = Field(1, gt=0, description="task threads per worker process")
    cpu_task_threads: Int = Field(
        1, ge=0, description="extra task threads of each worker of a local CPU cluster (no "
        "GPU, no cluster.resources) for CPU-only tasks (vectorize blocks): its threads_per_worker "
        "prediction slots are then a resource MODEL that every prediction task takes one of, "
        "and a free thread takes a waiting prediction before any CPU-only task, so that "
        "vectorizing scene k never holds up the prediction of scene k+1. 0: CPU-only tasks "
        "share the prediction threads"
    )
    memory_limit: str = Field("auto", description="memory limit per local worker, e.g. '4GiB'")
    allocator: Literal["auto", "jemalloc", "glibc", "system"] = Field(
        "auto", description="memory allocator of the processes that run the model: jemalloc "
        "(LD_PRELOAD libjemalloc.so.2, 1.2-2.2x faster smp models on CPU), glibc (glibc malloc "
        "told to keep its large blocks: MALLOC_MMAP_MAX_=0 MALLOC_ARENA_MAX=1, nearly as "
        "fast), system (the environment's allocator, untouched), or auto: jemalloc where the "
        "node has it, else glibc. Applies to workers of clusters "
        "geoseg starts (local, Slurm/PBS jobs) and to `--scheduler synchronous` runs"
    )
    gpus: Int | None = Field(
        None, ge=0, description="GPUs of the local cluster, one worker per GPU pinned with "
        "CUDA_VISIBLE_DEVICES (default: every visible GPU when predict.device is not cpu)"
    )
    gpu_tasks: Int = Field(
        2, ge=1, description="prediction tasks a GPU worker geoseg starts runs at once: while "
        "one runs the model, the others read, decode and normalize their blocks (each task holds "
        "its block, so memory grows with it). Local GPU workers get at least this many threads"
    )
    cpu_workers: Int | None = Field(
        None, gt=0, description="CPU-only worker processes a local cluster of GPU workers "
        "starts beside them, offering CPU=<threads>; CPU-only tasks (vectorize blocks) then "
        "take CPU=1 and never a GPU worker's slot (default: one per 4 cores the GPU workers "
        "leave, at least 1; the cores - GPUs are shared among them)"
    )
    resources: dict[ResourceName, Number] = Field(
        default_factory=dict, description="Dask resources every prediction task needs, taken "
        "as given, e.g. {GPU: 1} (one block per GPU at once) or {GPU: 0.5} (two); workers must "
        "offer them (dask worker --resources GPU=1). Default (empty): on clusters of GPU "
        "workers geoseg starts, which offer GPU=1, each task takes 1/gpu_tasks of it; no "
        "resources otherwise"
    )
    cpu_resources: dict[ResourceName, Number] = Field(
        default_factory=dict, description="Dask resources every CPU-only task (vectorize "
        "blocks) needs, taken as given, e.g. {CPU: 1} with CPU-only workers started beside the "
        "GPU workers (dask worker --resources CPU=8), so that no CPU-only task takes a GPU "
        "worker's slot. Default (empty): {CPU: 1} on a local cluster of GPU workers, which "
        "starts cpu_workers offering it; none otherwise"
    )
    allowed_failures: Int = Field(
        3, ge=0, description="worker deaths a task may cause before it fails (KilledWorker); "
        "schedulers geoseg starts only"
    )
    retries: Int = Field(1, ge=0, description="retries of a block task that raised an error")
    stall_timeout: Number | None = Field(
        900.0, gt=0, description="seconds without any finished block before a scene is failed "
        "(no worker offers the resources, lost cluster…); null: wait forever"
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    pbs: PBSConfig = Field(default_factory=PBSConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    job: JobConfig = Field(default_factory=JobConfig)


#: ``storage.options`` keys a config may set (fsspec's names, none a secret) → their type.
STORAGE_KEYS: dict[str, type] = {
    "endpoint_url": str, "region": str, "region_name": str, "profile": str, "anon": bool,
    "requester_pays": bool, "account_name": str, "project": str,
}
#: Secret ``storage.options`` keys (fsspec's names) → the environment variable(s) to use instead.
SECRET_STORAGE_KEYS: dict[str, str] = {
    "key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token":
    "AWS_SESSION_TOKEN (S3) or GOOGLE_APPLICATION_CREDENTIALS (GCS)",
    "session_token": "AWS_SESSION_TOKEN", "account_key": "AZURE_STORAGE_ACCESS_KEY",
    "sas_token": "AZURE_STORAGE_SAS_TOKEN", "connection_string":
    "AZURE_STORAGE_CONNECTION_STRING", "password": "the store's own variable",
}
#: Parts of a key name that mean a secret whatever the spelling (aws_secret_access_key…).
_SECRETISH = re.compile(r"secret|token|passw|credential|sas|connection|(^|_)key($|_)",
                        re.IGNORECASE)
_REGION = re.compile(r"[a-z]{2,}(-[a-z0-9]+)+|[a-z0-9]+", re.ASCII)


def _storage_value(key: str, value: Any) -> str:
    """Why ``value`` is not a valid ``storage.options.<key>``; '' when it is."""
    kind = STORAGE_KEYS[key]
    if not isinstance(value, kind) or (kind is str and not value):
        wanted = "true or false" if kind is bool else "a non-empty string"
        return f"{value!r} is not {wanted}"
    if kind is bool:
        return ""
    value = str(value)
    if key == "endpoint_url":
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"{value!r} is not an http(s)://host[:port] URL; write e.g. " \
                   "'https://minio.example.org:9000'"
        if parts.username or parts.password or parts.query or parts.fragment:
            return "holds credentials or a query (user:password@, ?…); give the URL alone and " \
                   "the credentials through the environment (AWS_ACCESS_KEY_ID, " \
                   "AWS_SECRET_ACCESS_KEY)"
    if key in ("region", "region_name") and not _REGION.fullmatch(value):
        return f"{value!r} is not a region name; write e.g. 'eu-central-1'"
    if key in ("profile", "account_name", "project") and not re.fullmatch(_WORD, value,
                                                                          re.ASCII):
        return f"{value!r} is not a name (letters, digits, '_', '.', '-')"
    return ""


def _storage_options(options: Any) -> Any:
    """``options`` when every key is a known non-secret fsspec option with a valid value.

    Secrets are refused (the message names the environment variable to use instead): a config
    is copied into report.json, Kubernetes ConfigMaps and shell histories. Runs before pydantic's
    own checks, so a secret is refused whatever its value's type.
    """
    if not isinstance(options, dict):
        return options  # pydantic says what it is
    for key, value in options.items():
        if key in SECRET_STORAGE_KEYS or (key not in STORAGE_KEYS and _SECRETISH.search(key)):
            where = SECRET_STORAGE_KEYS.get(key, "the store's standard variable (docs/cloud.md)")
            raise ValueError(f"{key!r} is a secret, and a config file is copied into reports and "
                             f"Kubernetes ConfigMaps: remove it and set {where} in the "
                             "environment of the processes that read and write (Kubernetes: "
                             "cluster.kubernetes.secret; docs/cloud.md)")
        if key not in STORAGE_KEYS:
            raise ValueError(f"unknown option {key!r}; known: {', '.join(STORAGE_KEYS)}")
        if problem := _storage_value(key, value):
            raise ValueError(f"{key}: {problem}")
    return options


class StorageConfig(_Section):
    """Object storage: the non-secret ``storage_options`` of fsspec (listing, writing) and
    GDAL (reading); credentials come from the environment only."""

    options: Annotated[dict[str, str | bool | int], BeforeValidator(_storage_options)] = Field(
        default_factory=dict, description="fsspec storage_options without secrets, given to "
        "fsspec and mapped onto GDAL's options (geoseg.remote.gdal_env): endpoint_url "
        "(S3-compatible store, e.g. https://minio.example.org:9000; GDAL's AWS_S3_ENDPOINT, "
        "path-style), region / region_name, profile (AWS profile name), anon (true: unsigned "
        "requests, public buckets), requester_pays, account_name (Azure), project (GCS). They "
        "win over the same settings in the environment (AWS_ENDPOINT_URL, AWS_REGION…). "
        "Secrets (key, secret, token, account_key, sas_token, connection_string, password…) "
        "are refused: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_* in the environment instead")

    @field_serializer("options")
    def _known_options(self, options: dict[str, str | bool | int]) -> dict[str, str | bool | int]:
        """Only the known non-secret keys, even after ``options`` was changed in place (which
        pydantic does not validate): a dump (report.json, ``geoseg config show``) or ``repr``
        never shows a key that could hold a secret."""
        return {k: v for k, v in options.items() if k in STORAGE_KEYS}

    def __repr_args__(self) -> Any:
        yield "options", self._known_options(self.options)

    def cloud_options(self, environ: Mapping[str, str] | None = None,
                      **base: Any) -> CloudOptions:
        """The GDAL options for reads: :attr:`options` over ``environ`` (default
        ``os.environ``); never credentials (GDAL reads those from the environment itself).

        ``**base`` goes to :func:`geoseg.remote.gdal_env.base_options` (retries, timeouts…).
        """
        from geoseg.remote.gdal_env import cloud_options

        return cloud_options(self.options, environ, **base)


class Config(_Section):
    """The whole configuration; each section mirrors a stage."""

    predict: PredictConfig = Field(default_factory=PredictConfig)
    vectorize: VectorizeConfig = Field(default_factory=VectorizeConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The text of the config file ``path``: UTF-8, no NUL bytes, at most 1 MiB.

    Raises:
        ConfigError: unreadable, too large, binary or not UTF-8 (one line naming the file).
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a config; "
                          "give a YAML file like those in configs/")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: UTF-16 text; save the config as UTF-8")
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file (NUL bytes), not a YAML config; give a YAML "
                          "file like those in configs/")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start}); save the config as UTF-8") from exc


@cache
def _loader() -> type:
    """A YAML SafeLoader that refuses a key given twice in one mapping (safe_load keeps the
    last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *base` merges are overridden on purpose
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line)
                    except TypeError:
                        continue  # an unhashable key: SafeLoader says so itself
                    if first != key_node.start_mark.line:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first on line {first + 1})",
                            key_node.start_mark)
            return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]

    return UniqueKeyLoader


def _parse_yaml(path: str | os.PathLike[str], text: str) -> Any:
    """The YAML document in ``text``; errors become one line naming the file and position."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{path}: {where}{what}; fix the YAML there") from exc
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{path}: character {exc.position}: U+{exc.character:04X} is not "
                          "allowed in YAML; remove it") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Build a :class:`Config` from an optional YAML file and nested overrides.

    Overrides win over the file; ``None`` values in overrides are ignored (unset flags).

    Raises:
        ConfigError: an unreadable, binary or non-UTF-8 file, invalid YAML (duplicate keys
            included), a top level that is not a mapping, unknown keys or invalid values (the
            field is named); always one line.
    """
    data: dict[str, Any] = {}
    if path is not None:
        loaded = _parse_yaml(path, read_config_text(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level is a {type(loaded).__name__}, not a mapping "
                              "of sections (predict:, vectorize:, run:, cluster:, storage:)")
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
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"{where}invalid config: {' '.join(problems.splitlines())}") from exc
