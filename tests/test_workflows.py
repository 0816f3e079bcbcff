"""Rendered cluster workflows: golden files, the shipped workflows/, and real `sbatch` submissions.

Regenerate the golden files after an intended template change with
``GEOSEG_UPDATE_GOLDEN=1 pytest tests/test_workflows.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from geoseg.config import PredictConfig, load_config
from geoseg.errors import ConfigError
from geoseg.pipeline import predict_scene
from geoseg.workflows import WORKFLOWS, render_workflow

from .conftest import REPO, TINY_UNET, batch_mask, cli_env, geoseg_cli

GOLDEN = Path(__file__).parent / "golden" / "workflows"
FULL = "tests/golden/workflows/full.yaml"  # every workflow setting, as the scripts name it


def _render(kind: str, config: str) -> dict[str, str]:
    path = REPO / config
    return render_workflow(kind, load_config(path), config, path.read_text())


@pytest.mark.parametrize("kind", sorted(WORKFLOWS))
def test_golden(kind: str) -> None:
    files = _render(kind, FULL)
    for name, text in files.items():
        golden = GOLDEN / kind / name
        if os.environ.get("GEOSEG_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs: GEOSEG_UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize(("kind", "config"), [("slurm", "configs/slurm.yaml"),
                                              ("k8s", "configs/k8s.yaml")])
def test_shipped_workflows_are_renderings_of_the_presets(kind: str, config: str) -> None:
    for name, text in _render(kind, config).items():
        shipped = REPO / "workflows" / kind / name
        assert shipped.read_text() == text, (
            f"{shipped} is stale: geoseg workflow render {kind} -c {config} -o workflows/{kind}")


def test_rendered_files_parse() -> None:
    for name, text in _render("slurm", FULL).items():
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, name
    kinds = []
    for text in _render("k8s", FULL).values():
        kinds += [doc["kind"] for doc in yaml.safe_load_all(text)]
    assert sorted(kinds) == ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "Job", "Job",
                             "Service"]


def test_k8s_workers_get_one_gpu_and_the_resource() -> None:
    docs = list(yaml.safe_load_all(_render("k8s", FULL)["geoseg-full-dask.yaml"]))
    (worker,) = [d for d in docs if d["metadata"]["name"].endswith("-worker")]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    command = container["command"]
    assert command[command.index("--resources") + 1] == "GPU=1"
    assert command[command.index("--nworkers") + 1] == "1"
    # cluster.gpu_tasks (2) prediction tasks at once, the reading one decoding on every core
    assert command[command.index("--nthreads") + 1] == "2"
    assert {"name": "GDAL_NUM_THREADS", "value": "6"} in container["env"]


def test_k8s_cpu_quantities() -> None:
    def cores(cpu: str) -> int:
        k8s = load_config(None, {"cluster": {"kubernetes": {"cpu": cpu}}}).cluster.kubernetes
        return k8s.whole_cores

    assert [cores(q) for q in ("8", "7.5", "3500m", "250m")] == [8, 7, 3, 1]
    with pytest.raises(ConfigError, match="kubernetes.cpu"):
        cores("eight")


def test_cli_render(tmp_path: Path) -> None:
    done = subprocess.run([*geoseg_cli(), "workflow", "render", "slurm", "-c", FULL, "-o",
                           str(tmp_path)], cwd=REPO, env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "geoseg-full-array.sbatch"
    assert script.read_text() == (GOLDEN / "slurm" / script.name).read_text()
    assert script.stat().st_mode & stat.S_IXUSR
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  kubernetes:\n    imag: x\n")
    done = subprocess.run([*geoseg_cli(), "workflow", "render", "k8s", "-c", str(bad)],
                          env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 1 and "cluster.kubernetes.imag" in done.stderr


def test_unknown_workflow() -> None:
    with pytest.raises(ConfigError, match="unknown workflow"):
        render_workflow("pbs", load_config(None), "x.yaml", "")


# --- object storage: Kubernetes without a PersistentVolumeClaim, credentials from a Secret -------

#: A job whose inputs and output are in object storage; the model is in the image.
CLOUD = """\
storage:
  options: {endpoint_url: "https://minio.example.org:9000", region: eu-central-1}
