"""Keeping the GPU fed: a batch of scenes, one after another against several in flight.

    python -m benchmarks.batch [--quick] [--scenes 8] [--size 2048] [--in-flight N]
                               [--rate 200] [--skip-cpu-model] [--skip-simulated] [--work DIR]
                               [--device cuda --skip-simulated] [--gpu-tasks N]
                               [--no-vectorize] [--name NAME]

Every row runs ``--scenes`` synthetic 4-band uint16 DEFLATE tiled GeoTIFFs of ``--size``² (as
:mod:`benchmarks.memory` writes them; the same pixels in every file) through geoseg's own path,
:func:`geoseg.batch.plan_batch` + :func:`geoseg.batch.run_planned` (what ``geoseg run`` calls:
mask COG, vectorize, quick-looks, STAC, record), with the shipped demo bundle
(``models/s2-demo-landcover.safetensors``), on a fresh local cluster started by geoseg with its
defaults, in a fresh client process. "In flight" is ``run.scenes_in_flight``; a geoseg without
that key runs only the sequential rows (the others are recorded as skipped).

Rows:

1. **CPU model**: the real model on CPU, sequential (``scenes_in_flight`` 1) and in flight (N).
   With ``--device cuda`` these rows run the model on the GPU (the rows keep their name).
2. **Simulated accelerator**: the same, with a benchmark-only "device" on every worker (a
   :class:`distributed.WorkerPlugin` that replaces the model geoseg's worker cache hands to block
   tasks; production code untouched). Its forward pass sleeps ``pixels / R`` seconds (no CPU, as
   a GPU) and returns one-hot logits of a fixed pattern: classes from thresholds of the
   normalized first band, pixel by pixel, so the mask does not depend on the tiling and
   vectorizing has real polygons. Sequential, in flight, and **CPU-stage limit**: in flight with
   R = infinity (no sleep at all): read, decode, normalize, the COG, vectorize, the report.

Columns: ``wall`` is the whole ``run_planned`` call (cluster start and model load included);
``span`` runs from the first scene started to the last scene finished (the batch itself);
Mpx/s count scene pixels over the span. ``predict busy`` is the share of the span during which
at least one prediction task (key prefix ``geoseg-predict-``, :mod:`geoseg.graph`) was running,
the union of their compute intervals from the scheduler's task stream
(``client.get_task_stream``); ``to last predict`` the same up to the end of the last prediction
(the last scene's tail can overlap no prediction: a batch of 8 cannot reach 100 %); ``wall
busy`` the same over the wall time; ``device busy`` (simulated rows) the union of the simulated
forward passes, whose sleep and pattern seconds (the pattern costs CPU a GPU would not spend)
are summed apart. ``cores busy`` is the CPU time of the client process
(scheduler and nannies included) and the workers over the span, ÷ (span × cores);
``CPU-bound Mpx/s`` = cores × Mpx ÷ that CPU time: what the row's work would reach with every
core busy (for the CPU-stage limit row, a second, stricter limit). Targets (issue 19):
predict busy ≥ 95 % and wall no worse than sequential (CPU model); in flight ≥ 0.8 × the
CPU-stage limit and ≥ 1.5 × sequential (simulated). Results go to
``benchmarks/results/batch.json`` and ``batch.md`` (``batch-quick.*`` with ``--quick``), headed
by the machine, the geoseg commit and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from benchmarks.cores import core_scaling
from benchmarks.memory import DEMO_BUNDLE, REPO, RESULTS, machine, process_memory, write_scene

#: Key prefix of geoseg's prediction (block) tasks (geoseg.graph.lazy_prediction).
PREDICT_PREFIX = "geoseg-predict-"
#: Default simulated accelerator rate, Mpx/s: a 1 Gpx/s GPU scaled to 2 cores of a 16-core node.
DEFAULT_RATE = 200.0
#: Class thresholds on the normalized first band for the simulated pattern (7 demo classes).
THRESHOLDS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0)


def busy_fraction(intervals: Iterable[tuple[float, float]], start: float, stop: float) -> float:
    """Share of ``[start, stop]`` (seconds) covered by the union of ``intervals``.

    Args:
        intervals: ``(start, stop)`` pairs, any order, may overlap.
        start, stop: the window, ``stop > start``.

    Returns:
        A fraction in ``[0, 1]``.
    """
    if stop <= start:
        raise ValueError(f"empty window [{start}, {stop}]: stop must be after start")
    covered, reach = 0.0, start
    for a, b in sorted((max(a, start), min(b, stop)) for a, b in intervals):
        if b <= reach:
            continue
        covered += b - max(a, reach)
        reach = b
    return covered / (stop - start)


# --- the simulated accelerator (worker side) -----------------------------------------------------

#: ``(start, end of sleep, stop, pixels)`` of every simulated forward pass in this process.
DEVICE_LOG: list[tuple[float, float, float, int]] = []


def sleeping_module(rate_mpx_s: float, n_classes: int) -> Any:
    """A torch module standing in for an accelerator: ``(N, C, H, W)`` float32 normalized
    input → ``(N, n_classes, H, W)`` float32 one-hot logits, class = number of
    :data:`THRESHOLDS` below band 0; sleeps ``N·H·W / (rate_mpx_s · 1e6)`` s (none at
    ``inf``) and logs each call in :data:`DEVICE_LOG`."""
    import torch

    class SleepingDevice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("cuts", torch.tensor(THRESHOLDS[: n_classes - 1]))
            self.register_buffer("ids", torch.arange(n_classes).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            start = time.time()
            n, _, h, w = x.shape
            if math.isfinite(rate_mpx_s):
                time.sleep(n * h * w / (rate_mpx_s * 1e6))
            slept = time.time()
            classes = torch.bucketize(x[:, :1].contiguous(), self.cuts)
            out = (classes == self.ids).to(torch.float32)
            DEVICE_LOG.append((start, slept, time.time(), n * h * w))
            return out

    return SleepingDevice().eval()


def key_prefix(key: Any) -> str:
    """A task key's name without its token or chunk index: ``('geoseg-predict-ab12', 0, 1, 2)``
    → ``geoseg-predict``."""
    from dask.utils import key_split

    return str(key_split(key))


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far, all its threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def device_log() -> list[tuple[float, float, float, int]]:
    """This worker's simulated forward passes (for ``client.run``)."""
    return list(DEVICE_LOG)


