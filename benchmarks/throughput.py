"""Throughput: geoseg end-to-end against the model-only ceiling and the naive loop, in one run.

    python -m benchmarks.throughput [--quick] [--size 3072] [--block 1536] [--halos 0 64 128]
                                    [--tiles 512 768] [--batches 1 2 4] [--no-cluster]
                                    [--no-jemalloc]

On a synthetic 4-band uint16 DEFLATE tiled GeoTIFF and one bundle (U-Net/ResNet-34, random
init, bundle tile 512, halo 128 unless ``--halos`` says otherwise), every variant on all CPU
cores. geoseg runs with its defaults (tile: at least 1024 for this U-Net; batch: about 1 Mpx):

1. **ceiling**: the bundle's forward pass under ``torch.inference_mode()`` on pre-loaded tensors
   of exactly the tiles geoseg runs (each block's tiles, halo included and trimmed at the scene
   edge, grouped into batches the way :mod:`geoseg.predict` groups them);
2. **geoseg**: :func:`geoseg.pipeline.predict_scene` from file to finished COG, in this process
   (``client=None``), and on local clusters started by :func:`geoseg.cluster.connect` (what
   ``geoseg run`` uses) with 1 worker × all cores of torch threads and N workers × 1 thread
   (scaling; the block size gives every worker blocks to do);
3. **naive**: for each tile of a lattice, a boundless rasterio window read, normalize, forward
   at batch 1, ``torch.argmax``, write the core into a tiled GeoTIFF; at the bundle's tile (what
   anyone would write with this model) and at geoseg's tile, both at the same halo;
4. **tile size**: geoseg and its ceiling at ``--tiles`` against its default tile, with the share
   of mask pixels that agree (the halo is below this model's receptive field, so tile size
   changes a few pixels);
5. **overlap**: geoseg end-to-end at each halo against ``(core + 2·halo)² / core²``;
6. **jemalloc**: the same again with jemalloc. This process runs on glibc malloc; its local
   clusters get jemalloc through geoseg's own mechanism (``cluster.allocator: jemalloc``, a
   nanny preload; the workers' ``/proc/self/maps`` is checked and recorded), and ceiling,
   in-process geoseg and naive run in a child process started with the environment of
   :func:`geoseg.allocator.allocator_environ`; its local clusters also run with tuned glibc
   (``cluster.allocator: glibc``, what ``auto`` gives a node without jemalloc);
7. **batch size**: the ceiling at each of ``--batches`` under both allocators.

Mpx/s always counts scene pixels (each output pixel once), so halo work lowers it.
Results go to ``benchmarks/results/throughput.json`` and ``throughput.md``
(``throughput-quick.*`` with ``--quick``).
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

from benchmarks.memory import write_scene

RESULTS = Path(__file__).parent / "results"
#: The bundle's tile (what the model was made with, and what a naive loop uses).
BUNDLE_TILE = 512
THREADS = len(os.sched_getaffinity(0))


def make_bundle(path: Path, arch: str = "unet", encoder: str = "resnet34",
                **arch_kwargs: Any) -> None:
    """A random-init bundle: 4 uint16 bands, 6 classes, tile 512, halo 128."""
    from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

    init_bundle(path, arch=arch, encoder=encoder, arch_kwargs=arch_kwargs or None,
                bands=tuple(BandSpec(name=f"b{i}", mean=1000, std=300) for i in range(4)),
                input_dtype="uint16",
                classes=tuple(ClassSpec(id=i, name=f"c{i}", color=(i, i, i)) for i in range(6)),
                tile_size=BUNDLE_TILE, halo=128)


def autocast(device: str, precision: str):
    """torch autocast for ``precision`` (bf16/fp16) on CUDA; a no-op context otherwise."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None or not device.startswith("cuda"):
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=dtype)


def default_tile(halo: int) -> int:
    """The tile geoseg runs this bundle at when none is configured (1024 for halos ≤ 256)."""
    from geoseg.models.registry import inference_tile_size

    return inference_tile_size("unet", BUNDLE_TILE, halo)


def config(halo: int, block: int, tile: int | None = None, batch: int | None = None):
    """geoseg's config: its default tile and batch size unless ``tile`` / ``batch`` are given."""
    from geoseg.config import PredictConfig

    return PredictConfig(tile_size=tile, halo=halo, block_size=block, batch_size=batch,
                         device="cpu")


