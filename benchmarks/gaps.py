"""Where the prediction thread idles: the task stream lined up with each scene thread's stages.

    python -m benchmarks.gaps [--scenes 4] [--size 1024] [--in-flight 2]
                              [--cpu-task-threads N] [--rate R] [--work DIR] [--json FILE]

Runs ``--scenes`` copies of one synthetic 4-band uint16 scene through geoseg's batch path
(:func:`geoseg.batch.plan_batch` + :func:`geoseg.batch.run_planned`, the demo bundle, device
cpu, vectorize on) on the local cluster geoseg starts, or with ``--rate`` through
:mod:`benchmarks.batch`'s simulated accelerator (R Mpx/s, ``inf``: no sleep) on a worker with
2 task threads as its simulated rows have, recording

- the scheduler's task stream (``client.get_task_stream``): every task's compute interval, by
  key prefix (``geoseg-predict`` are the prediction blocks);
- each scene thread's stages: their boundaries from the record's ``timings_s`` laid end to
  end from the scene's start (``scene_started``), split by the run's progress events:
  ``open`` (open and plan), ``predict wait`` (stage start → first block received: model
  check, graph, the first block's prediction), ``predict blocks`` (first → last block
  received), ``cog commit`` (last block → end of the stage: the COG's conversion and overviews
  on the client), ``vectorize wait``/``vectorize blocks`` likewise, ``vectorize merge`` (last
  block → end of the stage: seam joins and the GeoPackage on the client), ``report``
  (quick-looks, STAC, record). A timeline of all of them and of every task is in the output.

Then every moment of the batch span (first scene started → last scene finished) during which
no prediction task ran is attributed to what ran instead: another task prefix on the workers
(``vectorize`` blocks…), else the client stages the scene threads were in, else ``nothing``.
Shares of the span are printed as one JSON line (and written to ``--json``): count/ratio, not
seconds, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.batch import PREDICT_PREFIX, busy_fraction, key_prefix, make_scenes
from benchmarks.memory import DEMO_BUNDLE

#: Resolution of the attribution sweep, seconds.
STEP = 0.01


def stage_intervals(started: float, entry: dict[str, Any],
                    marks: dict[str, list[float]]) -> list[tuple[str, float, float]]:
    """``(stage, start, stop)`` of one scene's thread (seconds since the epoch).

    Args:
        started: when its thread started it (``scene_started``).
        entry: its report entry (``timings_s``: open, predict, vectorize, report, seconds).
        marks: ``stage -> times of its progress calls`` (``predict``, ``vectorize``).
    """
    t = entry.get("timings_s", {})
    out: list[tuple[str, float, float]] = []
    s = started
    for stage in ("open", "predict", "vectorize", "report"):
        if stage not in t:
            continue
        e = s + t[stage]
        ticks = marks.get(stage, [])
        if stage in ("predict", "vectorize") and ticks:
            tail = "cog commit" if stage == "predict" else "vectorize merge"
            out += [(f"{stage} wait", s, min(ticks)), (f"{stage} blocks", min(ticks), max(ticks)),
                    (tail, max(ticks), e)]
        else:
            out.append((stage, s, e))
        s = e
    return out


def attribute(first: float, last: float, predict: list[tuple[float, float]],
              others: dict[str, list[tuple[float, float]]],
              stages: list[tuple[str, float, float]]) -> dict[str, float]:
    """Shares of ``[first, last]`` without any prediction task, by what ran instead.

    A moment goes to the other task prefixes running then (``task:<prefix>``, joined with
    ``+``), else to the client stages of the scene threads then (``client:<stage>``, joined),
    else to ``nothing``. Returns ``label -> share of the span``.
    """
    def at(intervals: list[tuple[float, float]], x: float) -> bool:
        return any(a <= x < b for a, b in intervals)

    shares: dict[str, float] = defaultdict(float)
    n = max(1, int((last - first) / STEP))
    for k in range(n):
        x = first + (k + 0.5) * (last - first) / n
        if at(predict, x):
            continue
        tasks = sorted(p for p, iv in others.items() if at(iv, x))
        if tasks:
            label = "task:" + "+".join(tasks)
        else:
            now = sorted({s for s, a, b in stages if a <= x < b})
            label = "client:" + "+".join(now) if now else "nothing"
        shares[label] += 1 / n
    return {k: round(v, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def run(scenes: list[str], out: Path, in_flight: int,
        cpu_task_threads: int | None = None, rate: float | None = None) -> dict[str, Any]:
    """One batch through geoseg; the task stream, the stages and the attribution."""
    from benchmarks.batch import SimulatedDevice
    from geoseg.batch import plan_batch, run_planned
    from geoseg.batch.runner import QuietEvents
    from geoseg.models.bundle import check_bundle

    clients: list[Any] = []
    started: dict[str, float] = {}
    marks: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    entries: list[dict[str, Any]] = []
    stream: list[dict[str, Any]] = []
    workers: dict[str, Any] = {}

    class Events(QuietEvents):
        def scene_started(self, index: int, total: int, name: str) -> None:
            started[name] = time.time()

        def progress(self, stage: str, done: int, total: int, scene: str = "") -> None:
            marks[scene][stage].append(time.time())

        def scene_finished(self, entry: dict[str, Any]) -> None:
            entries.append(entry)
            if len(entries) == len(scenes):
                stream.extend(clients[0].get_task_stream(start=0))
                workers.update({a: {"threads": w["nthreads"], "resources": w["resources"]}
                                for a, w in clients[0].scheduler_info()["workers"].items()})

    def on_client(client: Any) -> None:
        clients.append(client)
        client.get_task_stream(start=0, stop=0)  # the scheduler records from now on
        if rate is not None:
            classes = len(check_bundle(DEMO_BUNDLE).meta.classes)
            client.register_plugin(SimulatedDevice(rate, classes))

    overrides: dict[str, dict[str, Any]] = {"predict": {"device": "cpu"},
                                            "run": {"scenes_in_flight": in_flight},
                                            "cluster": {}}
    if cpu_task_threads is not None:
        overrides["cluster"]["cpu_task_threads"] = cpu_task_threads
    if rate is not None:
        overrides["cluster"]["threads_per_worker"] = 2
    plan = plan_batch(scenes, str(DEMO_BUNDLE), out, None, overrides)
    begin = time.time()
    run_planned(plan, overwrite=True, events=Events(), on_client=on_client)
    wall = time.time() - begin
    first = min(started.values())
    last = max(started[e["scene"]] + e["timings_s"]["total"] for e in entries)
    by_prefix: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in stream:
        by_prefix[key_prefix(t["key"])] += [(s["start"], s["stop"]) for s in t["startstops"]
                                            if s["action"] == "compute"]
    predict = [iv for p, ivs in by_prefix.items() if p + "-" == PREDICT_PREFIX for iv in ivs]
    others = {p: ivs for p, ivs in by_prefix.items() if p + "-" != PREDICT_PREFIX}
    per_scene = [stage_intervals(started[e["scene"]], e, marks[e["scene"]]) for e in entries]
    stages = [s for st in per_scene for s in st]
    return {
        "in_flight": in_flight,
        "scenes": len(entries),
        "workers": sorted(workers.values(), key=str),
        "wall_s": round(wall, 2),
        "span_s": round(last - first, 2),
        "predict_busy": round(busy_fraction(predict, first, last), 4),
        "to_last_predict": round(busy_fraction(predict, first, max(b for _, b in predict)), 4),
        "any_task_busy": round(busy_fraction([iv for ivs in by_prefix.values() for iv in ivs],
                                             first, last), 4),
        "task_busy": {p: round(busy_fraction(ivs, first, last), 4)
                      for p, ivs in sorted(by_prefix.items())},
        "no_predict_by": attribute(first, last, predict, others, stages),
        "stage_share": {s: round(sum(b - a for n, a, b in stages if n == s) / (last - first), 4)
                        for s in sorted({n for n, _, _ in stages})},
        "timeline": timeline(first, by_prefix, per_scene),
    }


def timeline(first: float, by_prefix: dict[str, list[tuple[float, float]]],
             per_scene: list[list[tuple[str, float, float]]]) -> list[str]:
    """Every task compute interval and scene stage as ``start stop what`` lines, seconds from
    the first scene's start, in start order."""
    rows = [(a, b, f"task {p}") for p, ivs in by_prefix.items() for a, b in ivs]
    rows += [(a, b, f"scene{k} {n}") for k, st in enumerate(per_scene) for n, a, b in st]
    return [f"{a - first:7.2f} {b - first:7.2f} {w}" for a, b, w in sorted(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4, help="scenes (default 4)")
    parser.add_argument("--size", type=int, default=1024, help="scene side, px (default 1024)")
    parser.add_argument("--in-flight", type=int, default=2, help="scenes in flight (default 2)")
    parser.add_argument("--cpu-task-threads", type=int, default=None,
                        help="cluster.cpu_task_threads (default: geoseg's; 0: the shared "
                        "threads of before)")
    parser.add_argument("--rate", type=float, default=None,
                        help="the simulated accelerator's Mpx/s (inf: no sleep; default: the "
                        "real model)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep scenes and outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        scenes = make_scenes(work, args.scenes, args.size)
        load = os.getloadavg()[0]
        result = run(scenes, work / "out", args.in_flight, args.cpu_task_threads, args.rate)
    result["load_before"] = round(load, 2)
    line = json.dumps(result)
    print(line, flush=True)  # noqa: T201
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