cluster:
  kubernetes:
    namespace: eo
    secret: geoseg-s3
    scratch_size: 50Gi
    array_tasks: 3
  job:
    name: geoseg-cloud
    inputs: ["s3://eo-bucket/scenes/", "https://data.example.org/x/T32UQD_B04.tif"]
    model: /opt/geoseg/models/landcover.safetensors
    out: s3://eo-bucket/maps/
"""
#: Secret values put into the environment of the tests below; none may reach any output.
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0001", "AWS_SECRET_ACCESS_KEY":
           "wJalrXUtnFEMIexampleSECRETkey0001", "AWS_SESSION_TOKEN": "FwoGZXIvYXdzSESSIONtoken1",
           "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=azSECRETexample0001==",
           "GOOGLE_APPLICATION_CREDENTIALS": "/run/secrets/gcsSECRETpath0001.json"}


def _render_text(kind: str, text: str, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return render_workflow(kind, load_config(path), "job.yaml", text)


def _pods(files: dict[str, str]) -> dict[str, dict]:  # type: ignore[type-arg]
    """component label → pod spec of every workload in the rendered k8s ``files``."""
    pods = {}
    for text in files.values():
        for doc in yaml.safe_load_all(text):
            if doc["kind"] in ("Deployment", "Job"):
                template = doc["spec"]["template"]
                pods[template["metadata"]["labels"]["app.kubernetes.io/component"]] = \
                    template["spec"]
    return pods


def test_k8s_object_storage_job_renders_without_a_claim(tmp_path: Path) -> None:
    files = _render_text("k8s", CLOUD, tmp_path)
    assert sorted(files) == ["geoseg-cloud-dask.yaml", "geoseg-cloud-indexed-job.yaml"]
    assert not any("persistentVolumeClaim" in text for text in files.values())
    pods = _pods(files)
    assert sorted(pods) == ["array", "driver", "scheduler", "worker"]
    assert "volumes" not in pods["scheduler"]
    (scheduler,) = pods["scheduler"]["containers"]
    assert "envFrom" not in scheduler  # the scheduler reads no data: no credentials
    for component in ("worker", "driver", "array"):
        (container,) = pods[component]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "geoseg-s3"}}], component
        assert {"name": "TMPDIR", "value": "/scratch"} in container["env"], component
        assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
        assert {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}} in pods[component]["volumes"]
        assert [v for v in pods[component]["volumes"] if "persistentVolumeClaim" in v] == []
    (worker,) = pods["worker"]["containers"]
    assert worker["command"][worker["command"].index("--local-directory") + 1] == "/scratch/dask"
    assert {"name": "GDAL_NUM_THREADS", "value": "4"} in worker["env"]  # unchanged beside TMPDIR
    assert len(pods["worker"]["volumes"]) == 1  # scratch only: the config goes to the driver
    (driver,) = pods["driver"]["containers"]
    command = driver["command"]
    assert command[2:4] == ["s3://eo-bucket/scenes/", "https://data.example.org/x/T32UQD_B04.tif"]
    assert command[command.index("--out") + 1] == "s3://eo-bucket/maps/"
    assert command[command.index("--config") + 1] == "/etc/geoseg/config.yaml"
    assert {"name": "config", "configMap": {"name": "geoseg-cloud-config"}} in \
        pods["driver"]["volumes"]
    header = files["geoseg-cloud-dask.yaml"].split("apiVersion", 1)[0]
    assert "no PersistentVolumeClaim" in header and "Secret geoseg-s3" in header


def test_k8s_object_storage_manifests_round_trip(tmp_path: Path) -> None:
    """The YAML parses, dumps and parses back to the same documents; the ConfigMap holds the
    config, which loads to the config rendered (storage section included)."""
    files = _render_text("k8s", CLOUD, tmp_path)
    for name, text in files.items():
        docs = list(yaml.safe_load_all(text))
        assert list(yaml.safe_load_all(yaml.safe_dump_all(docs))) == docs, name
        (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
        again = tmp_path / f"{name}.config.yaml"
        again.write_text(config_map["data"]["config.yaml"])
        assert load_config(again) == load_config(tmp_path / "job.yaml")
        assert load_config(again).storage.options["region"] == "eu-central-1"


def test_k8s_no_scratch_limit_is_an_empty_emptydir(tmp_path: Path) -> None:
    pods = _pods(_render_text("k8s", CLOUD.replace("    scratch_size: 50Gi\n", ""), tmp_path))
    assert {"name": "scratch", "emptyDir": {}} in pods["worker"]["volumes"]


@pytest.mark.parametrize(("inputs", "out", "model", "claimed"), [
    (["s3://b/scenes/"], "s3://b/maps/", "/opt/m.safetensors", False),  # all in the store
    (["s3://b/scenes/"], "/mnt/eo/out", "/opt/m.safetensors", True),  # outputs on the claim
    (["/mnt/eo/scenes", "s3://b/x.tif"], "s3://b/maps/", "/opt/m.safetensors", True),
    (["s3://b/scenes/"], "s3://b/maps/", "/mnt/eo/models/m.safetensors", True),  # model there
    (["s3://b/scenes/"], "s3://b/maps/", "/mnt/eo", True),
    (["s3://b/scenes/"], "s3://b/maps/", "/mnt/eo2/m.safetensors", False),  # not under /mnt/eo
])
def test_k8s_mounts_the_claim_only_where_a_job_path_needs_it(
        inputs: list[str], out: str, model: str, claimed: bool, tmp_path: Path) -> None:
    text = yaml.safe_dump({"cluster": {
        "kubernetes": {"volume_claim": "eo-scenes", "mount_path": "/mnt/eo"},
        "job": {"inputs": inputs, "out": out, "model": model}}})
    files = _render_text("k8s", text, tmp_path)
    pods = _pods(files)
    for component in ("worker", "driver", "array"):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pods[component]["volumes"]
                  if "persistentVolumeClaim" in v]
        scratch = [v for v in pods[component]["volumes"] if "emptyDir" in v]
        assert (claims, bool(scratch)) == ((["eo-scenes"], False) if claimed else ([], True))
        (container,) = pods[component]["containers"]
        assert "envFrom" not in container  # no kubernetes.secret: none named
    (worker,) = pods["worker"]["containers"]
    local_dir = worker["command"][worker["command"].index("--local-directory") + 1]
    assert local_dir == ("/tmp/dask" if claimed else "/scratch/dask")


def test_k8s_secret_with_a_claim_keeps_the_claim(tmp_path: Path) -> None:
    """A mixed job (scenes in a store, outputs on the claim) takes credentials from the Secret
    and keeps today's data volume."""
    data = yaml.safe_load((REPO / "configs" / "k8s.yaml").read_text())
    data["cluster"]["kubernetes"]["secret"] = "s3-reader"
    data["cluster"]["job"]["inputs"] = ["s3://eo-bucket/scenes/"]
    pods = _pods(_render_text("k8s", yaml.safe_dump(data), tmp_path))
    for component in ("worker", "driver", "array"):
        (container,) = pods[component]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-reader"}}]
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
        assert not any(e["name"] == "TMPDIR" for e in container.get("env", []))