def plan(scene: Path, bundle: Path, halo: int, block: int, out: Path, tile: int | None = None,
         batch: int | None = None):
    from geoseg.pipeline import plan_prediction

    return plan_prediction(scene, bundle, out, config(halo, block, tile, batch),
                           overwrite=True, threads=THREADS)


def tile_stats(p) -> dict:
    """Tiles, pixels the model sees, and the halo arithmetic for a plan's grid."""
    grid = p.grid
    tiles = [t for b in grid.blocks() for t in b.tiles]
    seen = sum(t.window.area for t in tiles)
    core = grid.lattice.stride
    return {"tile": grid.lattice.tile_size, "batch": p.job.batch_size, "tiles": len(tiles),
            "blocks": len(grid), "block_size": grid.block_size,
            "model_mpx": round(seen / 1e6, 3),
            "seen_per_output_px": round(seen / (grid.height * grid.width), 3),
            "arithmetic": round((core + 2 * grid.lattice.halo) ** 2 / core**2, 3)}


def load_model(bundle: Path):
    import torch

    from geoseg.models.bundle import load_bundle

    torch.set_num_threads(THREADS)
    return load_bundle(bundle).build().eval()


def ceiling(scene: Path, bundle: Path, halo: int, block: int, tmp: Path,
            tile: int | None = None, batch: int | None = None) -> float:
    """Seconds of forward passes over exactly the batches geoseg runs, inputs pre-loaded."""
    import torch

    from geoseg.predict import _batches

    p = plan(scene, bundle, halo, block, tmp / "unused.tif", tile, batch)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(len(b), 4, *b[0].window.shape, generator=gen)
               for blk in p.grid.blocks() for b in _batches(list(blk.tiles), p.job.batch_size)]
    model = load_model(bundle)
    with torch.inference_mode():
        model(batches[0])  # warm-up (first call allocates and picks kernels)
        start = time.perf_counter()
        for x in batches:
            model(x)
        return time.perf_counter() - start


def geoseg_e2e(scene: Path, bundle: Path, halo: int, block: int, tmp: Path, client=None,
               threads: int = THREADS, tile: int | None = None) -> float:
    """Seconds of :func:`geoseg.pipeline.predict_scene`, file to COG (``geoseg-h*-t*.tif``)."""
    from geoseg.pipeline import predict_scene

    start = time.perf_counter()
    predict_scene(scene, bundle, tmp / f"geoseg-h{halo}-t{tile or 'auto'}.tif",
                  config(halo, block, tile), client=client, overwrite=True, threads=threads)
    return time.perf_counter() - start


def naive(scene: Path, bundle: Path, halo: int, tmp: Path, tile: int = BUNDLE_TILE,
          device: str = "cpu", precision: str = "fp32") -> float:
    """The loop anyone would write, on the lattice of ``tile`` (full tiles, boundless reads,
    batch 1), the model on ``device`` under ``precision``'s autocast."""
    import rasterio
    import torch
    from rasterio.windows import Window

    from geoseg.models.bundle import load_bundle

    meta = load_bundle(bundle).meta
    mean = np.array([b.mean for b in meta.bands], dtype=np.float32)[:, None, None]
    std = np.array([b.std for b in meta.bands], dtype=np.float32)[:, None, None]
    model = load_model(bundle).to(device)
    core = tile - 2 * halo
    start = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1,
                       dtype="uint8", crs=src.crs, transform=src.transform, tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", nodata=255)
        with rasterio.open(tmp / f"naive-h{halo}-t{tile}.tif", "w", **profile) as dst:
            for row in range(0, src.height, core):
                for col in range(0, src.width, core):
                    win = Window(col - halo, row - halo, tile, tile)
                    raw = src.read(window=win, boundless=True, fill_value=0)
                    x = torch.from_numpy((raw.astype(np.float32) - mean) / std)[None]
                    with torch.inference_mode(), autocast(device, precision):
                        logits = model(x.to(device))
                    cls = torch.argmax(logits, dim=1)[0].to(torch.uint8).cpu().numpy()
                    h, w = min(core, src.height - row), min(core, src.width - col)
                    dst.write(cls[halo:halo + h, halo:halo + w], 1,
                              window=Window(col, row, w, h))
    return time.perf_counter() - start


