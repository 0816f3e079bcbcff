"""Throughput: geoseg end-to-end against the model-only ceiling and the naive loop, in one run.

    python -m benchmarks.throughput [--quick] [--size 2048] [--halos 0 64 128] [--no-cluster]
                                    [--no-jemalloc]

On a synthetic 4-band uint16 DEFLATE tiled GeoTIFF and one bundle (U-Net/ResNet-34, random
init, tile 512, halo 128 unless ``--halos`` says otherwise), all with torch threads = CPU count:

1. **ceiling**: the bundle's forward pass under ``torch.inference_mode()`` on pre-loaded tensors
   of exactly the tiles geoseg runs (each block's tiles, halo included and trimmed at the scene
   edge, grouped into batches of ``batch_size`` the way :mod:`geoseg.predict` groups them);
2. **geoseg**: :func:`geoseg.pipeline.predict_scene` from file to finished COG, in this process
   (``client=None``) and on a one-worker ``LocalCluster`` (the ``geoseg run`` default here);
3. **naive**: for each tile of the same lattice, a boundless rasterio window read, normalize,
   forward at batch 1, ``torch.argmax``, write the core into a tiled GeoTIFF;
4. **overlap**: geoseg end-to-end at each halo against ``(core + 2·halo)² / core²``;
5. **jemalloc**: ceiling, geoseg and naive again in a subprocess with ``LD_PRELOAD`` jemalloc.

Mpx/s always counts scene pixels (each output pixel once), so halo work lowers it.
Results go to ``benchmarks/results/throughput.json`` and ``throughput.md``.
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

import numpy as np

from benchmarks.memory import write_scene

RESULTS = Path(__file__).parent / "results"
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
TILE, BATCH, BLOCK = 512, 4, 2048
THREADS = os.cpu_count() or 1


def make_bundle(path: Path) -> None:
    from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

    init_bundle(path, arch="unet", encoder="resnet34",
                bands=tuple(BandSpec(name=f"b{i}", mean=1000, std=300) for i in range(4)),
                input_dtype="uint16",
                classes=tuple(ClassSpec(id=i, name=f"c{i}", color=(i, i, i)) for i in range(6)),
                tile_size=TILE, halo=128)


def config(halo: int):
    from geoseg.config import PredictConfig

    return PredictConfig(tile_size=TILE, halo=halo, block_size=BLOCK, batch_size=BATCH,
                         device="cpu")


def plan(scene: Path, bundle: Path, halo: int, out: Path):
    from geoseg.pipeline import plan_prediction

    return plan_prediction(scene, bundle, out, config(halo), overwrite=True, threads=THREADS)


def tile_stats(p) -> dict:
    """Tiles, pixels the model sees, and the halo arithmetic for a plan's grid."""
    grid = p.grid
    tiles = [t for b in grid.blocks() for t in b.tiles]
    seen = sum(t.window.area for t in tiles)
    core = grid.lattice.stride
    return {"tiles": len(tiles), "blocks": len(grid), "block_size": grid.block_size,
            "model_mpx": round(seen / 1e6, 3),
            "seen_per_output_px": round(seen / (grid.height * grid.width), 3),
            "arithmetic": round((core + 2 * grid.lattice.halo) ** 2 / core**2, 3)}


def load_model(bundle: Path):
    import torch

    from geoseg.models.bundle import load_bundle

    torch.set_num_threads(THREADS)
    return load_bundle(bundle).build().eval()


def ceiling(scene: Path, bundle: Path, halo: int, tmp: Path) -> float:
    """Seconds of forward passes over exactly the batches geoseg runs, inputs pre-loaded."""
    import torch

    from geoseg.predict import _batches

    p = plan(scene, bundle, halo, tmp / "unused.tif")
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(len(b), 4, *b[0].window.shape, generator=gen)
               for block in p.grid.blocks() for b in _batches(list(block.tiles), BATCH)]
    model = load_model(bundle)
    with torch.inference_mode():
        model(batches[0][:1])  # warm-up (first call allocates and picks kernels)
        start = time.perf_counter()
        for x in batches:
            model(x)
        return time.perf_counter() - start


def geoseg_e2e(scene: Path, bundle: Path, halo: int, tmp: Path, client=None) -> float:
    from geoseg.pipeline import predict_scene

    start = time.perf_counter()
    predict_scene(scene, bundle, tmp / f"geoseg-h{halo}.tif", config(halo), client=client,
                  overwrite=True, threads=THREADS)
    return time.perf_counter() - start


