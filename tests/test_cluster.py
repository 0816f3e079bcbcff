"""Cluster modes: real `dask scheduler`/`dask worker` processes, worker loss, Slurm jobs, GPU.

Every process a test starts is stopped by PID in a fixture teardown. Every cluster mode maps the
real sample scenes (the Sentinel-2 sample's JP2 band files and a synthetic GeoTIFF, fixture
``sample``) and its outputs are compared with a local run's: the same mask COG, byte for byte, and
the same GeoPackage features.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio

from geoseg.cluster import connect, task_policy
from geoseg.config import ClusterConfig, PredictConfig, load_config
from geoseg.errors import ClusterError, ConfigError
from geoseg.graph import iter_blocks, lazy_prediction
from geoseg.jobqueue import jobqueue_kwargs, parse_walltime, worker_lifetime
from geoseg.pipeline import plan_prediction, predict_scene, run_prediction
from geoseg.tasks import TaskPolicy

from .conftest import TINY_UNET, assert_same_mask, cli_env

PREDICT = PredictConfig(block_size=128)
GPU = {"GPU": 1.0}


# --- units: config → dask-jobqueue arguments, lifetimes ------------------------------------------


def test_walltime_forms() -> None:
    assert parse_walltime("30") == 1800
    assert parse_walltime("01:00:00") == 3600
    assert parse_walltime("1-02:00:00") == 93600
    assert parse_walltime("10:30") == 630
    with pytest.raises(ConfigError, match="walltime"):
        parse_walltime("an hour")


def test_worker_lifetime_ends_before_the_time_limit() -> None:
    cfg = load_config(None, {"cluster": {"slurm": {"walltime": "04:00:00"}}}).cluster
    lifetime, stagger = worker_lifetime(cfg.slurm)
    assert lifetime + stagger <= 4 * 3600 - 1440 and stagger == 720
    short = load_config(None, {"cluster": {"slurm": {"walltime": "00:02:00"}}}).cluster
    with pytest.raises(ConfigError, match="does not fit the walltime"):
        worker_lifetime(short.slurm)


def test_slurm_worker_jobs_from_config(monkeypatch) -> None:
    cfg = load_config(None, {"cluster": {"kind": "slurm", "slurm": {
        "partition": "gpu", "account": "proj", "cpus": 8, "memory": "64GiB", "gpus": 1,
        "gpu_type": "a100", "walltime": "02:00:00", "qos": "high", "jobs": 4,
        "directives": ["--constraint=ib"]}, "job": {"setup": ["module load cuda"]}}}).cluster
    kw = jobqueue_kwargs(cfg)
    assert (kw["cores"], kw["processes"], kw["memory"], kw["queue"]) == (8, 1, "64GiB", "gpu")
    assert kw["job_extra_directives"] == ["--constraint=ib", "--gres=gpu:a100:1", "--qos=high"]
    args = kw["worker_extra_args"]
    assert args[args.index("--resources") + 1] == "GPU=1"  # one GPU per worker
    assert args[args.index("--lifetime") + 1] == f"{7200 - 720 - 360}s"
    assert kw["job_script_prologue"] == [
        "module load cuda", "export GDAL_NUM_THREADS=8",
        "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False",
        "export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s",
        "export DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL=2s",
        "export DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL=250ms",
    ]
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "True")  # the user's wins
    prologue = jobqueue_kwargs(cfg)["job_script_prologue"]
    assert len(prologue) == 5 and not any("PROFILE" in line for line in prologue)
    monkeypatch.undo()
    for gpus, processes in ((2, 1), (1, 2)):  # a worker process per GPU: one-GPU jobs only
        cfg.slurm.gpus, cfg.slurm.processes = gpus, processes
        with pytest.raises(ConfigError, match="one GPU and one worker process each"):
            jobqueue_kwargs(cfg)
    cfg.slurm.gpus, cfg.slurm.processes = 0, 4  # CPU jobs: several worker processes are fine
    assert "--resources" not in jobqueue_kwargs(cfg)["worker_extra_args"]
    # a GPU worker offers its whole GPU whatever a task takes of it: {GPU: 0.5} runs two at once
    cfg.slurm.gpus, cfg.slurm.processes, cfg.resources = 1, 1, {"GPU": 0.5, "fast": 1}
    args = jobqueue_kwargs(cfg)["worker_extra_args"]
    assert args[args.index("--resources") + 1] == "GPU=1,fast=1"


def test_slurm_job_script_renders() -> None:
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    cfg = load_config(None, {"cluster": {"kind": "slurm", "slurm": {
        "gpus": 1, "cpus": 4, "memory": "8GiB", "interface": "lo"}}}).cluster
    with SLURMCluster(**jobqueue_kwargs(cfg)) as cluster:
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    assert "--lifetime" in script and "--lifetime-stagger" in script


def test_cluster_typo_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.slurm\.partiton"):
        load_config(None, {"cluster": {"slurm": {"partiton": "gpu"}}})


def test_policy_defaults() -> None:
    assert task_policy(ClusterConfig()).resources == {}
    assert task_policy(ClusterConfig(), gpu_workers=True).resources == {
        "GPU": pytest.approx(0.5)}  # two tasks a GPU
    assert task_policy(ClusterConfig(gpu_tasks=1), gpu_workers=True).resources == {
        "GPU": pytest.approx(1.0)}
    for k in range(1, 17):  # a worker offering GPU=1 fits exactly k tasks (Dask's arithmetic)
        need = task_policy(ClusterConfig(gpu_tasks=k), gpu_workers=True).resources["GPU"]
        free = 1.0
        for _ in range(k):
            assert free >= need, k
            free -= need
        assert free < need, k
    assert task_policy(ClusterConfig(resources={"GPU": 2})).resources == {"GPU": 2}


@pytest.fixture(scope="module")
def gpu_worker() -> Iterator[Any]:
    """A client of a local cluster of one worker process with 3 threads, offering GPU=1."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=3, processes=True, resources=GPU,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