def warm_geoseg(bundle: Path, tmp: Path, halo: int, client=None, threads: int = THREADS) -> None:
    """Build and cache the model (here or on every worker) and run it once per worker.

    The warm-up scene has four blocks of one (default) tile each, so every worker of a small
    cluster runs a first forward pass (allocation, kernel choice) before the timed run.
    """
    core = default_tile(halo) - 2 * halo
    small = tmp / f"warm-{core}.tif"
    if not small.exists():
        write_scene(small, 2 * core)
    geoseg_e2e(small, bundle, halo, core, tmp, client, threads)


def cluster_run(scene: Path, bundle: Path, halo: int, block: int, tmp: Path, workers: int,
                allocator: str) -> dict[str, Any]:
    """geoseg on a local cluster started by geoseg's own ``connect`` (seconds, layout)."""
    from geoseg.allocator import allocator_in_use
    from geoseg.cluster import connect, torch_threads
    from geoseg.config import ClusterConfig

    cfg = ClusterConfig(workers=workers, allocator=allocator)
    threads = torch_threads(cfg) or THREADS
    with connect(cfg, device="cpu") as client:
        seen = sorted(set(client.run(allocator_in_use).values()))
        warm_geoseg(bundle, tmp, halo, client, threads)
        seconds = geoseg_e2e(scene, bundle, halo, block, tmp, client, threads)
    return {"workers": workers, "threads": threads, "allocator": allocator,
            "worker_allocator": ", ".join(seen), "seconds": round(seconds, 2)}


def mask_agreement(a: Path, b: Path) -> float:
    """Percent of pixels where two masks agree."""
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return round(100 * float((x.read(1) == y.read(1)).mean()), 3)


