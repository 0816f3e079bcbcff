"""Scenes in flight (``run.scenes_in_flight``): the same outputs, report and guarantees as one
scene at a time, with several scenes processed at once; CPU-only tasks kept off GPU workers.

Concurrency is counted where the work runs (how many scenes are predicting at once, which
worker ran which task prefix), never read off clocks.
"""

from __future__ import annotations

import errno
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import geoseg.batch.inflight
import geoseg.graph
import geoseg.writers
from geoseg.batch import plan_batch, run_planned
from geoseg.cli import main
from geoseg.errors import OutputError

from .conftest import BANDS, assert_same_mask, gpkg_features, write_raster
from .test_run import pixels

#: Bounds a test that is failing anyway (a barrier nobody reaches); it decides nothing.
PATIENCE = 120.0


class Recorder:
    """Batch events, recorded (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.progress_of: Counter[tuple[str, str]] = Counter()

    def scene_started(self, index: int, total: int, name: str) -> None:
        self.started.append(name)

    def progress(self, stage: str, done: int, total: int, scene: str = "") -> None:
        with self.lock:
            self.progress_of[scene, stage] += 1

    def scene_finished(self, entry: dict[str, Any]) -> None:
        self.finished.append(entry["scene"])


class ScenesPredicting:
    """Counts the scenes whose blocks are being predicted at once in this process
    (``geoseg.graph.predict_block`` wrapped). The first calls wait until ``wait_for`` scenes
    predict at once, so that a run that may overlap them does, however busy the machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wait_for: int) -> None:
        self.cond = threading.Condition()
        self.running: Counter[str] = Counter()
        self.most = 0
        inner = geoseg.graph.predict_block

        def counted(block: Any, job: Any) -> Any:
            scene = Path(job.bands[0].path).stem
            with self.cond:
                self.running[scene] += 1
                self.most = max(self.most, sum(1 for n in self.running.values() if n))
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.most >= wait_for, PATIENCE)
            try:
                return inner(block, job)
            finally:
                with self.cond:
                    self.running[scene] -= 1

        monkeypatch.setattr(geoseg.graph, "predict_block", counted)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Five small scenes, the third one broken (it fails when opened)."""
    d = tmp_path_factory.mktemp("inflight")
    for k, name in enumerate(("a", "b", "d", "e")):
        write_raster(d / f"{name}.tif", pixels(30 + k, 160, 200), names=BANDS)
    (d / "c.tif").write_bytes(b"not a tiff")
    return d


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from .test_run import tiny_bundle

    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.safetensors")


def batch(scenes: Path, bundle: Path, out: Path, in_flight: int, events: Any = None,
          **run: Any) -> tuple[Any, dict[str, Any]]:
    """``geoseg run`` through the library, synchronous scheduler; (result, report)."""
    overrides = {"run": {"scenes_in_flight": in_flight, **run},
                 "cluster": {"scheduler": "synchronous"}, "predict": {"confidence": True}}
    plan = plan_batch([scenes], bundle, out, overrides=overrides)
    result, report = run_planned(plan, events=events)
    return result, json.loads(report.read_text())


@pytest.fixture(scope="module")
def sequential(scenes, bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    return out, *batch(scenes, bundle, out, 1)


def test_in_flight_run_matches_the_sequential_run(scenes, bundle, sequential, tmp_path,
                                                  monkeypatch) -> None:
    """Three scenes predicting at once (counted), never more; masks byte-identical, the same
    polygons, entries and events in scene order, progress naming its scene."""
    ref, ref_result, ref_report = sequential
    counter = ScenesPredicting(monkeypatch, wait_for=3)
    events = Recorder()
    result, report = batch(scenes, bundle, tmp_path, 3, events)
    assert counter.most == 3  # a, b and d (c fails at once): overlapped, and no more than 3
    order = ["a", "b", "c", "d", "e"]
    assert [e["scene"] for e in result.entries] == order == events.started == events.finished
    assert [e["scene"] for e in report["scenes"]] == order
    assert [e["status"] for e in result.entries] == [e["status"] for e in ref_result.entries] \
        == ["ok", "ok", "failed", "ok", "ok"]
    assert {s for s, _ in events.progress_of} == {"a", "b", "d", "e"}
    assert {stage for _, stage in events.progress_of} == {"predict", "vectorize"}
    for name in ("a", "b", "d", "e"):
        for suffix in (".tif", ".confidence.tif"):
            assert_same_mask(ref / name / f"{name}{suffix}", tmp_path / name / f"{name}{suffix}")
        assert gpkg_features(ref / name / f"{name}.gpkg") == gpkg_features(
            tmp_path / name / f"{name}.gpkg")
    assert not (tmp_path / "c").exists() and (tmp_path / ".geoseg" / "c.failed.json").exists()
    assert not list(tmp_path.glob(".partial-*"))
    # resume: every finished scene is skipped, in flight as well
    result, report = batch(scenes, bundle, tmp_path, 3)
    assert [e["status"] for e in result.entries] == ["skipped", "skipped", "failed", "skipped",
                                                     "skipped"]


def test_sequential_run_predicts_one_scene_at_a_time(sequential, monkeypatch, scenes, bundle,
                                                     tmp_path) -> None:
    counter = ScenesPredicting(monkeypatch, wait_for=1)
    result, _ = batch(scenes, bundle, tmp_path, 1)
    assert counter.most == 1 and result.count("ok") == 4


def test_on_error_fail_starts_no_scene_after_the_failure(scenes, bundle, tmp_path) -> None:
    """With on_error: fail, no scene starts once one failed; those in flight finish and are
    reported in order; the rest stay pending, with nothing written for them."""
    events = Recorder()
    result, report = batch(scenes, bundle, tmp_path, 2, events, on_error="fail")
    statuses = [e["status"] for e in report["scenes"]]
    assert statuses.count("failed") == 1 and statuses[2] == "failed"
    after = [s for s in statuses[3:] if s != "pending"]
    assert len(after) <= 1  # only a scene already in flight (2 at once) may follow it
    assert statuses[3 + len(after):] == ["pending"] * (2 - len(after))
    assert events.finished == [e["scene"] for e in result.entries] == ["a", "b", "c",
                                                                       "d", "e"][:3 + len(after)]
    for name, status in zip("abcde", statuses, strict=True):
        assert (tmp_path / name).exists() == (status == "ok"), name
    assert not list(tmp_path.glob(".partial-*"))


class Interrupting(Recorder):
    """Events that stop the run: Ctrl-C after the first scene is reported, or a full disk
    while scene ``full`` writes."""

    def __init__(self, full: str | None = None) -> None:
        super().__init__()
        self.full = full

    def progress(self, stage: str, done: int, total: int, scene: str = "") -> None:
        super().progress(stage, done, total, scene)
        if scene == self.full:
            raise OSError(errno.ENOSPC, "No space left on device")

    def scene_finished(self, entry: dict[str, Any]) -> None:
        super().scene_finished(entry)
        if self.full is None:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OutputError])
def test_stopping_keeps_finished_scenes_and_leaves_nothing_partial(
        scenes, bundle, sequential, tmp_path, stop) -> None:
    """Ctrl-C (in the run's thread) or a full output disk (in a scene's thread) stops every
    scene in flight; finished scenes stay complete, nothing partial remains under a final name
    or as a staging folder, and a re-run completes the batch identically."""
    ref = sequential[0]
    events = Interrupting(full="b" if stop is OutputError else None)
    with pytest.raises(stop):
        batch(scenes, bundle, tmp_path, 3, events)
    assert not list(tmp_path.glob(".partial-*"))
    done = {p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert done <= {"a", "b", "d", "e"}
    if stop is KeyboardInterrupt:  # after a was reported: those finished by then are kept
        assert "a" in done and events.finished[0] == "a"
    else:  # b stopped at its first block, and the others with it
        assert "b" not in done and "b" not in events.finished
    written = tmp_path / "report.json"  # after each reported scene: none if none was
    assert written.exists() == bool(events.finished)
    report = {e["scene"]: e["status"] for e in json.loads(written.read_text())["scenes"]
              } if events.finished else {}  # entries, and what the disk held
    assert set(events.finished) <= {n for n, status in report.items() if status != "pending"}
    assert {n for n, status in report.items() if status == "ok"} <= done
    for name in done:
        assert json.loads((tmp_path / name / "scene.json").read_text())["status"] == "ok"
    result, _ = batch(scenes, bundle, tmp_path, 3)
    assert [e["status"] for e in result.entries] == [
        "skipped" if n in done else ("failed" if n == "c" else "ok") for n in "abcde"]
    for name in ("a", "b", "d", "e"):
        assert_same_mask(ref / name / f"{name}.tif", tmp_path / name / f"{name}.tif")


class FreedSlot(Recorder):
    """Scene b ends while the run's thread is reporting a, after d took a's slot: b's blocks
    wait until a is reported, and a's report until b's thread has returned its entry
    (:meth:`watch` marks that). Then d's blocks wait until e starts in b's slot, which a run
    noticing b's end only at d's would never do (d gives up after ``patience``: the test
    fails)."""

    def __init__(self, patience: float) -> None:
        super().__init__()
        self.patience = patience
        self.a_reported, self.b_ended, self.e_started = (threading.Event() for _ in range(3))
        self.d_waited_alone = False

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Set ``b_ended`` as scene b's thread returns its entry (``_Batch.scene`` wrapped)."""
        inner = geoseg.batch.inflight._Batch.scene

        def scene(batch: Any, k: int, source: Any) -> dict[str, Any]:
            entry = inner(batch, k, source)
            if source.name == "b":
                self.b_ended.set()
            return entry

        monkeypatch.setattr(geoseg.batch.inflight._Batch, "scene", scene)

    def scene_started(self, index: int, total: int, name: str) -> None:
        super().scene_started(index, total, name)
        if name == "e":
            self.e_started.set()

    def progress(self, stage: str, done: int, total: int, scene: str = "") -> None:
        super().progress(stage, done, total, scene)
        if scene == "b":
            self.a_reported.wait(PATIENCE)
        elif scene == "d" and not self.d_waited_alone and not self.e_started.wait(self.patience):
            self.d_waited_alone = True

    def scene_finished(self, entry: dict[str, Any]) -> None:
        super().scene_finished(entry)
        if entry["scene"] == "a":
            self.a_reported.set()
            self.b_ended.wait(PATIENCE)


