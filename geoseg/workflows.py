"""Cluster job definitions from a config: Slurm job array and driver, Kubernetes manifests.

Every job is the CLI plus a config plus a split index (``geoseg run … --split I/N``), so any job
can be re-run: finished scenes are skipped. The Slurm scripts are Jinja templates in
``geoseg/templates`` with every shell word quoted (``shlex.quote``, the command an argv list);
the Kubernetes manifests are Python dicts written by a YAML serializer under a header comment
from the templates, so no value can add a line, a key or a shell command. The config models
validate every value's format when the config is loaded; the checks here are those that need
the whole config or the rendered text. The copies in ``workflows/`` are these renderings of
``configs/slurm.yaml`` and ``configs/k8s.yaml``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from geoseg.cluster import resource_arg, worker_resources, worker_setup
from geoseg.config import Config, KubernetesConfig
from geoseg.errors import ConfigError, OutputExistsError

__all__ = ["WORKFLOWS", "data_claim", "render_workflow", "write_workflow"]

#: workflow kind → (template, file name suffix) pairs it renders (k8s: the header comments).
WORKFLOWS: dict[str, tuple[tuple[str, str], ...]] = {
    "slurm": (("slurm-array.sbatch.j2", "-array.sbatch"),
              ("slurm-driver.sbatch.j2", "-driver.sbatch")),
    "k8s": (("k8s-dask.yaml.j2", "-dask.yaml"),
            ("k8s-indexed-job.yaml.j2", "-indexed-job.yaml")),
}

_TEMPLATES = Path(__file__).parent / "templates"
#: Longest suffix geoseg adds to cluster.job.name for a Kubernetes object (63-character names).
_K8S_SUFFIX = "-array-config"
_K8S_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?", re.ASCII)
#: Bash words that are syntax, not a command, when they come first unquoted.
_RESERVED = frozenset(["case", "coproc", "do", "done", "elif", "else", "esac", "fi", "for",
                       "function", "if", "in", "select", "then", "time", "until", "while"])
_CONFIG_MOUNT = "/etc/geoseg"
#: Where pods without a data claim mount their scratch emptyDir (TMPDIR, Dask's directory).
_SCRATCH = "/scratch"


def _shell_words(argv: list[str]) -> str:
    """``argv`` as one shell command line: every word quoted where it needs it."""
    words = [shlex.quote(a) for a in argv]
    if argv and argv[0] in _RESERVED:
        words[0] = f"'{argv[0]}'"
    return " ".join(words)


def _k8s_literal(value: str) -> str:
    """``value`` with Kubernetes' ``$(VAR)`` expansion of command and env values escaped."""
    return value.replace("$", "$$")