def child(size: int, halo: int, block: int, batches: list[int]) -> None:
    """Run in a subprocess (e.g. under jemalloc): print one JSON line of seconds."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundle, scene = tmp / "b.safetensors", tmp / "scene.tif"
        make_bundle(bundle)
        write_scene(scene, size)
        out: dict[str, Any] = {"ceiling": ceiling(scene, bundle, halo, block, tmp)}
        warm_geoseg(bundle, tmp, halo)
        out["geoseg"] = geoseg_e2e(scene, bundle, halo, block, tmp)
        out["naive"] = naive(scene, bundle, halo, tmp)
        out["naive_same_tile"] = naive(scene, bundle, halo, tmp, default_tile(halo))
        out["batches"] = {str(b): ceiling(scene, bundle, halo, block, tmp, batch=b)
                          for b in batches}
    print(json.dumps(out), flush=True)  # noqa: T201


def run_child(size: int, halo: int, block: int, batches: list[int]) -> dict:
    from geoseg.allocator import allocator_environ

    env = dict(os.environ, **allocator_environ("jemalloc"))
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--child", "--size", str(size),
           "--halos", str(halo), "--block", str(block), "--batches", *map(str, batches)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="halos 0 and 128, tile 512 only, batches 1 and 2")
    parser.add_argument("--size", type=int, default=None, help="scene side, px (default 3072)")
    parser.add_argument("--block", type=int, default=1536,
                        help="block side, px (default 1536: 2×2 tiles at the default tile and "
                             "halo 128; a 3072² scene gives four equal blocks, so two workers "
                             "share the work evenly)")
    parser.add_argument("--halos", type=int, nargs="+", default=None,
                        help="halos for the overlap cost; the last is the main one")
    parser.add_argument("--tiles", type=int, nargs="+", default=None,
                        help="smaller tiles compared with geoseg's default at the main halo "
                             "(default 512 768)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes of the ceiling sweep (default 1 2 4)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers of the many-workers row (default: one per core)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster rows")
    parser.add_argument("--no-jemalloc", action="store_true", help="skip the jemalloc rows")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size or 3072
    block = args.block
    halos = args.halos or ([0, 128] if args.quick else [0, 64, 128])
    tiles = args.tiles or ([512] if args.quick else [512, 768])
    batches = args.batches or ([1, 2] if args.quick else [1, 2, 4])
    if args.child:
        child(size, halos[-1], block, batches)
        return
    import torch

    from geoseg.allocator import find_jemalloc, preloaded_jemalloc

    torch.set_num_threads(THREADS)
    main_halo = halos[-1]
    mpx = size * size / 1e6
    rate = lambda s: round(mpx / s, 3)  # noqa: E731
    log = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731, T201
    out: dict[str, Any] = {"benchmark": "throughput", "scene_px": size,
                           "scene_mpx": round(mpx, 3), "block": block, "halo_rows": [],
                           "tile_rows": [], "main": {}, "clusters": [], "batches": {},
                           "this_process_allocator": preloaded_jemalloc() or "system"}
    jemalloc = None if args.no_jemalloc else find_jemalloc()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundle, scene = tmp / "unet-r34.safetensors", tmp / "scene.tif"
        make_bundle(bundle)
        write_scene(scene, size)
        warm_geoseg(bundle, tmp, main_halo)
        for halo in halos:
            row = {"halo": halo, **tile_stats(plan(scene, bundle, halo, block, tmp / "x.tif"))}
            c = ceiling(scene, bundle, halo, block, tmp)
            g = geoseg_e2e(scene, bundle, halo, block, tmp)
            row.update(ceiling_s=round(c, 2), ceiling_mpx_s=rate(c), geoseg_s=round(g, 2),
                       geoseg_mpx_s=rate(g), geoseg_over_ceiling=round(c / g, 3))
            out["halo_rows"].append(row)
            log(**row)
        base = out["halo_rows"][0]
        for row in out["halo_rows"]:
            row["measured_overhead"] = round(row["geoseg_s"] / base["geoseg_s"], 3)
            row["ceiling_overhead"] = round(row["ceiling_s"] / base["ceiling_s"], 3)
        main = dict(out["halo_rows"][-1])
        default_mask = tmp / f"geoseg-h{main_halo}-tauto.tif"
        whole = -(-(size + 2 * main_halo) // 32) * 32  # one tile for the whole scene
        geoseg_e2e(scene, bundle, main_halo, size, tmp, tile=whole)
        whole_mask = tmp / f"geoseg-h{main_halo}-t{whole}.tif"
        main["whole_equal_pct"] = mask_agreement(default_mask, whole_mask)
        for tile in tiles:
            row = tile_stats(plan(scene, bundle, main_halo, block, tmp / "x.tif", tile))
            c = ceiling(scene, bundle, main_halo, block, tmp, tile)
            g = geoseg_e2e(scene, bundle, main_halo, block, tmp, tile=tile)
            row.update(ceiling_s=round(c, 2), geoseg_s=round(g, 2), geoseg_mpx_s=rate(g),
                       mask_equal_pct=mask_agreement(
                           tmp / f"geoseg-h{main_halo}-t{tile}.tif", default_mask),
                       whole_equal_pct=mask_agreement(
                           tmp / f"geoseg-h{main_halo}-t{tile}.tif", whole_mask))
            out["tile_rows"].append(row)
            log(**row)
        n = naive(scene, bundle, main_halo, tmp)
        ns = naive(scene, bundle, main_halo, tmp, main["tile"])
        main.update(naive_s=round(n, 2), naive_mpx_s=rate(n),
                    geoseg_over_naive=round(n / main["geoseg_s"], 3),
                    naive_same_tile_s=round(ns, 2))
        log(naive_s=round(n, 2), naive_same_tile_s=round(ns, 2))
        out["main"] = main
        for b in batches:
            out["batches"].setdefault(str(b), {})["glibc_s"] = round(
                ceiling(scene, bundle, main_halo, block, tmp, batch=b), 2)
        log(batches=out["batches"])
        if not args.no_cluster:
            many = args.workers or THREADS
            layouts = [(1, "system"), (many, "system"), (1, "glibc"), (many, "glibc")]
            if jemalloc:
                layouts += [(1, "jemalloc"), (many, "jemalloc")]
            for workers, allocator in layouts:
                row = cluster_run(scene, bundle, main_halo, block, tmp, workers, allocator)
                out["clusters"].append(row)
                log(cluster=row)
    if jemalloc:
        from geoseg.allocator import allocator_environ

        j = run_child(size, main_halo, block, batches)
        for b, s in j.pop("batches").items():
            out["batches"][b]["jemalloc_s"] = round(s, 2)
        out["jemalloc"] = {
            "env": " ".join(f"{k}={v}" for k, v in allocator_environ("jemalloc", {}).items()),
            **{f"{k}_s": round(v, 2) for k, v in j.items()},
            **{f"{k}_mpx_s": rate(v) for k, v in j.items()},
        }
        log(jemalloc=out["jemalloc"])
    write_results(out, args)


def _ratio(a: float | None, b: float | None) -> float | str:
    return round(a / b, 3) if a and b else ""


def _variant_rows(out: dict) -> list[tuple[str, str, float]]:
    """(variant, allocator, seconds) of the main table, glibc rows then jemalloc rows."""
    m, j = out["main"], out.get("jemalloc", {})
    tile = m["tile"]
    rows: list[tuple[str, str, float]] = []
    for label, res, workers in (("glibc", m, ("system", "glibc")), ("jemalloc", j, ("jemalloc",))):
        if not res:
            continue
        rows += [(f"model-only ceiling (geoseg's tiles: {tile}², batch {m['batch']})", label,
                  res["ceiling_s"]),
                 ("geoseg, in-process (client=None)", label, res["geoseg_s"])]
        rows += [(f"geoseg, LocalCluster {c['workers']} worker(s) × {c['threads']} torch "
                  f"thread(s) (workers: {c['worker_allocator']})", label, c["seconds"])
                 for c in out["clusters"] if c["allocator"] in workers]
        rows += [(f"naive loop at the bundle's tile ({BUNDLE_TILE}², batch 1, boundless reads, "
                  "torch.argmax)", label, res["naive_s"]),
                 (f"naive loop at geoseg's tile ({tile}²)", label, res["naive_same_tile_s"])]
    return rows


def write_results(out: dict, args) -> None:
    import torch

    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    m, j = out["main"], out.get("jemalloc", {})
    out.update(
        machine=machine, torch=torch.__version__, threads=THREADS,
        model=f"unet/resnet34 (random init, bundle tile {BUNDLE_TILE}), 4 bands uint16, "
              "6 classes",
        config=f"geoseg defaults: tile {m['tile']}, batch {m['batch']}; halo {m['halo']}, "
               f"block {out['block']} (→ {m['block_size']}), fp32, device cpu, trim stitching",
        scene=f"{out['scene_px']}² 4-band uint16 DEFLATE tiled (512) GeoTIFF, synthetic",
    )
    RESULTS.mkdir(exist_ok=True)
    name = "throughput-quick" if args.quick else "throughput"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    by = {(c["workers"], c["allocator"]): c for c in out["clusters"]}
    ceilings = {"glibc": m["ceiling_s"], "jemalloc": j.get("ceiling_s")}
    naives = {"glibc": m["naive_s"], "jemalloc": j.get("naive_s")}
    lines = [
        f"Machine: {machine}; torch {out['torch']}, {THREADS} torch threads per process unless "
        f"noted; model {out['model']}; {out['config']}; scene {out['scene']}. This process: "
        f"{out['this_process_allocator']}; jemalloc rows: {j.get('env', 'skipped')}. Mpx/s "
        "counts scene pixels once; ratios are against the ceiling and the naive loop (at the "
        "bundle's tile) of the same allocator.",
        "",
        "| variant | allocator | seconds | Mpx/s | vs ceiling | vs naive |",
        "|---|---|---|---|---|---|",
    ]
    for label, alloc, s in _variant_rows(out):
        lines.append(f"| {label} | {alloc} | {s} | {round(out['scene_mpx'] / s, 3)} | "
                     f"{_ratio(ceilings[alloc], s)} | {_ratio(naives[alloc], s)} |")
    lines += ["", f"geoseg in one process vs the glibc naive loop at the bundle's tile: glibc "
              f"{_ratio(m['naive_s'], m['geoseg_s'])}, jemalloc "
              f"{_ratio(m['naive_s'], j.get('geoseg_s'))}; against the naive loop at geoseg's "
              f"own tile: glibc {_ratio(m['naive_same_tile_s'], m['geoseg_s'])}."]
    best = min((c for c in out["clusters"] if c["allocator"] == "jemalloc"),
               key=lambda c: c["seconds"], default=None)
    if best:
        lines += [f"`geoseg run`'s default path (local cluster under jemalloc, {best['workers']} "
                  f"worker(s)) vs the glibc naive loop: {_ratio(m['naive_s'], best['seconds'])} "
                  f"at the bundle's tile, {_ratio(m['naive_same_tile_s'], best['seconds'])} at "
                  "geoseg's tile; vs the jemalloc naive loop: "
                  f"{_ratio(j.get('naive_s'), best['seconds'])} and "
                  f"{_ratio(j.get('naive_same_tile_s'), best['seconds'])}."]
    if j:
        lines += ["jemalloc speed-up (computed, glibc s / jemalloc s): ceiling "
                  f"{_ratio(m['ceiling_s'], j['ceiling_s'])}, geoseg in-process "
                  f"{_ratio(m['geoseg_s'], j['geoseg_s'])}, naive "
                  f"{_ratio(m['naive_s'], j['naive_s'])}."]
    many = sorted({w for w, _ in by if w > 1})
    for alloc_key, label in (("system", "glibc"), ("glibc", "tuned glibc"),
                             ("jemalloc", "jemalloc")):
        one = by.get((1, alloc_key))
        for w in many:
            other = by.get((w, alloc_key))
            if one and other:
                lines.append(f"Scaling ({label}, computed): {w} workers × {other['threads']} "
                             f"thread vs 1 worker × {one['threads']} threads: "
                             f"{_ratio(one['seconds'], other['seconds'])} × the speed.")
    lines += [
        "",
        f"Tile size at halo {m['halo']} (glibc, in-process; `seen/px` = model pixels per output "
        "pixel, edge tiles trimmed; `= default` and `= whole` = % of pixels equal to the mask "
        "at geoseg's default tile and to the mask of one forward pass over the whole scene; "
        "the halo is below this random-init model's receptive field, its worst case):",
        "",
        "| tile | batch | tiles | seen/px | arithmetic | ceiling s | geoseg s | geoseg Mpx/s | "
        "= default (%) | = whole (%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [*out["tile_rows"], {**m, "mask_equal_pct": 100.0}]:
        lines.append(f"| {r['tile']} | {r['batch']} | {r['tiles']} | "
                     f"{r['seen_per_output_px']} | {r['arithmetic']} | {r['ceiling_s']} | "
                     f"{r['geoseg_s']} | {r['geoseg_mpx_s']} | {r['mask_equal_pct']} | "
                     f"{r['whole_equal_pct']} |")
    lines += [
        "",
        f"Batch size (model-only ceiling on geoseg's {m['tile']}² tiles, seconds; lower is "
        "better):",
        "",
        "| batch | glibc s | glibc Mpx/s | jemalloc s | jemalloc Mpx/s |",
        "|---|---|---|---|---|",
    ]
    for b, v in out["batches"].items():
        g, jm = v.get("glibc_s"), v.get("jemalloc_s")
        lines.append(f"| {b} | {g} | {_ratio(out['scene_mpx'], g)} | {jm or ''} | "
                     f"{_ratio(out['scene_mpx'], jm)} |")
    lines += [
        "",
        "Overlap cost (glibc, in-process; geoseg's default tile; core = tile − 2·halo; "
        "arithmetic = (core+2·halo)²/core²):",
        "",
        "| halo | tile | tiles | seen/px | arithmetic | ceiling s | geoseg s | geoseg Mpx/s | "
        "geoseg/ceiling | measured overhead (vs halo "
        f"{out['halo_rows'][0]['halo']}) | measured / seen |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["halo_rows"]:
        lines.append(f"| {r['halo']} | {r['tile']} | {r['tiles']} | {r['seen_per_output_px']} | "
                     f"{r['arithmetic']} | {r['ceiling_s']} | {r['geoseg_s']} | "
                     f"{r['geoseg_mpx_s']} | {r['geoseg_over_ceiling']} | "
                     f"{r['measured_overhead']} | "
                     f"{_ratio(r['measured_overhead'], r['seen_per_output_px'])} |")
    bound = "the model's forward pass (compute-bound)" if m["geoseg_over_ceiling"] >= 0.9 else \
        "something besides the model (I/O, writing or scheduling)"
    lines += ["", f"Limit hit (computed): in-process geoseg runs at {m['geoseg_over_ceiling']} × "
              f"the model-only ceiling, so its time is set by {bound}."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