def naive(scene: Path, bundle: Path, halo: int, tmp: Path) -> float:
    """The loop anyone would write, on the same lattice (full tiles, boundless reads)."""
    import rasterio
    import torch
    from rasterio.windows import Window

    from geoseg.models.bundle import load_bundle

    meta = load_bundle(bundle).meta
    mean = np.array([b.mean for b in meta.bands], dtype=np.float32)[:, None, None]
    std = np.array([b.std for b in meta.bands], dtype=np.float32)[:, None, None]
    model = load_model(bundle)
    core = TILE - 2 * halo
    start = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1,
                       dtype="uint8", crs=src.crs, transform=src.transform, tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", nodata=255)
        with rasterio.open(tmp / f"naive-h{halo}.tif", "w", **profile) as dst:
            for row in range(0, src.height, core):
                for col in range(0, src.width, core):
                    win = Window(col - halo, row - halo, TILE, TILE)
                    raw = src.read(window=win, boundless=True, fill_value=0)
                    x = torch.from_numpy((raw.astype(np.float32) - mean) / std)[None]
                    with torch.inference_mode():
                        cls = torch.argmax(model(x), dim=1)[0].to(torch.uint8).numpy()
                    h, w = min(core, src.height - row), min(core, src.width - col)
                    dst.write(cls[halo:halo + h, halo:halo + w], 1,
                              window=Window(col, row, w, h))
    return time.perf_counter() - start


def warm_geoseg(bundle: Path, tmp: Path, halo: int, client=None) -> None:
    """Build and cache the model (in this process or on the workers) on a tiny scene."""
    small = tmp / "warm.tif"
    if not small.exists():
        write_scene(small, 256)
    geoseg_e2e(small, bundle, halo, tmp, client)