class SimulatedDevice(WorkerPlugin):
    """Makes every block task of a worker run :func:`sleeping_module` instead of the bundle's
    model: it replaces :func:`geoseg.predict.get_model` in the worker, which is where block
    tasks find their model (the bundle is still loaded and checked by geoseg as usual, with the
    real ``get_model`` that :mod:`geoseg.workers` imported)."""

    name = "benchmark-simulated-device"

    def __init__(self, rate_mpx_s: float, n_classes: int) -> None:
        self.rate, self.n_classes = rate_mpx_s, n_classes

    def setup(self, worker: Any) -> None:
        import torch

        import geoseg.predict as predict
        import geoseg.workers  # noqa: F401  (binds the real get_model: its model check runs it)

        loaded = predict._Loaded(sleeping_module(self.rate, self.n_classes), torch.device("cpu"))
        predict.get_model = lambda ref: loaded  # type: ignore[assignment]


# --- one row, in a fresh client process ---------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec['scenes']`` through geoseg's batch path; return times and busy fractions."""
    # the worker side by reference to this module, not pickled by value from __main__
    from benchmarks.batch import SimulatedDevice, cpu_seconds, device_log
    from geoseg.batch import plan_batch, run_planned
    from geoseg.batch.runner import QuietEvents

    clients: list[Any] = []
    todo = len(spec["scenes"])
    rate = None if spec["rate"] is None else float(spec["rate"])  # "inf": no sleep

    class Events(QuietEvents):
        first: float | None = None
        last: float | None = None
        entries: list[dict[str, Any]] = []
        stream: list[dict[str, Any]] = []
        device: dict[str, list[tuple[float, float, float, int]]] = {}
        workers: dict[str, dict[str, Any]] = {}
        threads: dict[str, int] = {}

        cpu_first: float = 0.0
        cpu_last: float = 0.0

        def scene_started(self, index: int, total: int, name: str) -> None:
            if self.first is None:
                self.cpu_first = cpu_seconds() + sum(clients[0].run(cpu_seconds).values())
                self.first = time.time()

        def scene_finished(self, entry: dict[str, Any]) -> None:
            self.entries.append(entry)
            if len(self.entries) == todo:  # the batch is done: read the cluster before it goes
                self.last = time.time()
                self.cpu_last = cpu_seconds() + sum(clients[0].run(cpu_seconds).values())
                self.stream = clients[0].get_task_stream(start=begin)
                if rate is not None:
                    self.device = clients[0].run(device_log)
                self.workers = clients[0].run(process_memory)
                self.threads = {a: w["nthreads"] for a, w in
                                clients[0].scheduler_info()["workers"].items()}

    def on_client(client: Any) -> None:
        clients.append(client)
        client.get_task_stream(start=0, stop=0)  # the scheduler records from now on
        if rate is not None:
            client.register_plugin(SimulatedDevice(rate, spec["classes"]))

    overrides: dict[str, dict[str, Any]] = {"predict": {"device": spec["device"]}}
    if not spec["vectorize"]:
        overrides["vectorize"] = {"enabled": False}
    if spec.get("gpu_tasks"):
        overrides["cluster"] = {"gpu_tasks": spec["gpu_tasks"]}
    if rate is not None and spec.get("threads"):
        # the GPU worker's layout: cluster.gpu_tasks task threads, one decoding a block while
        # another waits on the device (a CPU worker has one thread: the model takes its cores)
        overrides.setdefault("cluster", {})["threads_per_worker"] = spec["threads"]
    if spec["in_flight"] is not None:
        overrides["run"] = {"scenes_in_flight": spec["in_flight"]}
    plan = plan_batch(spec["scenes"], spec["bundle"], spec["out"], None, overrides)
    events = Events()
    begin = time.time()
    run_planned(plan, overwrite=True, events=events, on_client=on_client)
    end = time.time()
    failed = [e for e in events.entries if e["status"] != "ok"]
    if failed or events.first is None or events.last is None:
        raise RuntimeError(f"scenes failed: {[(e['scene'], e.get('error')) for e in failed]}")
    predict = [(s["start"], s["stop"]) for t in events.stream if PREDICT_PREFIX in str(t["key"])
               for s in t["startstops"] if s["action"] == "compute"]
    calls = [c for log in events.device.values() for c in log]
    by_prefix: dict[str, list[tuple[float, float]]] = {}
    for t in events.stream:
        prefix = key_prefix(t["key"])
        by_prefix.setdefault(prefix, []).extend(
            (s["start"], s["stop"]) for s in t["startstops"] if s["action"] == "compute")
    span = events.last - events.first
    cpu = events.cpu_last - events.cpu_first
    cores = len(os.sched_getaffinity(0))
    mpx = sum(e["size"][0] * e["size"][1] for e in events.entries) / 1e6
    row = {
        "wall_s": round(end - begin, 2),
        "span_s": round(span, 2),
        "scenes": len(events.entries),
        "mpx": round(mpx, 1),
        "mpx_s": round(mpx / span, 2),
        "cpu_s": round(cpu, 1),
        "cores_busy": round(cpu / (span * cores), 3),
        "cpu_bound_mpx_s": round(mpx / cpu * cores, 2),
        "predict_tasks": len(predict),
        # every task prefix's share of the span: what else held the workers' threads
        "task_busy": {k: round(busy_fraction(v, events.first, events.last), 4)
                      for k, v in sorted(by_prefix.items()) if v},
        "any_task_busy": round(busy_fraction([i for v in by_prefix.values() for i in v],
                                             events.first, events.last), 4),
        "predict_busy": round(busy_fraction(predict, events.first, events.last), 4),
        "wall_busy": round(busy_fraction(predict, begin, end), 4),
        # the last scene's tail (its COG, polygons, report) can overlap no prediction
        "steady_busy": round(busy_fraction(predict, events.first,
                                           max(b for _, b in predict)), 4) if predict else None,
        "stage_s": {k: round(sum(e["timings_s"].get(k, 0.0) for e in events.entries), 1)
                    for k in ("open", "predict", "vectorize", "report", "total")},
        "blocks": sum(e["blocks"] for e in events.entries),
        "tiles": sum(e["tiles"] for e in events.entries),
    }
    row["workers"] = [{"threads": events.threads.get(a), **w}
                      for a, w in sorted(events.workers.items())]
    if rate is not None:
        row["device_busy"] = round(busy_fraction([(a, c) for a, _, c, _ in calls],
                                                 events.first, events.last), 4)
        row["device_sleep_s"] = round(sum(b - a for a, b, _, _ in calls), 2)
        row["device_pattern_s"] = round(sum(c - b for _, b, c, _ in calls), 2)
        row["device_calls"] = len(calls)
        row["device_mpx"] = round(sum(p for *_, p in calls) / 1e6, 1)
    return row


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`child` in a fresh process (so no cluster, cache or peak carries over)."""
    cmd = [sys.executable, "-m", "benchmarks.batch", "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))  # workers import benchmarks
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"row {spec['label']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run -----------------------------------------------------------------------------------


def in_flight_default() -> int | None:
    """geoseg's default ``run.scenes_in_flight`` if above 1, else 2; None when this geoseg has
    no such key (then only sequential rows can run)."""
    from geoseg.config import RunConfig

    field = RunConfig.model_fields.get("scenes_in_flight")
    if field is None:
        return None
    default = field.default
    return default if isinstance(default, int) and default > 1 else 2


def plan_rows(args: argparse.Namespace, n: int | None) -> list[dict[str, Any]]:
    """The rows to run: ``(section, variant, rate, in_flight)`` as dicts; ``skip`` says why a
    row cannot run here."""
    seq = 1 if n is not None else None  # a geoseg without the key is sequential by itself
    rows = []
    if not args.skip_cpu_model:
        rows += [("cpu model", "sequential", None, seq), ("cpu model", "in flight", None, n)]
    if not args.skip_simulated:
        rows += [("simulated", "sequential", args.rate, seq),
                 ("simulated", "in flight", args.rate, n),
                 ("simulated", "CPU-stage limit", "inf", n or seq)]
    out = []
    for section, variant, rate, flight in rows:
        skip = (variant == "in flight" and flight is None)
        out.append({"section": section, "variant": variant, "rate": rate,
                    "in_flight": flight,
                    "skip": "run.scenes_in_flight is not in this geoseg" if skip else None})
    return out


#: Row figures a repeated row reports as the median of its repetitions.
MEDIAN_KEYS = ("wall_s", "span_s", "mpx_s", "cpu_bound_mpx_s", "predict_busy", "steady_busy",
               "cores_busy")


def median_row(rows: list[dict[str, Any]], section: str, variant: str) -> dict[str, Any] | None:
    """The row ``section``/``variant`` with :data:`MEDIAN_KEYS` replaced by their medians over
    its repetitions (``--repeat``); None when no repetition ran."""
    import statistics

    runs = [r for r in rows if r["section"] == section and r["variant"] == variant
            and "span_s" in r]
    if not runs:
        return None
    return {**runs[0], **{k: round(statistics.median(r[k] for r in runs), 4)
                          for k in MEDIAN_KEYS}, "repeats": len(runs)}


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The issue's figures from the rows, each row the median of its repetitions (None where
    a row is missing)."""
    def get(section: str, variant: str) -> dict[str, Any] | None:
        return median_row(rows, section, variant)

    cs, cf = get("cpu model", "sequential"), get("cpu model", "in flight")
    ss, sf, lim = (get("simulated", v) for v in ("sequential", "in flight", "CPU-stage limit"))
    div = lambda a, b, k: round(a[k] / b[k], 3) if a and b else None  # noqa: E731
    return {"cpu_wall_in_flight_over_sequential": div(cf, cs, "wall_s"),
            "cpu_span_in_flight_over_sequential": div(cf, cs, "span_s"),
            "sim_in_flight_over_cpu_limit": div(sf, lim, "mpx_s"),
            "sim_in_flight_over_sequential": div(sf, ss, "mpx_s"),
            "sim_sequential_over_cpu_limit": div(ss, lim, "mpx_s"),
            "sim_in_flight_over_cpu_bound": round(sf["mpx_s"] / lim["cpu_bound_mpx_s"], 3)
            if sf and lim else None,
            # the most any overlap of sequential's stages could gain on this machine
            "sim_cpu_limit_over_sequential": div(lim, ss, "mpx_s")}