def test_a_scene_ending_while_another_is_reported_frees_its_slot_at_once(
        scenes, bundle, tmp_path, monkeypatch) -> None:
    """A scene that ends while the run's thread is busy (starting a scene, reporting one) hands
    its slot to the next scene right away: with 2 in flight, e starts while d runs."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in "abde":
        (inputs / f"{name}.tif").symlink_to(scenes / f"{name}.tif")
    events = FreedSlot(patience=60.0)
    events.watch(monkeypatch)
    result, _ = batch(inputs, bundle, tmp_path / "out", 2, events)
    assert result.count("ok") == 4 and events.finished == list("abde")
    assert not events.d_waited_alone, "e started only after d ended: b's slot stayed empty"


def test_splits_with_scenes_in_flight(scenes, bundle, tmp_path) -> None:
    runner = CliRunner()
    for split, code, statuses in (("1/2", 0, ["pending", "ok", "pending", "ok", "pending"]),
                                  ("0/2", 3, ["ok", "ok", "failed", "ok", "ok"])):  # c fails
        result = runner.invoke(main, ["run", str(scenes), "-m", str(bundle), "-o", str(tmp_path),
                                      "--scheduler", "synchronous", "--no-vectorize",
                                      "--scenes-in-flight", "2", "--split", split])
        assert result.exit_code == code, result.output
        report = json.loads((tmp_path / "report.json").read_text())
        assert [e["status"] for e in report["scenes"]] == statuses


def test_inspect_shows_the_memory_bound_of_scenes_in_flight(scenes, bundle) -> None:
    runner = CliRunner()
    rows = {}
    for n in (1, 3):
        result = runner.invoke(main, ["inspect", str(scenes), "-m", str(bundle), "--json",
                                      "--scenes-in-flight", str(n)])
        assert result.exit_code == 0, result.output
        rows[n] = json.loads(result.output)["memory"]
    one, three = rows[1], rows[3]
    assert (one["scenes_in_flight"], three["scenes_in_flight"]) == (1, 3)
    assert one["per_scene_client_mib"] == three["per_scene_client_mib"] > 0
    assert three["client_mib"] - one["client_mib"] == pytest.approx(
        2 * one["per_scene_client_mib"], abs=2)


def test_scenes_in_flight_is_checked() -> None:
    result = CliRunner().invoke(main, ["config", "show", "--scenes-in-flight", "0"])
    assert result.exit_code == 2 and "scenes-in-flight" in result.output
    result = CliRunner().invoke(main, ["config", "show", "--scenes-in-flight", "4"])
    assert result.exit_code == 0 and "scenes_in_flight: 4" in result.output


# --- a real distributed cluster: one worker offering GPU=1, one offering CPU=1 --------------------


@pytest.fixture(scope="module")
def gpu_and_cpu_workers() -> Iterator[tuple[Any, dict[str, str]]]:
    """A scheduler with two worker threads of this process: ``gpu`` offering GPU=1 (two task
    slots) and ``cpu`` offering CPU=1. Yields the cluster and worker address → name."""
    from distributed import Client, SpecCluster, Worker

    workers = {
        "gpu": {"cls": Worker, "options": {"nthreads": 2, "resources": {"GPU": 1}}},
        "cpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"CPU": 1}}},
    }
    with SpecCluster(workers=workers, scheduler={"cls": _scheduler(), "options": {
            "dashboard_address": ":0"}}, name="fake-gpu") as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        yield cluster, names


def _scheduler() -> type:
    from distributed import Scheduler

    return Scheduler


class WhereTasksRan:
    """A scheduler plugin: (task prefix, worker address) → tasks finished there."""

    name = "where-tasks-ran"

    def __init__(self) -> None:
        self.ran: Counter[tuple[str, str]] = Counter()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        from dask.utils import key_split

        if start == "processing" and finish == "memory":
            self.ran[key_split(key), kwargs.get("worker", "?")] += 1


def test_cpu_tasks_avoid_gpu_workers_and_scenes_overlap(gpu_and_cpu_workers, scenes, bundle,
                                                        sequential, tmp_path, monkeypatch) -> None:
    """Prediction tasks run on the GPU worker only, every vectorize task on the CPU worker only
    (counted by a scheduler plugin); scene b's blocks are predicted while scene a's mask is
    being converted to a COG (counted where the conversion runs), and the masks are the
    sequential run's."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    cluster, names = gpu_and_cpu_workers
    address = cluster.scheduler_address
    plugin = type("Plugin", (WhereTasksRan, SchedulerPlugin), {})()
    cluster.scheduler.add_plugin(plugin)  # the scheduler runs in this process
    overlap = threading.Condition()
    predicted: Counter[str] = Counter()
    seen_during_commit: list[int] = []
    inner_predict = geoseg.graph.predict_block
    inner_commit = geoseg.writers.StreamingCOGWriter.commit

    def predict(block: Any, job: Any) -> Any:
        out = inner_predict(block, job)
        with overlap:
            predicted[Path(job.bands[0].path).stem] += 1
            overlap.notify_all()
        return out

    def commit(self: Any) -> Path:
        if self.path.name == "a.tif":  # scene a's tail: waits for scene b to be predicting
            with overlap:
                overlap.wait_for(lambda: predicted["b"] > 0, PATIENCE)
                seen_during_commit.append(predicted["b"])
        return inner_commit(self)

    monkeypatch.setattr(geoseg.graph, "predict_block", predict)
    monkeypatch.setattr(geoseg.writers.StreamingCOGWriter, "commit", commit)
    overrides = {"run": {"scenes_in_flight": 2},
                 "cluster": {"scheduler": address, "resources": {"GPU": 0.5},
                             "cpu_resources": {"CPU": 1}}}
    plan = plan_batch([scenes / "a.tif", scenes / "b.tif"], bundle, tmp_path,
                      overrides=overrides)
    try:
        result, _ = run_planned(plan)
    finally:
        cluster.scheduler.remove_plugin(name=plugin.name)
    assert [e["status"] for e in result.entries] == ["ok", "ok"]
    assert seen_during_commit and seen_during_commit[0] > 0
    ran = Counter()
    for (prefix, worker), n in plugin.ran.items():
        ran[prefix, names.get(worker, worker)] += n
    gpu_side = {"geoseg-predict", "built_align"}  # key_split drops the underscore
    assert ran["geoseg-predict", "gpu"] > 0 and ran["polygonize_task", "cpu"] > 0, ran
    misplaced = {(p, w): n for (p, w), n in ran.items()
                 if (p in gpu_side) != (w == "gpu") and p != "register-model"}
    assert not misplaced, misplaced
    for name in "ab":  # the same masks as the sequential run in this process
        assert_same_mask(sequential[0] / name / f"{name}.tif", tmp_path / name / f"{name}.tif")