def _slurm_context(cfg: Config) -> dict[str, Any]:
    from dask.utils import parse_bytes

    slurm = cfg.cluster.slurm
    gres = ""
    if slurm.gpus:
        gres = f"gpu:{slurm.gpu_type}:{slurm.gpus}" if slurm.gpu_type else f"gpu:{slurm.gpus}"
    return {
        "slurm": slurm,
        "gres": gres,
        "mem_mb": -(-parse_bytes(slurm.memory) // 2**20),
        "driver_time": slurm.driver_walltime,
    }


def _check_shell(name: str, text: str) -> None:
    """Refuse a rendered script bash cannot parse (only ``cluster.job.setup`` lines, shell by
    design, can make one); skipped where there is no bash."""
    bash = shutil.which("bash")
    if bash is None:
        return
    done = subprocess.run([bash, "-n"], input=text, text=True, capture_output=True, timeout=30)
    if done.returncode:
        error = " ".join(done.stderr.split())
        raise ConfigError(f"cluster.job.setup: the rendered {name} is not valid shell ({error}); "
                          "make each setup entry one complete shell command")


# --- Kubernetes manifests ----------------------------------------------------------------------


def _meta(name: str, k8s: KubernetesConfig, app: str, component: str | None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": app}
    if component:
        labels["app.kubernetes.io/component"] = component
    return {"name": name, "namespace": k8s.namespace, "labels": labels}


def _pod(k8s: KubernetesConfig, containers: list[dict[str, Any]], volumes: list[dict[str, Any]],
         restart: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"restartPolicy": restart} if restart else {}
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    if k8s.node_selector:
        spec["nodeSelector"] = dict(sorted(k8s.node_selector.items()))
    spec["containers"] = containers
    if volumes:
        spec["volumes"] = volumes
    return spec


class _Block(list):  # type: ignore[type-arg]
    """A list written one item per line (commands), whatever its items."""


def _container(k8s: KubernetesConfig, name: str, command: list[str],
               **more: Any) -> dict[str, Any]:
    return {"name": name, "image": k8s.image, "imagePullPolicy": k8s.image_pull_policy,
            "command": _Block(command), **more}


def _resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = gpus
    return {"requests": amounts, "limits": dict(amounts)}


def _under(path: str, folder: str) -> bool:
    """True when the pod path ``path`` is ``folder`` or inside it (both absolute, no '..')."""
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder if folder == "/" else f"{folder}/")


def data_claim(cfg: Config) -> str | None:
    """The PersistentVolumeClaim the data pods mount, or None when the job needs none.

    A job needs the claim when an input or the output is a local path, or when the model is
    under ``mount_path``; inputs and output all object-storage URIs, and the model elsewhere
    (in the image), need none: the pods then get a scratch ``emptyDir`` instead.

    Raises:
        ConfigError: the job needs a claim and ``cluster.kubernetes.volume_claim`` is null
            (one line naming the key, the path and what to set).
    """
    from geoseg.remote.uri import is_remote

    k8s, job = cfg.cluster.kubernetes, cfg.cluster.job
    local = [(f"cluster.job.inputs[{i}]", p) for i, p in enumerate(job.inputs)
             if not is_remote(p)]
    if not is_remote(job.out):
        local.append(("cluster.job.out", job.out))
    on_claim = not is_remote(job.model) and _under(job.model, k8s.mount_path)
    if k8s.volume_claim is None:
        if local:
            key, path = local[0]
            raise ConfigError(
                f"{key}: {path!r} is a local path, but cluster.kubernetes.volume_claim is null "
                "(no data volume in the pods); give an object-storage URI (e.g. "
                "s3://bucket/scenes/) or set cluster.kubernetes.volume_claim to the "
                "PersistentVolumeClaim holding it")
        if on_claim:
            raise ConfigError(
                f"cluster.job.model: {job.model!r} is under cluster.kubernetes.mount_path "
                f"({k8s.mount_path}), but cluster.kubernetes.volume_claim is null; set "
                "volume_claim to the claim holding the model, or put the model in the image "
                f"at a path outside {k8s.mount_path}")
        return None
    return k8s.volume_claim if local or on_claim else None


def _data_volumes(k8s: KubernetesConfig, claim: str | None,
                  config_map: str | None) -> tuple[list[Any], list[Any]]:
    """``(volumeMounts, volumes)``: the data claim (or, without one, the scratch emptyDir), and
    the config's ConfigMap when given."""
    mounts: list[Any]
    volumes: list[Any]
    if claim:
        mounts = [{"name": "data", "mountPath": k8s.mount_path}]
        volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    else:
        mounts = [{"name": "scratch", "mountPath": _SCRATCH}]
        volumes = [{"name": "scratch", "emptyDir": (
            {"sizeLimit": k8s.scratch_size} if k8s.scratch_size else {})}]
    if config_map:
        mounts.append({"name": "config", "mountPath": _CONFIG_MOUNT, "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": config_map}})
    return mounts, volumes


def _config_map(name: str, k8s: KubernetesConfig, app: str, text: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, k8s, app, None),
            "data": {"config.yaml": text.rstrip("\n") + "\n"}}


