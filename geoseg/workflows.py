"""Cluster job definitions from a config: Slurm job array and driver, Kubernetes manifests.

Every job is the CLI plus a config plus a split index (``geoseg run … --split I/N``), so any job
can be re-run: finished scenes are skipped. The templates live in ``geoseg/templates``; the
copies in ``workflows/`` are these renderings of ``configs/slurm.yaml`` and ``configs/k8s.yaml``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Literal

from geoseg.cluster import resource_arg, worker_resources, worker_setup
from geoseg.config import Config
from geoseg.errors import ConfigError

__all__ = ["WORKFLOWS", "render_workflow", "write_workflow"]

Kind = Literal["slurm", "k8s"]

#: workflow kind → (template, file name suffix) pairs it renders.
WORKFLOWS: dict[str, tuple[tuple[str, str], ...]] = {
    "slurm": (("slurm-array.sbatch.j2", "-array.sbatch"),
              ("slurm-driver.sbatch.j2", "-driver.sbatch")),
    "k8s": (("k8s-dask.yaml.j2", "-dask.yaml"),
            ("k8s-indexed-job.yaml.j2", "-indexed-job.yaml")),
}

_TEMPLATES = Path(__file__).parent / "templates"
_K8S_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
              "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def _k8s_bytes(quantity: str) -> int:
    """Bytes in a Kubernetes memory quantity (``16Gi``, ``500M``, ``1024``)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT]|)", quantity.strip())
    if not m:
        raise ConfigError(f"cluster.kubernetes.memory {quantity!r}: expected e.g. 16Gi")
    return int(float(m.group(1)) * _K8S_UNITS[m.group(2)])


def _k8s_cores(quantity: str) -> int:
    """Whole cores in a Kubernetes CPU quantity (``"8"``, ``"7.5"``, ``"3500m"``), at least 1."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)(m?)\s*", quantity)
    if not m:
        raise ConfigError(f"cluster.kubernetes.cpu {quantity!r}: expected e.g. 8 or 3500m")
    cores = float(m.group(1)) / (1000 if m.group(2) else 1)
    return max(1, int(cores))


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


def _k8s_context(cfg: Config) -> dict[str, Any]:
    k8s = cfg.cluster.kubernetes
    name = cfg.cluster.job.name
    resources = worker_resources(cfg.cluster, gpus=k8s.gpus)
    # a GPU pod runs cluster.gpu_tasks prediction tasks at once: one reads while one computes
    threads = cfg.cluster.gpu_tasks if k8s.gpus else 1
    args = ["dask", "worker", f"tcp://{name}-scheduler:8786", "--nworkers", "1",
            "--nthreads", str(threads), "--memory-limit", str(int(_k8s_bytes(k8s.memory) * 0.9))]
    if resources:
        args += ["--resources", resource_arg(resources)]
    args += ["--local-directory", "/tmp/dask"]
    # a GPU pod's reading task decodes on the pod's cores while the other one computes
    setup_args, env = worker_setup(cfg.cluster, _k8s_cores(k8s.cpu) if k8s.gpus else 0)
    args += setup_args
    common = ""
    if k8s.service_account:
        common += f"      serviceAccountName: {k8s.service_account}\n"
    if k8s.node_selector:
        common += f"      nodeSelector: {json.dumps(k8s.node_selector, sort_keys=True)}\n"
    return {
        "k8s": k8s,
        "worker_args": ", ".join(json.dumps(a) for a in args),
        "worker_env": env,
        "pod_common": common,
        "scheduler_host": f"{name}-scheduler",
        "inputs_list": ", ".join(json.dumps(i) for i in cfg.cluster.job.inputs),
    }


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
    """
    import jinja2

    if kind not in WORKFLOWS:
        raise ConfigError(f"unknown workflow {kind!r}: choose one of {', '.join(WORKFLOWS)}")
    job = cfg.cluster.job
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    context: dict[str, Any] = {
        "name": job.name,
        "job": job,
        "cluster": cfg.cluster,
        "config_path": str(config_path),
        "job_config": job.config or str(config_path),
        "config_text": config_text.rstrip("\n"),
        "inputs": " ".join(shlex.quote(i) for i in job.inputs),
    }
    context.update(_slurm_context(cfg) if kind == "slurm" else _k8s_context(cfg))
    return {
        f"{job.name}{suffix}": env.get_template(template).render(context)
        for template, suffix in WORKFLOWS[kind]
    }


def write_workflow(files: dict[str, str], folder: str | os.PathLike[str]) -> list[Path]:
    """Write rendered files into ``folder`` (created); scripts are made executable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = folder / name
        path.write_text(text)
        if name.endswith(".sbatch"):
            path.chmod(0o755)
        written.append(path)
    return written