@pytest.mark.parametrize("gpu_tasks", [1, 2])
def test_gpu_tasks_share_a_gpu_worker(gpu_worker, make_scene, make_bundle, tmp_path,
                                      gpu_tasks) -> None:
    """A worker offering GPU=1 runs ``gpu_tasks`` prediction tasks at once (one reads while
    another runs the model), and never more, whatever its thread count.

    Counted on the worker (tests/concurrency.py), not read off task timestamps: the first
    tasks wait there until ``gpu_tasks`` of them run, so a busy machine cannot hide the
    overlap, and the most that ever ran at once is exact."""
    from . import concurrency

    plan = plan_prediction(make_scene(height=300, width=400), make_bundle(TINY_UNET),
                           tmp_path / "m.tif", PredictConfig(block_size=64, tile_size=256))
    policy = task_policy(ClusterConfig(gpu_tasks=gpu_tasks), gpu_workers=True)
    gpu_worker.run(concurrency.install, "geoseg.graph", "predict_block", gpu_tasks)
    run_prediction(plan, gpu_worker, policy=policy)
    [(most, calls)] = gpu_worker.run(concurrency.read).values()
    assert calls == len(plan.grid) > 6
    assert most == gpu_tasks


def test_gpu_workers_take_the_memory_limit(monkeypatch) -> None:
    """A local GPU cluster gives each worker ``cluster.memory_limit``, parsed as Dask does."""
    import distributed

    from geoseg.cluster import _local_cluster

    made: dict = {}
    monkeypatch.setattr(distributed, "SpecCluster", lambda **kw: made.update(kw) or "cluster")
    assert _local_cluster(ClusterConfig(memory_limit="1GiB"), ["0", "1"]) == "cluster"
    assert [w["options"]["memory_limit"] for w in made["workers"].values()] == [2**30] * 3


