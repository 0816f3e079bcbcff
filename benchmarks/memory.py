"""Peak memory of every process against scene size, through `geoseg run`'s own path.

    python -m benchmarks.memory [--sizes 2048 4096 8192 16384] [--r34-sizes 2048 4096]
                                [--workers 2] [--allocator auto] [--no-system-row] [--work DIR]

Each row runs :func:`geoseg.batch.plan_batch` + :func:`geoseg.batch.run_planned` (what
``geoseg run`` calls: predict → mask COG → vectorize → GeoPackage, quick-looks, STAC) on one
synthetic square 4-band uint16 DEFLATE tiled GeoTIFF, on a fresh local cluster of ``--workers``
worker processes started by geoseg itself (so with its allocator), in a fresh client process:
no peak carries over from one row to the next. Every process reports its own high-water mark
(``VmHWM`` from ``/proc/self/status``, the peak resident set since the process started; the
workers are asked with ``client.run`` when the last block is predicted and again before the
cluster closes), so nothing is sampled or missed. The client process also hosts the local
cluster's scheduler and nannies.

Rows:
* the size sweep with a fast model, the shipped demo bundle (U-Net/MobileNetV2, depth 3, tile
  512, halo 48), so that 16384² takes minutes, not the ~25 min of a ResNet-34 on 2 cores;
* U-Net/ResNet-34 (random init, bundle tile 512, halo 128) at ``--r34-sizes`` with geoseg's
  default block, tile and batch size: the per-worker peak of a real-size model (target < 2 GiB);
* the same ResNet-34 row at the smallest size with ``allocator: system`` (glibc), to show what
  jemalloc costs or saves in memory.

"Flat" (computed): a process's peak at the largest size of a sweep is within 25 % of its peak at
the smallest. Results go to ``benchmarks/results/memory.json`` and ``memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = REPO / "models" / "s2-demo-landcover.safetensors"
#: Flat means: peak at the largest size ≤ this × peak at the smallest.
FLAT = 1.25
MIB = 2**20


def write_scene(path: Path, size: int) -> None:
    """A coherent 4-band uint16 scene written strip by strip (never whole in memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                   crs="EPSG:32618", transform=from_origin(400000, 4200000, 10, 10), tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", nodata=0,
                   bigtiff="if_safer")
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            y = np.arange(row, row + h, dtype=np.float32)[:, None]
            bands = [1000 + 400 * np.sin(x[None] / (40 + 9 * k) + k) * np.cos(y / (55 + 7 * k))
                     for k in range(4)]
            dst.write(np.stack(bands).astype("uint16"), window=Window(0, row, size, h))


def make_r34_bundle(path: Path) -> None:
    from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

    init_bundle(path, arch="unet", encoder="resnet34",
                bands=tuple(BandSpec(name=f"b{i}", mean=1000, std=300) for i in range(4)),
                input_dtype="uint16",
                classes=tuple(ClassSpec(id=i, name=f"c{i}", color=(i, i, i)) for i in range(6)),
                tile_size=512, halo=128)


def process_memory() -> dict[str, Any]:
    """This process's peak and current resident set (MiB) and the allocator mapped into it."""
    from geoseg.allocator import preloaded_jemalloc

    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    kib = lambda key: int(status[key].split()[0])  # noqa: E731
    return {"peak_mib": round(kib("VmHWM") / 1024, 1), "rss_mib": round(kib("VmRSS") / 1024, 1),
            "allocator": "jemalloc" if preloaded_jemalloc() else "system"}


