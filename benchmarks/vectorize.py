"""Benchmark: geoseg's block-wise vectorize vs rasterio's whole-mask ``shapes``.

    .venv/bin/python benchmarks/vectorize.py [--size 8192] [--block-size 2048]

Makes a coherent 5-class mask (smoothed noise, nodata corner), then runs each method in a fresh
subprocess and records Mpx/s and that process's peak RSS. The worker rows start their
``LocalCluster`` with geoseg's allocator preload (``geoseg.allocator``: jemalloc where it is
installed), as ``geoseg run``'s local cluster does; under glibc's allocator the 1-worker row ran
14.1 s against 10.2 s with jemalloc on 2026-11-30. Writes
``benchmarks/results/vectorize.json`` and a Markdown table to ``benchmarks/results/vectorize.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WORKERS = {"geoseg-1worker": 1, "geoseg-2workers": 2}  # LocalCluster worker processes
CORES = {"rasterio-shapes": 1, "geoseg-inprocess": 1, **WORKERS}  # cores each method uses


def make_mask(path: Path, size: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from scipy import ndimage

    rng = np.random.default_rng(0)
    small = ndimage.gaussian_filter(rng.standard_normal((size // 8, size // 8)), 4)
    field = ndimage.zoom(small, 8, order=1)[:size, :size]
    data = np.digitize(field, np.quantile(field[::8, ::8], [0.2, 0.4, 0.6, 0.8])).astype("uint8")
    data[: size // 10, : size // 10] = 255
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="uint8", crs="EPSG:32633", nodata=255, tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate",
                       transform=from_origin(500_000, 4_600_000, 10, 10)) as dst:
        dst.write(data, 1)


def _warm() -> None:
    """Import what a vectorize task needs (imports are not what is measured)."""
    import pyogrio  # noqa: F401
    import rasterio.features  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import shapely  # noqa: F401

    import geoseg.vectorize.blocks  # noqa: F401


def run_one(method: str, mask: str, out: str, block_size: int) -> dict[str, float]:
    """One measurement in this (fresh) process; imports and worker start-up not timed."""
    import rasterio
    import rasterio.features
    import shapely

    from geoseg.vectorize import vectorize_mask

    _warm()
    if method == "rasterio-shapes":
        start = time.perf_counter()
        with rasterio.open(mask) as src:
            data = src.read(1)
            geoms = [shapely.geometry.shape(g) for g, _ in rasterio.features.shapes(
                data, mask=data != 255, transform=src.transform)]
        n = len(geoms)
    elif method in WORKERS:
        from distributed import Client, LocalCluster

        from geoseg.cluster import ALLOCATOR_PRELOAD

        with LocalCluster(n_workers=WORKERS[method], threads_per_worker=1, processes=True,
                          dashboard_address=":0", preload_nanny=[ALLOCATOR_PRELOAD]
                          ) as cluster, Client(cluster) as client:
            client.run(_warm)
            start = time.perf_counter()
            n = vectorize_mask(mask, out, block_size=block_size, client=client,
                               overwrite=True).n_features
            seconds = time.perf_counter() - start
    else:
        start = time.perf_counter()
        n = vectorize_mask(mask, out, block_size=block_size, overwrite=True).n_features
    if method not in WORKERS:
        seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "features": n, "peak_rss_mib": rss, "peak_child_rss_mib": kids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_mask(Path(args.make), args.size)
        return
    if args.one:
        print(json.dumps(run_one(*args.one, args.block_size)))
        return
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        mask = Path(tmp) / "mask.tif"
        # in a subprocess: Linux children inherit the parent's peak RSS through fork
        subprocess.run([sys.executable, __file__, "--size", str(args.size), "--make", str(mask)],
                       check=True)
        runs = {}
        for method in CORES:
            proc = subprocess.run(
                [sys.executable, __file__, "--block-size", str(args.block_size), "--one",
                 method, str(mask), str(Path(tmp) / f"{method}.gpkg")],
                capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["mpx_per_s"] = round(args.size**2 / 1e6 / r["seconds"], 2)
            r["mpx_per_s_per_core"] = round(r["mpx_per_s"] / CORES[method], 2)
            runs[method] = r
            print(method, r, flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} vCPU, " \
              f"Python {platform.python_version()}"
    doc = {"date": time.strftime("%Y-%m-%d"), "size": args.size, "block_size": args.block_size,
           "machine": machine, "runs": runs,
           "note": "rasterio-shapes: whole mask in RAM, polygons only (no merge, no file); "
                   "geoseg: block-wise, merged across seams, written to GeoPackage with style; "
                   "peak RSS of the measuring process, workers' peak as +workers"}
    (RESULTS / "vectorize.json").write_text(json.dumps(doc, indent=2) + "\n")
    base = runs["rasterio-shapes"]["mpx_per_s"]
    lines = [f"{doc['date']}, {machine}: {args.size}² coherent 5-class mask, blocks "
             f"{args.block_size}. {doc['note']}.", "",
             "| method | cores | seconds | Mpx/s | Mpx/s per core | vs shapes | polygons | "
             "peak RSS MiB (+workers) |", "|---|---|---|---|---|---|---|---|"]
    for m, r in runs.items():
        lines.append(f"| {m} | {CORES[m]} | {r['seconds']:.2f} | {r['mpx_per_s']} | "
                     f"{r['mpx_per_s_per_core']} | {r['mpx_per_s'] / base:.2f} | {r['features']} | "
                     f"{r['peak_rss_mib']:.0f} (+{r['peak_child_rss_mib']:.0f}) |")
    (RESULTS / "vectorize.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