# --- a local CPU cluster as geoseg starts it: one prediction slot (MODEL=1) + a vectorize thread --

#: What the worker side of :class:`ModelSlotWatch` counted (in the worker process).
_WATCH: dict[str, int] = {}
_WATCH_COND = threading.Condition()
#: Task prefixes of prediction (and its model check), as ``key_split`` writes them.
PREDICT_SIDE = {"geoseg-predict", "built_align"}


class ModelSlotWatch:
    """A worker plugin (mixed with ``WorkerPlugin`` where used) counting, from the worker's own
    task transitions: predictions executing at once (``most``), CPU-only tasks started while a
    prediction executed (``beside``) and CPU-only tasks started while a prediction was
    waiting for a thread with the model slot free (``took_the_slot``: must stay 0)."""

    name = "model-slot-watch"

    def setup(self, worker: Any) -> None:
        self.worker = worker
        with _WATCH_COND:
            _WATCH.update(running=0, most=0, predicted=0, cpu=0, beside=0, took_the_slot=0)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        from dask.utils import key_split

        prefix = key_split(key)
        with _WATCH_COND:
            if prefix == "geoseg-predict" and start == "executing":
                _WATCH["running"] -= 1
            if finish != "executing":
                return
            if prefix == "geoseg-predict":
                _WATCH["running"] += 1
                _WATCH["predicted"] += 1
                _WATCH["most"] = max(_WATCH["most"], _WATCH["running"])
            elif prefix not in PREDICT_SIDE:
                _WATCH["cpu"] += 1
                if _WATCH["running"]:
                    _WATCH["beside"] += 1
                elif any(key_split(ts.key) == "geoseg-predict"
                         and ts.state in ("ready", "constrained")
                         for ts in self.worker.state.tasks.values()):
                    _WATCH["took_the_slot"] += 1
            _WATCH_COND.notify_all()