def _workload(kind: str, name: str, k8s: KubernetesConfig, app: str, component: str,
              spec: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """A Deployment or Job whose pods carry the app and component labels."""
    labels = {"app.kubernetes.io/name": app, "app.kubernetes.io/component": component}
    if kind == "Deployment":
        spec = {**spec, "selector": {"matchLabels": dict(labels)}}
    return {"apiVersion": "apps/v1" if kind == "Deployment" else "batch/v1", "kind": kind,
            "metadata": _meta(name, k8s, app, component),
            "spec": {**spec, "template": {"metadata": {"labels": labels}, "spec": pod}}}


def _data_env(k8s: KubernetesConfig, claim: str | None,
              env: list[dict[str, str]]) -> dict[str, Any]:
    """The ``env`` and ``envFrom`` of a container that reads and writes data: without a claim
    TMPDIR is the scratch emptyDir (outputs are staged there before upload); with
    ``kubernetes.secret`` every key of that Secret is a variable (only its name is written)."""
    env = [*env, *([] if claim else [{"name": "TMPDIR", "value": _SCRATCH}])]
    more: dict[str, Any] = {"env": env} if env else {}
    if k8s.secret:
        more["envFrom"] = [{"secretRef": {"name": k8s.secret}}]
    return more


def _run_args(cfg: Config) -> list[str]:
    """``geoseg run`` with the job's inputs, model and output, as Kubernetes runs it."""
    job = cfg.cluster.job
    user = [*job.command, "run", *job.inputs, "--model", job.model, "--out", job.out]
    return [*map(_k8s_literal, user), "--config", f"{_CONFIG_MOUNT}/config.yaml"]


def _dask_manifests(cfg: Config, config_text: str) -> list[dict[str, Any]]:
    """ConfigMap, scheduler Deployment and Service, worker Deployment and driver Job."""
    k8s, name = cfg.cluster.kubernetes, cfg.cluster.job.name
    scheduler = f"{name}-scheduler"
    resources = worker_resources(cfg.cluster, gpus=k8s.gpus)
    # a GPU pod runs cluster.gpu_tasks prediction tasks at once: one reads while one computes
    threads = cfg.cluster.gpu_tasks if k8s.gpus else 1
    worker = ["dask", "worker", f"tcp://{scheduler}:8786", "--nworkers", "1", "--nthreads",
              str(threads), "--memory-limit", str(int(k8s.memory_bytes * 0.9))]
    if resources:
        worker += ["--resources", resource_arg(resources)]
    claim = data_claim(cfg)
    worker += ["--local-directory", "/tmp/dask" if claim else f"{_SCRATCH}/dask"]
    # a GPU pod's reading task decodes on the pod's cores while the other one computes
    setup_args, env = worker_setup(cfg.cluster, k8s.whole_cores if k8s.gpus else 0)
    worker += setup_args
    worker_env = [{"name": key, "value": _k8s_literal(value)} for key, value in env.items()]
    data_mounts, data_volumes = _data_volumes(k8s, claim, None)
    mounts, volumes = _data_volumes(k8s, claim, f"{name}-config")
    return [
        _config_map(f"{name}-config", k8s, name, config_text),
        _workload("Deployment", scheduler, k8s, name, "scheduler", {"replicas": 1}, _pod(k8s, [
            _container(k8s, "scheduler", ["dask", "scheduler", "--port", "8786",
                                          "--dashboard-address", ":8787"],
                       env=[{"name": "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES",
                             "value": str(cfg.cluster.allowed_failures)}],
                       ports=[{"name": "tcp-comm", "containerPort": 8786},
                              {"name": "http-dashboard", "containerPort": 8787}],
                       readinessProbe={"tcpSocket": {"port": 8786}},
                       resources=_resources("1", "2Gi"))], [])),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": _meta(scheduler, k8s, name, "scheduler"),
         "spec": {"selector": {"app.kubernetes.io/name": name,
                               "app.kubernetes.io/component": "scheduler"},
                  "ports": [{"name": "tcp-comm", "port": 8786, "targetPort": 8786},
                            {"name": "http-dashboard", "port": 8787, "targetPort": 8787}]}},
        _workload("Deployment", f"{name}-worker", k8s, name, "worker", {"replicas": k8s.workers},
                  _pod(k8s, [_container(
                      k8s, "worker", worker, **_data_env(k8s, claim, worker_env),
                      resources=_resources(k8s.cpu, k8s.memory, k8s.gpus),
                      volumeMounts=data_mounts)], data_volumes)),
        _workload("Job", f"{name}-driver", k8s, name, "driver", {"backoffLimit": 2}, _pod(k8s, [
            _container(k8s, "driver", [*_run_args(cfg), "--scheduler", f"tcp://{scheduler}:8786",
                                       "--on-error", cfg.cluster.job.on_error],
                       **_data_env(k8s, claim, []), resources=_resources("1", "4Gi"),
                       volumeMounts=mounts)],
            volumes, restart="Never")),
    ]