@pytest.mark.parametrize(("job", "key"), [
    ({"inputs": ["/data/scenes"], "out": "s3://b/maps/"}, "cluster.job.inputs[0]: '/data/scenes'"),
    ({"inputs": ["s3://b/s/", "scenes"], "out": "s3://b/m/"}, "cluster.job.inputs[1]: 'scenes'"),
    ({"inputs": ["s3://b/s/"], "out": "/data/out"}, "cluster.job.out: '/data/out'"),
    ({"inputs": ["s3://b/s/"], "out": "s3://b/m/", "model": "/data/models/m.safetensors"},
     "cluster.job.model: '/data/models/m.safetensors' is under cluster.kubernetes.mount_path"),
])
def test_k8s_without_a_claim_refuses_local_job_paths(job: dict, key: str,  # type: ignore[type-arg]
                                                     tmp_path: Path) -> None:
    job = {"model": "/opt/m.safetensors", **job}
    text = yaml.safe_dump({"cluster": {"kubernetes": {"volume_claim": None}, "job": job}})
    with pytest.raises(ConfigError) as caught:
        _render_text("k8s", text, tmp_path)
    message = str(caught.value)
    assert message.startswith(key) and "cluster.kubernetes.volume_claim" in message
    assert len(message.splitlines()) == 1
    # Slurm has no claim: the same job renders there
    assert _render_text("slurm", text, tmp_path)