def _make_scenes_overlap() -> None:
    """In a worker: make one scene's polygons and the other scene's prediction overlap, in
    whichever order the two scene threads submit them, however fast or busy the machine is
    (each wait ends after :data:`PATIENCE` s at most).

    The prediction of the second scene to predict, once executing, waits until a CPU-only task
    has started beside it; polygon blocks wait until that second prediction has started, so
    that the first scene's cannot all finish before it is submitted (a slow scene thread on a
    busy machine). On a worker whose only thread predicts, neither can happen: the waits time
    out and ``beside`` stays 0."""
    import geoseg.vectorize.blocks as blocks

    predict, polygonize = geoseg.graph.predict_block, blocks.polygonize_task
    scenes: list[str] = []  # scenes in the order their first block predicted

    def held_prediction(block: Any, job: Any) -> Any:
        with _WATCH_COND:
            name = Path(job.bands[0].path).stem
            if name not in scenes:
                scenes.append(name)
            _WATCH_COND.notify_all()
            if scenes.index(name) == 1:
                _WATCH_COND.wait_for(lambda: _WATCH.get("beside", 0) > 0, PATIENCE)
        return predict(block, job)

    def held_polygons(task: Any) -> Any:
        with _WATCH_COND:
            _WATCH["polygon_blocks"] = _WATCH.get("polygon_blocks", 0) + 1  # the hold is in place
            _WATCH_COND.wait_for(lambda: len(scenes) >= 2, PATIENCE)
        return polygonize(task)

    geoseg.graph.predict_block = held_prediction
    blocks.polygonize_task = held_polygons