def _indexed_job_manifests(cfg: Config, config_text: str) -> list[dict[str, Any]]:
    """ConfigMap and an Indexed Job, pod I running ``--split I/N`` with a local cluster."""
    k8s, name = cfg.cluster.kubernetes, cfg.cluster.job.name
    claim = data_claim(cfg)
    mounts, volumes = _data_volumes(k8s, claim, f"{name}-array-config")
    # Kubernetes puts the pod's index in JOB_COMPLETION_INDEX and expands $(…) in commands
    command = [*_run_args(cfg), "--cluster", "local", "--split",
               f"$(JOB_COMPLETION_INDEX)/{k8s.array_tasks}", "--on-error", cfg.cluster.job.on_error]
    return [
        _config_map(f"{name}-array-config", k8s, name, config_text),
        _workload("Job", f"{name}-array", k8s, name, "array", {
            "completionMode": "Indexed", "completions": k8s.array_tasks,
            "parallelism": k8s.array_parallel, "backoffLimit": 2 * k8s.array_tasks,
        }, _pod(k8s, [_container(k8s, "geoseg", command, **_data_env(k8s, claim, []),
                                 resources=_resources(k8s.cpu, k8s.memory, k8s.gpus),
                                 volumeMounts=mounts)], volumes, restart="Never")),
    ]


_MANIFESTS = {"-dask.yaml": _dask_manifests, "-indexed-job.yaml": _indexed_job_manifests}