def rows_by(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """``section/variant`` (and ``… steady``) → the median predict-busy fractions."""
    out: dict[str, float | None] = {}
    for r in rows:
        m = median_row(rows, r["section"], r["variant"])
        out[f"{r['section']}/{r['variant']}"] = m["predict_busy"] if m else None
        out[f"{r['section']}/{r['variant']} steady"] = m["steady_busy"] if m else None
    return out


def write_results(out: dict[str, Any], name: str) -> None:
    """``<name>.json`` and a Markdown table ``<name>.md`` under ``benchmarks/results``."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    pct = lambda v: "" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    lines = [f"Machine: {out['machine']}; load average {out['load_before']} before, "
             f"{out['load_after']} after{out['busy_note']}.", "",
             f"Command: `{out['command']}` at geoseg {out['geoseg_commit']}. {out['setup']}", "",
             "| section | variant | in flight | R Mpx/s | wall s | span s | Mpx/s (span) | "
             "predict busy (span) | (to last predict) | (wall) | device busy (sleep / pattern s) "
             "| predict / vectorize / report s (sum) | cores busy | CPU-bound Mpx/s | "
             "workers × threads |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        flight = r["in_flight"] or ("n/a" if r.get("skip") else "1 (no key)")
        run = f" (run {r['repeat']})" if out.get("repeat", 1) > 1 else ""
        head = (f"| {r['section']} | {r['variant']}{run} | {flight} | "
                f"{r['rate'] or ''} |")
        if r.get("skip"):
            lines.append(f"{head} skipped: {r['skip']} |||||||||||")
            continue
        st = r["stage_s"]
        device = (f"{pct(r['device_busy'])} ({r['device_sleep_s']} / {r['device_pattern_s']})"
                  if "device_busy" in r else "")
        lines.append(
            f"{head} {r['wall_s']} | {r['span_s']} | {r['mpx_s']} | {pct(r['predict_busy'])} | "
            f"{pct(r['steady_busy'])} | {pct(r['wall_busy'])} | {device} | {st['predict']} / "
            f"{st['vectorize']} / {st['report']} | {pct(r['cores_busy'])} | "
            f"{r['cpu_bound_mpx_s']} | {len(r['workers'])} × "
            f"{r['workers'][0]['threads']} |")
    rt = out["ratios"]
    fmt = lambda v: "n/a" if v is None else v  # noqa: E731
    by = out["rows_by"]
    medians = (f", each the median of {out['repeat']} interleaved runs"
               if out.get("repeat", 1) > 1 else "")
    lines += ["", f"Figures (computed{medians}; targets from issue 19):", "",
              f"* CPU model, predict busy in flight: {pct(by.get('cpu model/in flight'))} "
              f"(target ≥ 95 %), {pct(by.get('cpu model/in flight steady'))} up to the last "
              f"prediction; sequential {pct(by.get('cpu model/sequential'))}, "
              f"{pct(by.get('cpu model/sequential steady'))}.",
              f"* CPU model, wall in flight / sequential: "
              f"{fmt(rt['cpu_wall_in_flight_over_sequential'])} (target ≤ 1).",
              f"* Simulated, in flight / CPU-stage limit: "
              f"{fmt(rt['sim_in_flight_over_cpu_limit'])} (target ≥ 0.8); sequential / limit "
              f"{fmt(rt['sim_sequential_over_cpu_limit'])}; in flight / the limit row's "
              f"CPU-bound Mpx/s (every core on CPU stages): "
              f"{fmt(rt['sim_in_flight_over_cpu_bound'])}.",
              f"* Simulated, in flight / sequential: {fmt(rt['sim_in_flight_over_sequential'])} "
              f"(target ≥ 1.5); the CPU-stage limit / sequential, the ceiling of that ratio on "
              f"this machine: {fmt(rt.get('sim_cpu_limit_over_sequential'))}."]
    if out.get("core_scaling"):
        cs = out["core_scaling"]
        lines += [f"* Core scaling (`benchmarks/cores.py`: DEFLATE + numpy work in one process, "
                  f"then in {cs['before']['processes']} at once; {cs['before']['processes']}.0 "
                  f"on independent cores): {cs['before']['scaling']} before the rows, "
                  f"{cs['after']['scaling']} after. Overlapping stages gains at most that many "
                  "cores' worth of work."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def make_scenes(work: Path, count: int, size: int) -> list[str]:
    """``count`` copies of one synthetic scene of ``size``² under ``work/scenes``."""
    folder = work / f"scenes-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "scene00.tif"
    if not first.exists():
        write_scene(first, size)
    paths = [first]
    for k in range(1, count):
        path = folder / f"scene{k:02d}.tif"
        if not path.exists():
            shutil.copyfile(first, path)
        paths.append(path)
    return [str(p) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke configuration: 3 scenes of 1024² (results: batch-quick.*)")
    parser.add_argument("--scenes", type=int, default=None, help="scenes per row (default 8)")
    parser.add_argument("--size", type=int, default=None, help="scene side, px (default 2048)")
    parser.add_argument("--in-flight", type=int, default=None,
                        help="scenes in flight (default: geoseg's default if above 1, else 2)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help="simulated accelerator rate, Mpx/s (default 200)")
    parser.add_argument("--sim-threads", type=int, default=None,
                        help="task threads of the worker in the simulated rows (default: "
                        "cluster.gpu_tasks, as geoseg starts a GPU worker)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every row this many times, interleaved; figures are medians")
    parser.add_argument("--skip-cpu-model", action="store_true", help="no real-model rows")
    parser.add_argument("--skip-simulated", action="store_true", help="no simulated rows")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep scenes and outputs here (default: a temporary folder)")
    parser.add_argument("--device", default="cpu",
                        help="the model rows' device (default cpu; cuda on a GPU machine, where "
                        "the CPU model rows run the demo model on the GPU: use --skip-simulated)")
    parser.add_argument("--gpu-tasks", type=int, default=None,
                        help="cluster.gpu_tasks with --device cuda (default: geoseg's, 2)")
    parser.add_argument("--no-vectorize", action="store_true",
                        help="masks only (run --no-vectorize), e.g. where pyogrio is missing")
    parser.add_argument("--name", default=None,
                        help="results file stem (default batch, or batch-quick with --quick)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device != "cpu" and not args.skip_simulated:
        parser.error("the simulated rows stand in for a device on CPU workers: with --device "
                     f"{args.device}, add --skip-simulated")
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)  # noqa: T201
        return
    if args.sim_threads is None:
        from geoseg.config import ClusterConfig

        args.sim_threads = ClusterConfig().gpu_tasks
    count = args.scenes or (3 if args.quick else 8)
    size = args.size or (1024 if args.quick else 2048)
    supported = in_flight_default()
    n = (args.in_flight or supported) if supported is not None else None
    from geoseg.models.bundle import check_bundle

    classes = len(check_bundle(DEMO_BUNDLE).meta.classes)
    load_before = [round(x, 2) for x in os.getloadavg()]
    scaling_before = core_scaling()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        scenes = make_scenes(work, count, size)
        # repetitions interleave (sequential, in flight, limit, sequential…) so that a slow
        # spell of a shared host falls on every variant alike
        planned = [(rep, row) for rep in range(args.repeat) for row in plan_rows(args, n)]
        for k, (rep, row) in enumerate(planned):
            row["repeat"] = rep + 1
            if not row["skip"]:
                spec = {"label": f"{row['section']} {row['variant']}", "scenes": scenes,
                        "bundle": str(DEMO_BUNDLE), "out": str(work / f"out{k}"),
                        "rate": row["rate"], "in_flight": row["in_flight"], "classes": classes,
                        "threads": args.sim_threads, "device": args.device,
                        "vectorize": not args.no_vectorize, "gpu_tasks": args.gpu_tasks}
                row.update(run_row(spec))
            rows.append(row)
            print(json.dumps(row), flush=True)  # noqa: T201
    load_after = [round(x, 2) for x in os.getloadavg()]
    scaling = {"before": scaling_before, "after": core_scaling()}
    # the load after counts this benchmark's own processes; the load before (1-minute average)
    # and the core scaling measured before the rows tell whether anything else ran
    cores = os.cpu_count() or 1
    busy = load_before[0] > 0.5 * cores or scaling_before["scaling"] < 0.8 * cores
    import torch

    argv = " ".join(["python -m benchmarks.batch", *sys.argv[1:]])
    out = {
        "benchmark": "batch",
        "machine": machine() + f"; worker allocator {_allocator(rows)}",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "geoseg_commit": geoseg_commit(),
        "command": argv,
        "load_before": load_before,
        "load_after": load_after,
        "busy_note": (f": **machine busy (load {load_before[0]} on {cores} CPUs before, core "
                      f"scaling {scaling_before['scaling']}), compare ratios, not seconds**"
                      if busy else ""),
        "setup": (f"{count} copies of one synthetic {size}² 4-band uint16 DEFLATE tiled scene, "
                  "the demo bundle, `plan_batch` + `run_planned` on a fresh local cluster with "
                  f"geoseg's defaults (device {args.device}, vectorize "
                  f"{'off' if args.no_vectorize else 'on'}"
                  + (f", cluster.gpu_tasks {args.gpu_tasks}" if args.gpu_tasks else "")
                  + "), one fresh client process per "
                  f"row; in flight = run.scenes_in_flight {n if n else '(not in this geoseg)'}; "
                  f"simulated device R = {args.rate} Mpx/s (CPU-stage limit: no sleep), its worker "
                  f"with {args.sim_threads} task threads as a GPU worker has (cluster.gpu_tasks)."),
        "scenes": count,
        "size": size,
        "rows": rows,
        "rows_by": rows_by(rows),
        "ratios": ratios(rows),
        "repeat": args.repeat,
        "core_scaling": scaling,
    }
    write_results(out, args.name or ("batch-quick" if args.quick else "batch"))


def geoseg_commit() -> str:
    """The checkout's commit (``git rev-parse``), else ``$GEOSEG_COMMIT`` (a copy of a commit
    made with ``git archive``), else ``unknown``."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GEOSEG_COMMIT", "unknown")


def _allocator(rows: list[dict[str, Any]]) -> str:
    return next((r["workers"][0]["allocator"] for r in rows if r.get("workers")), "unknown")


if __name__ == "__main__":
    main()