# --- one row, in a fresh client process --------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one scene through geoseg's batch path; return seconds and every process's peak."""
    from geoseg.batch import plan_batch, run_planned
    from geoseg.batch.runner import QuietEvents

    clients: list[Any] = []

    class Events(QuietEvents):
        """Ask the workers for their peaks when the last block is predicted (before vectorizing
        starts) and when the scene is done (before the cluster closes)."""

        entry: dict[str, Any] = {}
        workers: dict[str, dict[str, Any]] = {}
        predicted: dict[str, dict[str, Any]] = {}
        client_before_vectorize: dict[str, Any] = {}
        client_vectorized: dict[str, Any] = {}

        def progress(self, stage: str, done: int, total: int) -> None:
            if stage == "predict" and done == total:
                self.predicted = clients[0].run(process_memory)
            if stage == "vectorize" and not self.client_before_vectorize:
                # first vectorize block back: the mask COG is written, vectorizing just began
                self.client_before_vectorize = process_memory()
            if stage == "vectorize" and done == total:  # the last region written; report next
                self.client_vectorized = process_memory()

        def scene_finished(self, entry: dict[str, Any]) -> None:
            self.entry = entry
            self.workers = clients[0].run(process_memory)

    overrides = {"cluster": {"workers": spec["workers"], "allocator": spec["allocator"]},
                 "predict": spec["predict"]}
    plan = plan_batch([spec["scene"]], spec["bundle"], spec["out"], None, overrides)
    events = Events()
    start = time.perf_counter()
    result, _ = run_planned(plan, overwrite=True, events=events, on_client=clients.append)
    seconds = time.perf_counter() - start
    client = process_memory()  # before this benchmark reads the GeoPackage back to check it
    entry = events.entry
    if entry.get("status") != "ok":
        raise RuntimeError(f"scene failed: {entry.get('error')}")
    import pyogrio
    import shapely

    folder = Path(spec["out"]) / entry["scene"]
    gpkg = folder / entry["outputs"]["vectors"]
    geoms = pyogrio.read_dataframe(gpkg, layer="landcover", columns=[]).geometry.values
    largest = int(np.argmax(shapely.get_num_coordinates(geoms)))
    workers = [dict(w, after_predict_mib=events.predicted.get(addr, {}).get("peak_mib"))
               for addr, w in sorted(events.workers.items(), key=lambda kv: kv[1]["peak_mib"])]
    return {
        "seconds": round(seconds, 1),
        "stages_s": {k: round(v, 1) for k, v in entry["timings_s"].items()},
        "blocks": entry["blocks"],
        "tiles": entry["tiles"],
        "polygons": len(geoms),
        "largest_polygon": {"vertices": int(shapely.get_num_coordinates(geoms[largest])),
                            "wkb_mb": round(len(shapely.to_wkb(geoms[largest])) / 1e6, 1)},
        "client": dict(client,
                       before_vectorize_mib=events.client_before_vectorize.get("peak_mib"),
                       through_vectorize_mib=events.client_vectorized.get("peak_mib")),
        "workers": workers,
    }


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"row {spec['label']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the sweep -----------------------------------------------------------------------------------