def test_local_gpu_cluster_starts_cpu_workers_for_cpu_tasks(monkeypatch) -> None:
    """Beside its GPU workers a local GPU cluster starts CPU-only workers offering CPU = their
    threads, and CPU-only tasks then ask for CPU=1; without GPUs nothing changes."""
    import distributed

    import geoseg.cluster
    from geoseg.cluster import _local_cluster, cpu_worker_layout, session

    made: dict = {}
    monkeypatch.setattr(distributed, "SpecCluster", lambda **kw: made.update(kw) or "cluster")
    monkeypatch.setattr(geoseg.cluster, "available_cores", lambda: 16)
    assert cpu_worker_layout(ClusterConfig(), gpus=1) == (3, 5)  # 15 free cores, 1 per 4
    assert cpu_worker_layout(ClusterConfig(cpu_workers=1), gpus=1) == (1, 15)
    _local_cluster(ClusterConfig(cpu_workers=2), ["0"])
    workers = {name: w["options"] for name, w in made["workers"].items()}
    assert workers["gpu0"]["resources"] == {"GPU": 1}
    assert {n: (w["nthreads"], w["resources"]) for n, w in workers.items() if n != "gpu0"} == {
        "cpu0": (7, {"CPU": 7}), "cpu1": (7, {"CPU": 7})}
    assert workers["cpu0"]["env"]["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setattr(geoseg.cluster, "visible_gpus", lambda cfg, device="auto": ["0"])
    gpu = session(ClusterConfig())
    assert gpu.policy.cpu_resources == {"CPU": 1} and "GPU" in gpu.policy.resources
    assert session(ClusterConfig(), "cpu").policy.cpu_resources == {}
    assert session(ClusterConfig(scheduler="tcp://h:8786")).policy.cpu_resources == {}
    assert session(ClusterConfig(scheduler="tcp://h:8786", cpu_resources={"CPU": 2})
                   ).policy.cpu_resources == {"CPU": 2}


def test_block_tasks_carry_paths_not_pixels(make_scene, make_bundle, tmp_path) -> None:
    """The graph sent to the scheduler holds file paths and window maths, never pixels."""
    plan = plan_prediction(make_scene(height=300, width=400), make_bundle(TINY_UNET),
                           tmp_path / "m.tif", PREDICT)
    graph = dict(lazy_prediction(plan.grid, plan.job, GPU).__dask_graph__())
    sizes = [len(pickle.dumps(task)) for task in graph.values()]
    assert len(sizes) == len(plan.grid) and max(sizes) < 8000  # a block of pixels is > 100 kB


# --- a real scheduler and worker processes on 127.0.0.1 ------------------------------------------


class DaskProcesses:
    """`dask scheduler` and `dask worker` processes this test session started (stopped by PID)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        file = folder / "scheduler.json"
        self._spawn("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--no-dashboard", "--scheduler-file", str(file)])
        for _ in range(300):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.1)
        import json

        self.address = json.loads(file.read_text())["address"]
        from distributed import Client

        self.client = Client(self.address, timeout="30s")

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=log,
                                env=cli_env(), cwd=self.folder)
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str, resources: dict[str, float] | None = None) -> tuple[int, str]:
        """Start a worker (no nanny: killing its PID kills the worker); ``(pid, address)``."""
        before = set(self.client.scheduler_info()["workers"])
        args = ["distributed.cli.dask_worker", self.address, "--host", "127.0.0.1",
                "--nthreads", "1", "--name", name, "--no-nanny", "--no-dashboard",
                "--local-directory", str(self.folder / name), "--death-timeout", "60"]
        if resources:
            args += ["--resources", ",".join(f"{k}={v:g}" for k, v in resources.items())]
        proc = self._spawn(name, args)
        self.client.wait_for_workers(len(before) + 1, timeout=60)
        (address,) = set(self.client.scheduler_info()["workers"]) - before
        return proc.pid, address

    def stop(self, pid: int, sig: int = signal.SIGTERM) -> None:
        for proc in self.procs:
            if proc.pid == pid and proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def close(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            self.stop(proc.pid)


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory) -> Iterator[DaskProcesses]:
    """A scheduler and two workers, each offering GPU=1 (as on a two-GPU node)."""
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start_worker("gpu-0", GPU)
        cluster.start_worker("gpu-1", GPU)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def extra_worker(dask_processes) -> Iterator[tuple[int, str]]:
    """One more worker for one test; stopped afterwards (if the test did not kill it)."""
    started: list[int] = []

    def start(name: str, resources: dict[str, float] | None = None) -> tuple[int, str]:
        pid, address = dask_processes.start_worker(name, resources)
        started.append(pid)
        return pid, address

    yield start  # type: ignore[misc]
    for pid in started:
        dask_processes.stop(pid)
    dask_processes.client.wait_for_workers(2, timeout=30)


def _pixels(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {**src.profile, "tags": src.tags()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic scene (24 blocks) and a tiny bundle for the tests of task routing and
    failures through `predict_scene`, and its mask computed here."""
    from rasterio.transform import from_origin

    from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

    from .conftest import BANDS, coherent_field

    folder = tmp_path_factory.mktemp("ref")
    scene = folder / "scene.tif"
    data = (1000 + 400 * coherent_field(448, 704, seed=3)).clip(1, 30000).astype("uint16")
    with rasterio.open(scene, "w", driver="GTiff", width=704, height=448, count=4,
                       dtype="uint16", crs="EPSG:32618", nodata=0, tiled=True, blockxsize=256,
                       blockysize=256, transform=from_origin(420000.0, 4150000.0, 10.0, 10.0)
                       ) as dst:
        dst.write(data)
        for i, name in enumerate(BANDS, start=1):
            dst.set_band_description(i, name)
    bundle = folder / "model.safetensors"
    init_bundle(bundle, arch=TINY_UNET["arch"], encoder=TINY_UNET["encoder"],
                arch_kwargs=TINY_UNET["arch_kwargs"],
                bands=tuple(BandSpec(name=b, mean=1000.0, std=400.0) for b in BANDS),
                input_dtype="uint16",
                classes=tuple(ClassSpec(id=i, name=f"class{i}", color=(50 * i, 90, 90))
                              for i in range(5)),
                tile_size=256, halo=TINY_UNET["halo"], seed=0)
    local = folder / "local.tif"
    predict_scene(scene, bundle, local, PREDICT, client=None)
    return {"scene": scene, "bundle": bundle, "local": local}


@pytest.mark.slow
def test_existing_scheduler_matches_local_run(dask_processes, sample, tmp_path) -> None:
    """`geoseg run --scheduler` on two GPU=1 workers maps the sample as the local run does."""
    out = tmp_path / "out"
    cmd = sample.command(out, "--scheduler", dask_processes.address)
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sample.assert_same_outputs(out)
    # each worker loaded the model once, through the plugin
    plugins = dask_processes.client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert all(any(p.startswith("geoseg-model-") for p in names) for names in plugins.values())


@pytest.mark.slow
def test_resources_survive_to_the_scheduler(dask_processes, extra_worker, reference,
                                            tmp_path) -> None:
    """Prediction tasks carry GPU=1 to the scheduler: a worker without it runs none of them."""
    client = dask_processes.client
    _, plain = extra_worker("cpu-only")
    before = client.run(lambda dask_worker: dask_worker.state.executed_count)
    result = predict_scene(reference["scene"], reference["bundle"], tmp_path / "m.tif", PREDICT,
                           client=client, policy=TaskPolicy(GPU))
    after = client.run(lambda dask_worker: dask_worker.state.executed_count)
    ran = {w: after[w] - before.get(w, 0) for w in after}
    assert ran[plain] == 0
    assert sum(ran.values()) == len(result.grid)
    # and the plain worker never loaded the model
    assert client.run(lambda dask_worker: sorted(dask_worker.plugins), workers=[plain])[plain]
    assert not client.run(
        lambda: __import__("geoseg.predict").predict._CACHE, workers=[plain])[plain]
    assert_same_mask(tmp_path / "m.tif", reference["local"])


@pytest.mark.slow
def test_unsatisfiable_resources_fail_instead_of_hanging(dask_processes, reference,
                                                         tmp_path) -> None:
    client = dask_processes.client
    plan = plan_prediction(reference["scene"], reference["bundle"], tmp_path / "m.tif", PREDICT)
    array = lazy_prediction(plan.grid, plan.job, {"TPU": 1})
    blocks = iter_blocks(array, client, TaskPolicy({"TPU": 1}, 0, stall_timeout=2))
    with pytest.raises(ClusterError, match="no block finished in 2 s"):  # the stall timeout
        next(blocks)
    cfg = ClusterConfig(scheduler=dask_processes.address, resources={"TPU": 1})
    with pytest.raises(ConfigError, match="no worker of .* offers resources TPU=1"), connect(cfg):
        pass


@pytest.mark.slow
def test_failing_scene_fails_fast_and_writes_nothing(dask_processes, reference, tmp_path) -> None:
    scene = tmp_path / "scene.tif"
    scene.write_bytes(reference["scene"].read_bytes())
    plan = plan_prediction(scene, reference["bundle"], tmp_path / "m.tif", PREDICT)
    scene.write_bytes(b"not a GeoTIFF any more")  # every block task now fails to read
    # no stall timeout in this policy: only a block's own error can end the run
    with pytest.raises(Exception, match="not recognized|not a supported|scene.tif") as error:
        run_prediction(plan, dask_processes.client, policy=TaskPolicy(GPU, retries=1))
    assert not isinstance(error.value, ClusterError), error.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]  # no partial outputs