def test_no_secret_value_reaches_a_rendered_file_or_config_show(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With credentials in the environment (as on a login node or in a pod) nothing geoseg
    renders or prints holds them: workflow files of both kinds, `geoseg config show`, the
    config's JSON dump; a config holding a secret is refused without repeating it."""
    from click.testing import CliRunner

    from geoseg.cli import main

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    cfg_path = tmp_path / "cloud.yaml"
    cfg_path.write_text(CLOUD)
    runner = CliRunner()
    outputs = []
    for kind in ("slurm", "k8s"):
        done = runner.invoke(main, ["workflow", "render", kind, "-c", str(cfg_path), "-o",
                                    str(tmp_path / kind)])
        assert done.exit_code == 0, done.output
        outputs += [(str(p), p.read_text()) for p in (tmp_path / kind).iterdir()]
        printed = runner.invoke(main, ["workflow", "render", kind, "-c", str(cfg_path)])
        assert printed.exit_code == 0 and "s3://eo-bucket/maps/" in printed.output
        outputs.append((f"render {kind}", printed.output))
    assert len(outputs) == 6
    shown = runner.invoke(main, ["config", "show", "-c", str(cfg_path)])
    assert shown.exit_code == 0 and "minio.example.org" in shown.output
    outputs.append(("config show", shown.output))
    cfg = load_config(cfg_path)
    outputs += [("model_dump(json)", str(cfg.model_dump(mode="json"))),
                ("model_dump", str(cfg.model_dump())), ("repr", repr(cfg))]
    # a config that names a secret is refused: nothing rendered, the value not repeated
    bad = tmp_path / "bad.yaml"
    secret = SECRETS["AWS_SECRET_ACCESS_KEY"]
    bad.write_text(CLOUD.replace("region: eu-central-1", f"region: eu-central-1, secret: {secret}"))
    refused = runner.invoke(main, ["workflow", "render", "k8s", "-c", str(bad), "-o",
                                   str(tmp_path / "bad")])
    assert refused.exit_code == 1 and "'secret' is a secret" in refused.output
    assert not (tmp_path / "bad").exists()
    outputs.append(("refused", refused.output))
    for where, text in outputs:
        for key, value in SECRETS.items():
            assert value not in text, f"{key} in {where}"


# --- real submissions to a single-node Slurm cluster ----------------------------------------------

#: This checkout's `geoseg`, put first on the PATH of the submitted jobs. Guarded like pip's
#: console scripts: a local cluster's worker processes are spawned, and re-run this file.
_SHIM = """#!{python}
from geoseg.cli import main

if __name__ == "__main__":
    main()
"""


def _scene(folder: Path, name: str, seed: int) -> Path:
    from rasterio.transform import from_origin

    from .conftest import BANDS, coherent_field

    path = folder / name
    data = (1000 + 400 * coherent_field(200, 260, seed)).clip(1, 30000).astype("uint16")
    with rasterio.open(path, "w", driver="GTiff", width=260, height=200, count=4, dtype="uint16",
                       crs="EPSG:32618", nodata=0, transform=from_origin(0.0, 0.0, 10.0, 10.0),
                       tiled=True, blockxsize=128, blockysize=128) as dst:
        dst.write(data)
        for i, band in enumerate(BANDS, start=1):
            dst.set_band_description(i, band)
    return path


def _job_setup(tmp_path: Path) -> list[str]:
    """`cluster.job.setup` lines putting this checkout's `geoseg` first in the jobs."""
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    shim = shims / "geoseg"
    shim.write_text(_SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    return [f"export PATH={shims}:$PATH", f"export PYTHONPATH={cli_env()['PYTHONPATH']}"]


def _job_config(tmp_path: Path, make_bundle, inputs: list[Path], **cluster) -> Path:  # noqa: ANN001
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "predict": {"block_size": 128, "device": "cpu"},
        "cluster": {**cluster, "job": {
            "name": "gs", "inputs": [str(i) for i in inputs],
            "model": str(make_bundle(TINY_UNET)), "out": str(tmp_path / "out"),
            "setup": _job_setup(tmp_path)}},
    }))
    return config