def machine() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU, {mem:.0f} GiB, "
            f"{gpu}; Python {platform.python_version()}, torch {torch.__version__}")


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size sweep (model + allocator, ≥ 3 sizes) and process: largest / smallest peak."""
    out = []
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        sweeps.setdefault(f"{r['model']} ({r['allocator']})", []).append(r)
    roles = {
        "client": lambda r: r["client"]["peak_mib"],
        "client, through the mask COG": lambda r: r["client"]["before_vectorize_mib"],
        "worker (max)": lambda r: max(w["peak_mib"] for w in r["workers"]),
        "worker (max), through prediction": lambda r: max(w["after_predict_mib"]
                                                          for w in r["workers"]),
    }
    for name, rs in sweeps.items():
        rs = sorted(rs, key=lambda r: r["size"])
        if len(rs) < 3:
            continue
        small, large = rs[0], rs[-1]
        for role, peak in roles.items():
            ratio = peak(large) / peak(small)
            out.append({"sweep": name, "process": role, "small": small["size"],
                        "large": large["size"], "peak_small_mib": peak(small),
                        "peak_large_mib": peak(large), "ratio": round(ratio, 3),
                        "flat": ratio <= FLAT})
    return out


def write_results(out: dict[str, Any], name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"Machine: {out['machine']}. {out['setup']}",
        "",
        "| model | allocator | scene | Mpx | blocks | polygons (largest: vertices) | seconds "
        "(predict / vectorize / total) | client peak MiB (through mask COG) | worker peaks MiB "
        "(through prediction) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        st, c = r["stages_s"], r["client"]
        workers = ", ".join(f"{w['peak_mib']} ({w['after_predict_mib']})" for w in r["workers"])
        lines.append(
            f"| {r['model']} | {r['allocator']} | {r['size']}² | {r['megapixels']} | "
            f"{r['blocks']} | {r['polygons']} ({r['largest_polygon']['vertices']}) | "
            f"{st.get('predict')} / {st.get('vectorize')} / {r['seconds']} | "
            f"{c['peak_mib']} ({c['before_vectorize_mib']}) | {workers} |")
    lines += ["", f"Flat = peak at the largest size ≤ {FLAT} × peak at the smallest "
              "(computed):", "",
              "| sweep | process | peak MiB (smallest → largest) | ratio | flat |",
              "|---|---|---|---|---|"]
    for v in out["verdicts"]:
        lines.append(f"| {v['sweep']} {v['small']}²→{v['large']}² | {v['process']} | "
                     f"{v['peak_small_mib']} → {v['peak_large_mib']} | {v['ratio']} | "
                     f"{'yes' if v['flat'] else '**no**'} |")
    r34 = [w for r in out["rows"] if r["model"].startswith("unet/resnet34") for w in r["workers"]]
    if r34:
        worst = max(w["peak_mib"] for w in r34)
        predict = max(w["after_predict_mib"] or 0 for w in r34)
        verdict = lambda v: "under" if v < 2048 else "**over**"  # noqa: E731
        lines += ["", f"U-Net/ResNet-34 worker peak (computed): {predict} MiB through prediction "
                  f"({verdict(predict)} the 2 GiB per worker target), {worst} MiB with "
                  f"vectorizing ({verdict(worst)}). The random-init model's mask is salt and "
                  "pepper (see polygons), a worst case for vectorizing."]
    big = max(out["rows"], key=lambda r: r["largest_polygon"]["vertices"])
    lines += ["", f"Largest polygon (computed): {big['largest_polygon']['vertices']} vertices, "
              f"{big['largest_polygon']['wkb_mb']} MB of WKB ({big['model']}, {big['size']}²): "
              "one region touching every block. Its large pieces (over 64 KiB) stay on the "
              "workers that made them until its last block is done; a worker dissolves them "
              "and the client writes the result (GDAL's write of one geometry takes about 3 "
              "times its WKB). Client peaks are taken before the benchmark reads the "
              "GeoPackage back; through vectorizing, the client peaked at "
              f"{big['client'].get('through_vectorize_mib')} MiB."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384],
                        help="scene sides of the fast-model sweep, px")
    parser.add_argument("--r34-sizes", type=int, nargs="*", default=[2048, 4096],
                        help="scene sides of the U-Net/ResNet-34 rows, px (none: skip)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--allocator", default="auto",
                        choices=["auto", "jemalloc", "glibc", "system"])
    parser.add_argument("--no-system-row", action="store_true",
                        help="skip the ResNet-34 row under glibc malloc")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep scenes and outputs here (default: a temporary folder)")
    parser.add_argument("--name", default="memory", help="results file stem")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)  # noqa: T201
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        r34 = work / "unet-r34.safetensors"
        if not r34.exists():
            make_r34_bundle(r34)
        plan = [("unet/mobilenet_v2 depth 3 (demo bundle)", DEMO_BUNDLE, s, args.allocator)
                for s in args.sizes]
        plan += [("unet/resnet34 (random init)", r34, s, args.allocator) for s in args.r34_sizes]
        if args.r34_sizes and not args.no_system_row and args.allocator != "system":
            plan.append(("unet/resnet34 (random init)", r34, min(args.r34_sizes), "system"))
        rows = []
        for model, bundle, size, allocator in plan:
            scene = work / f"scene{size}.tif"
            if not scene.exists():
                write_scene(scene, size)
            spec = {"label": f"{model} {size} {allocator}", "scene": str(scene),
                    "bundle": str(bundle), "out": str(work / "out"), "workers": args.workers,
                    "allocator": allocator, "predict": {"device": "cpu"}}
            row = {"model": model, "allocator": allocator, "size": size,
                   "megapixels": round(size * size / 1e6, 1), **run_row(spec)}
            if allocator != "system":  # what "auto" resolved to, seen in the workers
                row["allocator"] = row["workers"][0]["allocator"]
            rows.append(row)
            print(json.dumps(row), flush=True)  # noqa: T201
    from geoseg.config import PredictConfig

    d = PredictConfig()
    out = {
        "benchmark": "memory",
        "machine": machine(),
        "setup": (f"`geoseg run` path (plan_batch + run_planned) on a local cluster of "
                  f"{args.workers} worker processes started by geoseg, device cpu, geoseg's "
                  f"defaults: block {d.block_size}, tile at least 1024 (bundles: demo 512/48, "
                  "ResNet-34 512/128 tile/halo), batch about 1 Mpx (1 tile of 1024²), "
                  "vectorize on; synthetic 4-band uint16 "
                  "DEFLATE tiled scenes. Peak = VmHWM of each process; the client process also "
                  "runs the scheduler and the nannies; one fresh client process and cluster "
                  "per row."),
        "flat_threshold": FLAT,
        "rows": rows,
        "verdicts": verdicts(rows),
    }
    write_results(out, args.name)


if __name__ == "__main__":
    main()