def _watched() -> dict[str, int]:
    with _WATCH_COND:
        return dict(_WATCH)


def test_cpu_cluster_vectorizes_beside_its_one_prediction_slot(scenes, bundle, sequential,
                                                               tmp_path) -> None:
    """On the local CPU cluster geoseg starts (one worker: one prediction slot, MODEL=1, and a
    thread for CPU-only tasks), one scene's vectorize blocks run while the other is predicting
    (held so on the worker, :func:`_make_scenes_overlap`: a worker whose only thread predicts
    could never do it), never two predictions at once, and no CPU-only task ever started
    while a prediction waited with the slot free. Counted from the worker's transitions;
    masks and polygons are the sequential run's."""
    from distributed.diagnostics.plugin import WorkerPlugin

    workers: list[dict[str, Any]] = []
    clients: list[Any] = []
    watched: list[dict[str, int]] = []

    def on_client(client: Any) -> None:
        clients.append(client)
        client.register_plugin(type("Watch", (ModelSlotWatch, WorkerPlugin), {})())
        client.run(_make_scenes_overlap)
        workers.extend(client.scheduler_info()["workers"].values())

    class Reading(Recorder):
        def scene_finished(self, entry: dict[str, Any]) -> None:
            super().scene_finished(entry)
            if len(self.finished) == 2:  # before the cluster goes
                watched.extend(clients[0].run(_watched).values())

    overrides = {"run": {"scenes_in_flight": 2}, "predict": {"confidence": True},
                 "cluster": {"workers": 1}, "vectorize": {"block_size": 64}}
    plan = plan_batch([scenes / "a.tif", scenes / "b.tif"], bundle, tmp_path,
                      overrides=overrides)
    result, _ = run_planned(plan, on_client=on_client, events=Reading())
    assert [e["status"] for e in result.entries] == ["ok", "ok"]
    [counts] = watched
    assert counts["predicted"] >= 2 and counts["cpu"] > 0, counts
    assert counts.get("polygon_blocks", 0) > 0, counts  # the polygon blocks went through the hold
    assert counts["beside"] > 0, counts  # a's polygons were made while b predicted
    assert counts["most"] == 1, counts  # one prediction at a time: torch has the cores
    assert counts["took_the_slot"] == 0, counts
    assert [(w["nthreads"], w["resources"]) for w in workers] == [(2, {"MODEL": 1})]
    for name in "ab":
        assert_same_mask(sequential[0] / name / f"{name}.tif", tmp_path / name / f"{name}.tif")
        assert gpkg_features(tmp_path / name / f"{name}.gpkg") == \
            gpkg_features(sequential[0] / name / f"{name}.gpkg")