@pytest.mark.slow
def test_killed_worker_run_completes_identically(dask_processes, extra_worker, sample,
                                                 tmp_path) -> None:
    """SIGKILL a worker that is running prediction tasks: the run finishes, same outputs."""
    victim_pid, victim = extra_worker("victim", GPU)
    out = tmp_path / "out"
    cmd = sample.command(out, "--scheduler", dask_processes.address)
    run = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:  # until the victim holds a block, however long the machine takes
            busy = dask_processes.client.processing(workers=[victim]).get(victim, ())
            if any("geoseg-predict" in str(key) for key in busy):
                break
            assert run.poll() is None, "the run finished before the victim got a block"
            time.sleep(0.05)
        assert run.poll() is None
        dask_processes.stop(victim_pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr.decode()
    sample.assert_same_outputs(out)


@pytest.mark.slow
def test_started_workers_are_quiet_unless_the_user_says_otherwise() -> None:
    """Workers of a cluster geoseg starts run no statistical profiler and slower housekeeping
    (QUIET_CONFIG), except where the user's Dask config sets a key itself."""

    def housekeeping(dask_worker) -> dict:  # noqa: ANN001
        return {name: pc.callback_time for name, pc in dask_worker.periodic_callbacks.items()}

    with dask.config.set({"distributed.admin.tick.interval": "50ms"}), \
            connect(ClusterConfig(workers=1, memory_limit="1GiB")) as client:
        [worker] = client.run(housekeeping).values()
        scheduler = client.run_on_scheduler(housekeeping)
    assert "profile" not in worker and "profile-cycle" not in worker
    assert worker["memory_monitor"] == 250 and worker["monitor"] == 2000
    assert worker["tick"] == scheduler["tick"] == 50  # the user's setting
    assert dask.config.get("distributed.worker.profile.enabled") is True  # restored here


def test_task_killing_its_workers_is_reported(tmp_path) -> None:
    """A block whose task kills every worker it runs on fails the scene (KilledWorker)."""
    import dask.array as da

    def crash(block_id=None):  # noqa: ANN001
        os._exit(3)

    array = da.map_blocks(crash, chunks=((1,), (4,), (4,)), dtype=np.uint8,
                          meta=np.empty((0, 0, 0), np.uint8))
    cfg = ClusterConfig(workers=1, allowed_failures=0, memory_limit="1GiB")
    with connect(cfg) as client, pytest.raises(ClusterError, match="allowed_failures"):
        list(iter_blocks(array, client, TaskPolicy()))


# --- Slurm: Dask workers as Slurm jobs -----------------------------------------------------------


@pytest.mark.slow
def test_cluster_slurm_workers_are_jobs(slurm, sample, tmp_path) -> None:
    """`geoseg run --cluster slurm`: the Dask worker is a Slurm job; the sample maps as locally."""
    logs = tmp_path / "logs"
    # the sample's config (its resources GPU=1: every worker job offers it, so the annotations go
    # through Slurm too) plus the worker jobs; the worker peaks near 1.7 GiB, and is paused at 80 %
    config = sample.config_with(tmp_path / "slurm.yaml", {
        "slurm": {"cpus": 1, "memory": "3GiB", "walltime": "00:10:00", "jobs": 1,
                  "interface": "lo", "python": sys.executable, "log_directory": str(logs)},
        "job": {"name": "geoseg-test", "setup": [f"export PYTHONPATH={cli_env()['PYTHONPATH']}"]},
    })
    out = tmp_path / "out"
    cmd = sample.command(out, "--cluster", "slurm", config=config)
    done = subprocess.run(cmd, env=slurm, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr
    sample.assert_same_outputs(out)
    worker_logs = sorted(p.name for p in logs.iterdir())
    assert any(name.startswith("geoseg-test-worker-") for name in worker_logs), worker_logs


# --- GPU: mixed precision and channels-last agree with fp32 ---------------------------------------


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny U-Net trained (48 steps, on the GPU) on :mod:`tests.easytask`'s three classes,
    and a larger scene of the same task: ``(bundle, scene)``. A random-init model's logits are
    near-tied almost everywhere, so rounding flips many of its pixels (on an H200, bf16 agreed
    with fp32 on 99.06 % of a random tiny U-Net's pixels, on 97.4 % of a random ResNet-34
    U-Net's); a trained model's are decisive, as a user's are."""
    from geoseg.train import train_model

    from .easytask import class_map, quick_config, write_labels, write_scene

    d = tmp_path_factory.mktemp("trained")
    truth = class_map(256, 256, seed=3)
    bundle = d / "easy.safetensors"
    train_model([write_scene(d / "train.tif", truth)], [write_labels(d / "labels.tif", truth)],
                bundle, quick_config(epochs=8, steps_per_epoch=6, patience=8, device="cuda"))
    return bundle, write_scene(d / "scene.tif", class_map(1024, 1536, seed=7), seed=1)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_agrees_with_fp32(trained_bundle, tmp_path, precision) -> None:
    """bf16/fp16 autocast with channels-last gives fp32's class on >= 99.5 % of the pixels of a
    trained model (CPU bf16 autocast of the same model: 99.99 %), and the same nodata."""
    bundle, scene = trained_bundle
    fp32 = predict_scene(scene, bundle, tmp_path / "fp32.tif",
                         PredictConfig(device="cuda", block_size=512))
    mixed = predict_scene(scene, bundle, tmp_path / f"{precision}.tif",
                          PredictConfig(device="cuda", block_size=512, precision=precision,
                                        channels_last=True))
    a, _ = _pixels(fp32.outputs["mask"])
    b, _ = _pixels(mixed.outputs["mask"])
    valid = a != 255
    agreement = float((a[valid] == b[valid]).mean())
    print(f"{precision}+channels_last vs fp32: {agreement:.5%} of {valid.sum()} pixels agree")
    assert np.array_equal(a == 255, b == 255)
    assert agreement >= 0.995


def test_local_cpu_cluster_has_a_model_slot_and_a_thread_for_cpu_tasks() -> None:
    """Without GPUs, a local cluster's prediction tasks take MODEL=1 (one slot per prediction
    thread) and CPU-only tasks get a priority below every prediction; its workers have
    ``threads_per_worker`` + ``cpu_task_threads`` threads and offer MODEL=threads_per_worker.
    ``cpu_task_threads: 0``, given ``cluster.resources``, an existing scheduler or batch jobs
    keep the shared threads and unconstrained tasks."""
    from geoseg.cluster import CPU_PRIORITY, connect, model_slots, session

    cpu = session(ClusterConfig(), "cpu").policy
    assert (cpu.resources, cpu.cpu_resources, cpu.cpu_priority) == ({"MODEL": 1}, {},
                                                                     CPU_PRIORITY)
    assert CPU_PRIORITY < -10**6  # below any scene's prediction (one step per scene)
    for cfg in (ClusterConfig(cpu_task_threads=0), ClusterConfig(resources={"GPU": 1}),
                ClusterConfig(scheduler="tcp://h:8786"), ClusterConfig(kind="slurm"),
                ClusterConfig(scheduler="synchronous")):
        policy = session(cfg, "cpu").policy
        assert not model_slots(cfg) and policy.cpu_priority == 0, cfg
        assert "MODEL" not in policy.resources, cfg
    # a command without CPU-only tasks (predict, run --no-vectorize) starts no thread for them
    bare = session(ClusterConfig(), "cpu", cpu_tasks=False)
    assert bare.cfg.cpu_task_threads == 0 and "MODEL" not in bare.policy.resources
    with connect(ClusterConfig(workers=1, threads_per_worker=2, cpu_task_threads=1),
                 "cpu") as client:
        [worker] = client.scheduler_info()["workers"].values()
        assert (worker["nthreads"], worker["resources"]) == (3, {"MODEL": 2})


WARM_SCRIPT = """
import sys, threading
from distributed import Client, LocalCluster
from geoseg.config import PredictConfig
from geoseg.models.bundle import check_bundle
from geoseg.pipeline import model_ref
from geoseg.workers import VECTORIZE_IMPORTS, WORKER_IMPORTS, register_model, warm_stages

def imported(names):
    for thread in threading.enumerate():
        if thread.name == "geoseg-warm-imports":
            thread.join()
    return all(name in sys.modules for name in names)

if __name__ == "__main__":
    bundle = check_bundle(sys.argv[1])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        workers = WORKER_IMPORTS + VECTORIZE_IMPORTS["worker"]
        print(imported(("dask.array",) + VECTORIZE_IMPORTS["client"]),
              *client.run(imported, workers).values())
        register_model(client, model_ref(bundle, PredictConfig(device="cpu")))
        print(imported(("dask.array",)), *client.run(imported, WORKER_IMPORTS).values(),
              *client.run(imported, workers).values())
        warm_stages(client, vectorize=True)
        print(imported(VECTORIZE_IMPORTS["client"]), *client.run(imported, workers).values())
        cluster.scale(2)  # a worker that joins later imports them as it starts
        client.wait_for_workers(2)
        print(*client.run(imported, workers).values())
"""


def test_processes_import_their_stages_modules_before_the_first_scene(
        make_bundle, tmp_path) -> None:
    """Fresh processes lack the modules of the run's stages: the client gets its graph's while
    the workers load the model, which get their block tasks' meanwhile (not at the first
    block); :func:`warm_stages` adds vectorizing's on both sides, and on later workers."""
    bundle = make_bundle(TINY_UNET)
    done = subprocess.run([sys.executable, "-c", WARM_SCRIPT, str(bundle)], capture_output=True,
                          text=True, env=cli_env(), timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-4:] == [
        "False False", "True True False", "True True", "True True"], done.stdout