def child(size: int, halo: int) -> None:
    """Run in a subprocess (e.g. under LD_PRELOAD jemalloc): print one JSON line of seconds."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundle, scene = tmp / "b.safetensors", tmp / "scene.tif"
        make_bundle(bundle)
        write_scene(scene, size)
        out = {"ceiling": ceiling(scene, bundle, halo, tmp)}
        warm_geoseg(bundle, tmp, halo)
        out["geoseg"] = geoseg_e2e(scene, bundle, halo, tmp)
        out["naive"] = naive(scene, bundle, halo, tmp)
    print(json.dumps(out), flush=True)  # noqa: T201


def run_child(size: int, halo: int, jemalloc: bool) -> dict:
    env = dict(os.environ)
    if jemalloc:
        env.update(LD_PRELOAD=JEMALLOC, MALLOC_CONF=JEMALLOC_CONF)
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--child", "--size", str(size),
           "--halos", str(halo)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="768² scene, halos 0 and 128")
    parser.add_argument("--size", type=int, default=None, help="scene side, px (default 2048)")
    parser.add_argument("--halos", type=int, nargs="+", default=None,
                        help="halos for the overlap cost; the last is the main one")
    parser.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster run")
    parser.add_argument("--no-jemalloc", action="store_true", help="skip the jemalloc run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size or (768 if args.quick else 2048)
    halos = args.halos or ([0, 128] if args.quick else [0, 64, 128])
    if args.child:
        child(size, halos[-1])
        return
    import torch

    torch.set_num_threads(THREADS)
    main_halo = halos[-1]
    mpx = size * size / 1e6
    rate = lambda s: round(mpx / s, 3)  # noqa: E731
    log = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731, T201
    out: dict = {"benchmark": "throughput", "scene_px": size, "scene_mpx": round(mpx, 3),
                 "halo_rows": [], "main": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundle, scene = tmp / "unet-r34.safetensors", tmp / "scene.tif"
        make_bundle(bundle)
        write_scene(scene, size)
        warm_geoseg(bundle, tmp, main_halo)
        for halo in halos:
            row = {"halo": halo, **tile_stats(plan(scene, bundle, halo, tmp / "x.tif"))}
            c = ceiling(scene, bundle, halo, tmp)
            g = geoseg_e2e(scene, bundle, halo, tmp)
            row.update(ceiling_s=round(c, 2), ceiling_mpx_s=rate(c), geoseg_s=round(g, 2),
                       geoseg_mpx_s=rate(g), geoseg_over_ceiling=round(c / g, 3))
            out["halo_rows"].append(row)
            log(**row)
        base = out["halo_rows"][0]
        for row in out["halo_rows"]:
            row["measured_overhead"] = round(row["geoseg_s"] / base["geoseg_s"], 3)
            row["ceiling_overhead"] = round(row["ceiling_s"] / base["ceiling_s"], 3)
        main = dict(out["halo_rows"][-1])
        n = naive(scene, bundle, main_halo, tmp)
        main.update(naive_s=round(n, 2), naive_mpx_s=rate(n),
                    geoseg_over_naive=round(n / main["geoseg_s"], 3))
        log(naive_s=round(n, 2))
        if not args.no_cluster:
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                warm_geoseg(bundle, tmp, main_halo, client)
                g = geoseg_e2e(scene, bundle, main_halo, tmp, client)
            main.update(cluster_s=round(g, 2), cluster_mpx_s=rate(g),
                        cluster_over_ceiling=round(main["ceiling_s"] / g, 3),
                        cluster_over_naive=round(n / g, 3))
            log(cluster_s=round(g, 2))
        out["main"] = main
    if not args.no_jemalloc and Path(JEMALLOC).exists():
        j = run_child(size, main_halo, jemalloc=True)
        out["jemalloc"] = {
            "env": f"LD_PRELOAD={JEMALLOC} MALLOC_CONF={JEMALLOC_CONF}",
            **{f"{k}_s": round(v, 2) for k, v in j.items()},
            **{f"{k}_mpx_s": rate(v) for k, v in j.items()},
            "speedup_ceiling": round(main["ceiling_s"] / j["ceiling"], 3),
            "speedup_geoseg": round(main["geoseg_s"] / j["geoseg"], 3),
            "speedup_naive": round(main["naive_s"] / j["naive"], 3),
            "geoseg_over_ceiling": round(j["ceiling"] / j["geoseg"], 3),
            "geoseg_over_naive": round(j["naive"] / j["geoseg"], 3),
            "geoseg_jemalloc_over_naive_glibc": round(main["naive_s"] / j["geoseg"], 3),
        }
        log(jemalloc=out["jemalloc"])
    write_results(out, halos, args)


def write_results(out: dict, halos: list[int], args) -> None:
    import torch

    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU, no GPU"
    out.update(
        machine=machine, torch=torch.__version__, threads=THREADS,
        model="unet/resnet34 (random init), 4 bands uint16, 6 classes",
        config=f"tile {TILE}, halo {halos[-1]}, block {BLOCK}, batch {BATCH}, fp32, "
               "device cpu, trim stitching",
        scene=f"{out['scene_px']}² 4-band uint16 DEFLATE tiled (512) GeoTIFF, synthetic",
    )
    RESULTS.mkdir(exist_ok=True)
    name = "throughput-quick" if args.quick else "throughput"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    m = out["main"]
    lines = [
        f"Machine: {machine}; torch {out['torch']}, {THREADS} threads in every variant; "
        f"model {out['model']}; {out['config']}; scene {out['scene']}. glibc malloc unless "
        "noted. Mpx/s counts scene pixels once.",
        "",
        "| variant | seconds | Mpx/s | vs ceiling | vs naive |",
        "|---|---|---|---|---|",
        f"| model-only ceiling (same tiles, batch {BATCH}) | {m['ceiling_s']} | "
        f"{m['ceiling_mpx_s']} | 1 | {round(m['naive_s'] / m['ceiling_s'], 3)} |",
        f"| geoseg, client=None | {m['geoseg_s']} | {m['geoseg_mpx_s']} | "
        f"{m['geoseg_over_ceiling']} | {m['geoseg_over_naive']} |",
    ]
    if "cluster_s" in m:
        lines.append(f"| geoseg, LocalCluster 1 worker × {THREADS} torch threads | "
                     f"{m['cluster_s']} | {m['cluster_mpx_s']} | {m['cluster_over_ceiling']} | "
                     f"{m['cluster_over_naive']} |")
    lines.append(f"| naive loop (batch 1, boundless 512 reads, torch.argmax) | {m['naive_s']} | "
                 f"{m['naive_mpx_s']} | {round(m['ceiling_s'] / m['naive_s'], 3)} | 1 |")
    j = out.get("jemalloc")
    if j:
        lines += [
            f"| jemalloc: ceiling | {j['ceiling_s']} | {j['ceiling_mpx_s']} | "
            f"{round(m['ceiling_s'] / j['ceiling_s'], 3)} (vs glibc ceiling) | |",
            f"| jemalloc: geoseg, client=None | {j['geoseg_s']} | {j['geoseg_mpx_s']} | "
            f"{j['geoseg_over_ceiling']} (jemalloc ceiling) | {j['geoseg_over_naive']} "
            f"(jemalloc naive); {j['geoseg_jemalloc_over_naive_glibc']} (glibc naive) |",
            f"| jemalloc: naive | {j['naive_s']} | {j['naive_mpx_s']} | | |",
        ]
    lines += [
        "",
        "Overlap cost (tile 512 fixed; core = 512 − 2·halo; arithmetic = (core+2·halo)²/core²; "
        "`seen/px` = model pixels per output pixel on this scene, edge tiles trimmed):",
        "",
        "| halo | tiles | seen/px | arithmetic | ceiling s | geoseg s | geoseg Mpx/s | "
        "geoseg/ceiling | measured overhead (vs halo "
        f"{out['halo_rows'][0]['halo']}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["halo_rows"]:
        lines.append(f"| {r['halo']} | {r['tiles']} | {r['seen_per_output_px']} | "
                     f"{r['arithmetic']} | {r['ceiling_s']} | {r['geoseg_s']} | "
                     f"{r['geoseg_mpx_s']} | {r['geoseg_over_ceiling']} | "
                     f"{r['measured_overhead']} |")
    bound = "the model's forward pass (compute-bound)" if m["geoseg_over_ceiling"] >= 0.9 else \
        "something besides the model (I/O, writing or scheduling)"
    lines += ["", f"Limit hit (computed): in-process geoseg runs at {m['geoseg_over_ceiling']} × the "
              f"model-only ceiling, so its time is set by {bound}.", "", "ANALYSIS"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