def _dump_yaml(docs: list[dict[str, Any]]) -> str:
    """``docs`` as YAML documents: sequences indented under their key, commands one argument a
    line, other collections of scalars in flow style, multi-line strings as literal blocks, and
    every value quoted where YAML needs it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    def block(dumper: yaml.SafeDumper, value: _Block) -> yaml.SequenceNode:
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=False)

    Dumper.add_representer(str, text)
    Dumper.add_representer(_Block, block)
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, default_flow_style=None,
                         allow_unicode=True, width=1000)


def _check_k8s_name(name: str) -> None:
    if not _K8S_NAME.fullmatch(name) or len(name + _K8S_SUFFIX) > 63:
        raise ConfigError(
            f"cluster.job.name {name!r} cannot name Kubernetes objects: use lowercase letters, "
            f"digits and '-', starting with a letter, at most {63 - len(_K8S_SUFFIX)} "
            f"characters (e.g. 'geoseg')")


@functools.cache
def _templates() -> Any:
    """The Jinja environment of ``geoseg/templates``: made once per process, so each template
    is compiled once (its loader still notices a template file that changed)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render_workflow(
    kind: str, cfg: Config, config_path: str | os.PathLike[str], config_text: str
) -> dict[str, str]:
    """Render the job files of ``kind`` (``slurm`` or ``k8s``) for ``cfg``.

    Args:
        kind: which workflow.
        cfg: the loaded config; its ``cluster.slurm|kubernetes`` and ``cluster.job`` fill the
            templates.
        config_path: the config file as given (named in the scripts; the Slurm jobs pass
            ``cluster.job.config`` or this path to geoseg).
        config_text: the config file's text (embedded in the Kubernetes ConfigMaps).

    Returns:
        file name → text, e.g. ``{"geoseg-array.sbatch": "#!/usr/bin/env bash…"}``.

    Raises:
        ConfigError: an unknown kind, a config path with control characters, a job name that
            cannot name Kubernetes objects, a Kubernetes job with local paths and no
            ``volume_claim`` (:func:`data_claim`), or setup lines that leave a script bash cannot
            parse.
    """
    if kind not in WORKFLOWS:
        raise ConfigError(f"unknown workflow {kind!r}: choose one of {', '.join(WORKFLOWS)}")
    if not str(config_path).isprintable():
        raise ConfigError(f"config path {str(config_path)!r} holds control characters; rename "
                          "the file")
    job = cfg.cluster.job
    if kind == "k8s":
        _check_k8s_name(job.name)
    env = _templates()
    context: dict[str, Any] = {
        "name": job.name,
        "job": job,
        "cluster": cfg.cluster,
        "config_path": str(config_path),
        "job_config": job.config or str(config_path),
        "command": _shell_words(job.command),
        "inputs": " ".join(shlex.quote(i) for i in job.inputs),
    }
    if kind == "slurm":
        context.update(_slurm_context(cfg))
    else:
        context.update(k8s=cfg.cluster.kubernetes, claim=data_claim(cfg), scratch=_SCRATCH)
    files = {}
    for template, suffix in WORKFLOWS[kind]:
        name = f"{job.name}{suffix}"
        text = env.get_template(template).render(context)
        if kind == "slurm":
            _check_shell(name, text)
        else:
            text += _dump_yaml(_MANIFESTS[suffix](cfg, config_text))
        files[name] = text
    return files


def write_workflow(files: dict[str, str], folder: str | os.PathLike[str],
                   overwrite: bool = False) -> list[Path]:
    """Write rendered files into ``folder`` (created); scripts are made executable.

    Each file is written to a temporary file in ``folder`` and renamed into place, so a file is
    whole or absent, and a link at its name is replaced, never followed out of ``folder``.

    Raises:
        ConfigError: a file name that is not a plain name inside ``folder``.
        OutputExistsError: a file exists already and ``overwrite`` is false (nothing written).
    """
    folder = Path(folder)
    for name in files:
        if Path(name).name != name or name in ("", ".", "..") or name.startswith("."):
            raise ConfigError(f"workflow file name {name!r} would leave {folder}; set "
                              "cluster.job.name to a plain name such as 'geoseg'")
    existing = [str(folder / name) for name in files if os.path.lexists(folder / name)]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise OutputExistsError(f"{', '.join(existing)} {verb} already; pass --overwrite to "
                                "replace, or choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = folder / name
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.chmod(tmp, 0o755 if name.endswith(".sbatch") else 0o644)
            if overwrite:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path)
        except IsADirectoryError as exc:
            raise OutputExistsError(f"{path} is a folder; remove it or choose another "
                                    "--out") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        written.append(path)
    return written


def _link_new(tmp: str, path: Path) -> None:
    """Put ``tmp`` at ``path`` unless something is there already (atomically where the file
    system has hard links)."""
    try:
        os.link(tmp, path)
    except FileExistsError as exc:
        raise OutputExistsError(f"{path} exists already; pass --overwrite to replace it") from exc
    except OSError:  # no hard links here: check, then rename
        if os.path.lexists(path):
            raise OutputExistsError(
                f"{path} exists already; pass --overwrite to replace it") from None
        os.replace(tmp, path)