def _sbatch(slurm: dict[str, str], script: Path, cwd: Path) -> None:
    """Submit ``script`` and wait for all its jobs (polled: `sbatch --wait` sleeps up to 32 s).

    Slurm itself bounds the wait: the script's ``--time`` ends a job that runs too long
    (TIMEOUT), and ``--deadline`` removes one still pending when it could no longer end in time
    (DEADLINE); either fails the state check below, with the jobs' logs."""
    (cwd / "logs").mkdir(exist_ok=True)  # as the scripts say: Slurm does not create it
    job = subprocess.run(["sbatch", "--parsable", "--deadline=now+20minutes", str(script)],
                         cwd=cwd, env=slurm, check=True, capture_output=True, text=True,
                         timeout=30).stdout.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-j", job], env=slurm, capture_output=True,
                         text=True, timeout=30).stdout.strip():
        time.sleep(0.5)
    states = subprocess.run(["scontrol", "-o", "show", "job", job], env=slurm,
                            capture_output=True, text=True, timeout=30).stdout
    logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted((cwd / "logs").glob("*")))
    assert states.count("JobState=") == states.count("JobState=COMPLETED") > 0, f"{states}\n{logs}"


def _assert_same_as_local(tmp_path: Path, scenes: list[Path]) -> None:
    cfg = yaml.safe_load((tmp_path / "job.yaml").read_text())
    for scene in scenes:
        local = predict_scene(scene, cfg["cluster"]["job"]["model"],
                              tmp_path / "local" / scene.name, PredictConfig(**cfg["predict"]))
        with rasterio.open(batch_mask(tmp_path / "out", scene)) as a, \
                rasterio.open(local.outputs["mask"]) as b:
            assert np.array_equal(a.read(), b.read()), scene.name


@pytest.mark.slow
def test_sbatch_job_array(slurm, sample, tmp_path) -> None:
    """The rendered job array splits the sample scenes (the Sentinel-2 JP2 band files and a
    GeoTIFF) over two tasks, each with a local Dask cluster; the outputs are the local run's."""
    out = tmp_path / "out"
    # A worker predicting the sample with the demo model peaks near 1.7 GiB. memory_limit: Dask's
    # "auto" is the job's --mem (Slurm sets RLIMIT_RSS to it) times the job's share of the cores
    # Dask sees, which on this unbound single-node Slurm is 1 of 2: half the job's memory, and a
    # worker paused at 80 % of that never resumes.
    config = sample.config_with(tmp_path / "job.yaml", {
        "memory_limit": "3GiB",
        "slurm": {"cpus": 1, "memory": "3GiB", "walltime": "00:10:00", "array_tasks": 2,
                  "log_directory": str(tmp_path / "logs")},
        "job": {"name": "gs", "inputs": [str(i) for i in sample.inputs],
                "model": str(sample.bundle), "out": str(out), "setup": _job_setup(tmp_path)},
    })
    files = render_workflow("slurm", load_config(config), config, config.read_text())
    script = tmp_path / "gs-array.sbatch"
    script.write_text(files[script.name])
    _sbatch(slurm, script, tmp_path)
    logs = sorted((tmp_path / "logs").glob("gs-*_*.out"),
                  key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert len(logs) == 2  # one per array task
    scene_line = re.compile(r"^\[\d+/\d+\] (\S+)$")  # `geoseg run` off a terminal
    done = [{m[1] for line in log.read_text().splitlines() if (m := scene_line.match(line))}
            for log in logs]
    assert done == [{sample.names[0]}, {sample.names[1]}], [log.read_text() for log in logs]
    sample.assert_same_outputs(out)


@pytest.mark.slow
def test_sbatch_driver_job_starts_slurm_workers(slurm, make_bundle, tmp_path) -> None:
    """The driver job runs `--cluster slurm`: its Dask workers are further Slurm jobs."""
    scene = _scene(tmp_path, "one.tif", seed=7)
    config = _job_config(tmp_path, make_bundle, [scene], slurm={
        "cpus": 1, "memory": "2GiB", "walltime": "00:10:00", "driver_walltime": "00:10:00",
        "interface": "lo", "python": sys.executable, "log_directory": str(tmp_path / "logs")})
    files = render_workflow("slurm", load_config(config), config, config.read_text())
    script = tmp_path / "gs-driver.sbatch"
    script.write_text(files[script.name])
    _sbatch(slurm, script, tmp_path)
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert any(n.startswith("gs-driver-") for n in names), names
    assert any(n.startswith("gs-worker-") for n in names), names  # a worker job ran
    _assert_same_as_local(tmp_path, [scene])
