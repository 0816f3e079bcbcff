"""The allocator of model processes: jemalloc in the workers geoseg starts and in synchronous runs.

Real processes only: a worker has jemalloc when its own ``/proc/self/maps`` maps the library.
Tests needing the library skip where it is not installed (Debian: ``apt-get install libjemalloc2``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from geoseg.allocator import (
    ENV_CHOICE,
    GLIBC_TUNING,
    MALLOC_CONF,
    REEXEC_GUARD,
    allocator_environ,
    allocator_in_use,
    find_jemalloc,
    preloaded_jemalloc,
    reexec_environ,
    release_free_memory,
    resolve_allocator,
)
from geoseg.cluster import connect
from geoseg.config import ClusterConfig, load_config
from geoseg.errors import ConfigError
from geoseg.jobqueue import jobqueue_kwargs

from .conftest import REPO, TINY_UNET, cli_env, geoseg_cli

JEMALLOC = find_jemalloc()
needs_jemalloc = pytest.mark.skipif(JEMALLOC is None, reason="libjemalloc.so.2 not installed")


def _worker_allocators(client) -> set[str | None]:
    return set(client.run(preloaded_jemalloc).values())


def test_config_names_the_bad_allocator() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.allocator: Input should be 'auto', "
                                          r"'jemalloc', 'glibc' or 'system'"):
        load_config(None, {"cluster": {"allocator": "tcmalloc"}})
    assert ClusterConfig().allocator == "auto"
    with pytest.raises(ConfigError, match="choose one of auto, jemalloc, glibc, system"):
        resolve_allocator("tcmalloc")


def test_environment_keeps_other_preloads_and_drops_jemalloc_for_glibc() -> None:
    base = {"LD_PRELOAD": "/opt/libfoo.so:/somewhere/libjemalloc.so.2 /opt/libbar.so"}
    assert allocator_environ("system", base) == {"LD_PRELOAD": "/opt/libfoo.so:/opt/libbar.so"}
    assert allocator_environ("system", {}) == {"LD_PRELOAD": ""}
    tuned = {"LD_PRELOAD": "/opt/libfoo.so:/opt/libbar.so", "MALLOC_MMAP_MAX_": "0",
             "MALLOC_ARENA_MAX": "1"}
    assert allocator_environ("glibc", base) == tuned
    mine = allocator_environ("glibc", {"MALLOC_ARENA_MAX": "4"})  # the user's is kept
    assert mine == {"LD_PRELOAD": "", "MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "4"}
    assert allocator_in_use({**tuned, "LD_PRELOAD": ""}) in ("glibc (tuned)", JEMALLOC)
    if JEMALLOC is None:
        assert allocator_environ("auto", base) == tuned
        with pytest.raises(ConfigError, match="apt-get install libjemalloc2"):
            allocator_environ("jemalloc", base)
        return
    env = allocator_environ("auto", base)
    assert env == {"LD_PRELOAD": f"{JEMALLOC}:/opt/libfoo.so:/opt/libbar.so",
                   "MALLOC_CONF": MALLOC_CONF}
    mine = allocator_environ("jemalloc", {"MALLOC_CONF": "narenas:2"})
    assert mine == {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "narenas:2"}  # the user's is kept


@needs_jemalloc
def test_reexec_environment_is_given_once() -> None:
    env = reexec_environ("auto", {"PATH": "/usr/bin"})
    assert env is not None and env[REEXEC_GUARD] == "1" and env["PATH"] == "/usr/bin"
    assert env["LD_PRELOAD"] == JEMALLOC
    assert reexec_environ("auto", env) is None  # a re-executed process never re-executes
    assert reexec_environ("system", {}) is None


def test_reexec_tunes_glibc_once() -> None:
    if preloaded_jemalloc():
        pytest.skip("this process runs under jemalloc: nothing is re-executed")
    env = reexec_environ("glibc", {"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "LD_PRELOAD": "", **GLIBC_TUNING, REEXEC_GUARD: "1"}
    assert reexec_environ("glibc", env) is None
    already = {"PATH": "/usr/bin", **GLIBC_TUNING}  # started tuned: no re-execution needed
    assert reexec_environ("glibc", already) is None


def _where_large_blocks_live() -> tuple[bool, str]:
    """Run in a task thread: is a freshly malloc-ed 64 MiB array in the brk heap (glibc kept
    it in its main arena) rather than in an mmap of its own? And what allocates here."""
    import numpy as np

    from geoseg.allocator import allocator_in_use

    block = np.empty(64 << 20, np.uint8)
    address = block.ctypes.data
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith("[heap]"):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            return start <= address < end, allocator_in_use()
    return False, allocator_in_use()


@pytest.mark.parametrize(("allocator", "in_heap"), [("glibc", True), ("system", False)])
def test_tuned_glibc_workers_keep_large_blocks(allocator: str, in_heap: bool) -> None:
    """glibc tuned for the workers serves a Dask task thread's large blocks from its one arena's
    heap (reused, never unmapped); untouched glibc maps each of them anew."""
    cfg = ClusterConfig(workers=1, allocator=allocator, memory_limit="1GiB")
    with connect(cfg, device="cpu") as client:
        heap, what = client.submit(_where_large_blocks_live, pure=False).result()
    assert heap is in_heap
    assert what == ("glibc (tuned)" if allocator == "glibc" else "system")
    assert not any(name in os.environ for name in GLIBC_TUNING)  # nothing left behind here


@needs_jemalloc
def test_local_cluster_workers_run_under_jemalloc_and_system_leaves_it_out() -> None:
    before = {k: os.environ.get(k) for k in ("LD_PRELOAD", "MALLOC_CONF")}
    with connect(ClusterConfig(workers=2), device="cpu") as client:
        assert _worker_allocators(client) == {JEMALLOC}
        confs = set(client.run(lambda: os.environ.get("MALLOC_CONF")).values())
        assert confs == {MALLOC_CONF}
        client.restart()  # the nanny respawns its worker with the same environment
        assert _worker_allocators(client) == {JEMALLOC}
    # the nannies' pre-spawn environment does not stay behind in this process
    assert {k: os.environ.get(k) for k in before} == before
    with connect(ClusterConfig(workers=1, allocator="system"), device="cpu") as client:
        assert _worker_allocators(client) == {None}


@needs_jemalloc
def test_gpu_layout_workers_run_under_jemalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    # one worker per visible GPU (pinned by CUDA_VISIBLE_DEVICES); starting one needs no GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with connect(ClusterConfig(), device="auto") as client:
        workers = client.scheduler_info()["workers"]
        # the GPU worker, and a CPU-only worker beside it for CPU tasks (cluster.cpu_workers)
        assert sorted(str(w["resources"]) for w in workers.values()) == [
            "{'CPU': 1.0}", "{'GPU': 1.0}"]
        gpu = [a for a, w in workers.items() if "GPU" in w["resources"]]
        assert [workers[a]["nthreads"] for a in gpu] == [2]  # cluster.gpu_tasks: one reads ahead
        cores = str(len(os.sched_getaffinity(0)))  # GDAL decodes a read with every core
        assert set(client.run(lambda: os.environ.get("GDAL_NUM_THREADS"),
                              workers=gpu).values()) == {cores}
        assert _worker_allocators(client) == {JEMALLOC}  # every worker, the CPU one too
        assert set(client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"),
                              workers=gpu).values()) == {"0"}
    assert "GDAL_NUM_THREADS" not in os.environ


@needs_jemalloc
def test_workers_hand_back_what_jemalloc_keeps() -> None:
    """jemalloc keeps freed pages (geoseg's MALLOC_CONF); release_free_memory returns them."""

    def freed_then_released() -> tuple[int, int, str]:
        import numpy as np

        from geoseg.allocator import release_free_memory

        def rss_mib() -> int:
            status = Path("/proc/self/status").read_text()
            return int(status.split("VmRSS:")[1].split()[0]) // 1024

        arrays = [np.ones(10_000_000) for _ in range(10)]  # 800 MB, then freed
        del arrays
        before = rss_mib()
        what = release_free_memory()
        return before, rss_mib(), what

    with connect(ClusterConfig(workers=1), device="cpu") as client:
        [(before, after, what)] = client.run(freed_then_released).values()
    assert what == "jemalloc" and before - after > 600, (before, after)
    assert release_free_memory() == ("jemalloc" if preloaded_jemalloc() else "glibc")


def test_explicit_jemalloc_fails_before_any_worker_starts_when_missing() -> None:
    if JEMALLOC is not None:
        pytest.skip("libjemalloc.so.2 is installed here")
    with pytest.raises(ConfigError, match="allocator jemalloc"), \
            connect(ClusterConfig(workers=1, allocator="jemalloc"), device="cpu"):
        pass


def test_batch_job_workers_load_the_allocator_preload() -> None:
    cfg = load_config(None, {"cluster": {"kind": "slurm", "job": {"setup": ["module load x"]}}})
    kw = jobqueue_kwargs(cfg.cluster)
    args = kw["worker_extra_args"]
    assert args[args.index("--preload-nanny") + 1] == "geoseg.allocator"
    def prologue() -> list[str]:  # without the Dask settings (test_cluster.py)
        return [line for line in jobqueue_kwargs(cfg.cluster)["job_script_prologue"]
                if not line.startswith("export DASK_")]

    assert prologue() == ["module load x"]  # auto: jemalloc if the node has it, else glibc
    cfg.cluster.allocator = "jemalloc"  # required: the nanny fails on a node without it
    assert prologue() == ["module load x", f"export {ENV_CHOICE}=jemalloc"]
    cfg.cluster.allocator = "glibc"
    assert prologue() == ["module load x", f"export {ENV_CHOICE}=glibc"]
    cfg.cluster.allocator = "system"
    assert "--preload-nanny" not in jobqueue_kwargs(cfg.cluster)["worker_extra_args"]


def _predict_synchronously(scene: Path, bundle: Path, out: Path,
                           allocator: str) -> subprocess.CompletedProcess[str]:
    """`geoseg -v predict … --scheduler synchronous --allocator ALLOCATOR`, started without any
    allocator settings in its environment."""
    env = cli_env()
    for name in ("LD_PRELOAD", "MALLOC_CONF", *GLIBC_TUNING):
        env.pop(name, None)
    return subprocess.run(
        [*geoseg_cli(), "-v", "predict", str(scene), "-m", str(bundle), "-o", str(out),
         "--scheduler", "synchronous", "--allocator", allocator],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _assert_ran_under(stderr: str, expected: str) -> None:
    line = next(x for x in stderr.splitlines() if "the model runs in this process" in x)
    if expected == "jemalloc":
        assert line.endswith(f"allocator: {JEMALLOC} (re-executed)"), line
        assert stderr.count("re-running under jemalloc") == 1
    elif expected == "glibc (tuned)":
        assert line.endswith("allocator: glibc (tuned) (re-executed)"), line
        assert stderr.count("re-running under tuned glibc") == 1
    else:
        assert line.endswith("allocator: system"), line


def test_synchronous_command_reexecutes_itself_before_reading_its_inputs(tmp_path: Path) -> None:
    """The re-execution, end to end but cheap: geoseg re-runs itself (once, same arguments)
    under what auto picks here before it opens the scene, and the re-run's exit status is the
    command's. The scene is missing, so neither process loads torch; the slow cases below run
    whole predictions."""
    done = _predict_synchronously(tmp_path / "missing.tif", tmp_path / "model.safetensors",
                                  tmp_path / "mask.tif", "auto")
    assert done.returncode == 1, done.stderr
    assert "missing.tif" in done.stderr.splitlines()[-1], done.stderr
    _assert_ran_under(done.stderr, "jemalloc" if JEMALLOC else "glibc (tuned)")


@pytest.mark.slow
@pytest.mark.parametrize(("allocator", "expected"), [
    # each case starts geoseg, which re-executes itself, and predicts (the fast tier runs the
    # re-execution of auto on a missing scene, above)
    pytest.param("auto", "jemalloc", marks=needs_jemalloc),
    pytest.param("glibc", "glibc (tuned)"),
    pytest.param("system", "system")])
def test_synchronous_command_reexecutes_itself_under_its_allocator(
    make_scene, make_bundle, tmp_path: Path, allocator: str, expected: str
) -> None:
    scene, bundle = make_scene(height=64, width=96), make_bundle(TINY_UNET)
    out = tmp_path / f"mask-{allocator}.tif"
    done = _predict_synchronously(scene, bundle, out, allocator)
    assert done.returncode == 0, done.stderr
    assert out.exists()
    _assert_ran_under(done.stderr, expected)


@pytest.mark.slow
@needs_jemalloc
def test_slurm_worker_jobs_run_under_jemalloc(slurm, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("dask_jobqueue")
    import sys

    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    cfg = load_config(None, {"cluster": {
        "kind": "slurm", "allocator": "jemalloc",
        "slurm": {"cpus": 1, "memory": "2GiB", "walltime": "00:10:00", "jobs": 1,
                  "interface": "lo", "python": sys.executable,
                  "log_directory": str(tmp_path / "logs")},
        "job": {"name": "geoseg-alloc", "setup": [f"export PYTHONPATH={cli_env()['PYTHONPATH']}"]},
    }}).cluster
    with connect(cfg, device="cpu") as client:
        client.wait_for_workers(1, timeout=180)
        assert _worker_allocators(client) == {JEMALLOC}
