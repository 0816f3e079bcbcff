"""Benchmark: geoseg's block-wise vectorize vs rasterio's whole-mask ``shapes``.

    .venv/bin/python benchmarks/vectorize.py [--size 8192] [--block-size 2048]

Makes a coherent 5-class mask (smoothed noise, nodata corner), then runs each method in a fresh
subprocess and records Mpx/s and that process's peak RSS. Writes
``benchmarks/results/vectorize.json`` and appends a Markdown line to
``benchmarks/results/vectorize.md``.
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


def run_one(method: str, mask: str, out: str, block_size: int) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    start = time.perf_counter()
    if method == "rasterio-shapes":
        import rasterio
        import rasterio.features
        import shapely

        with rasterio.open(mask) as src:
            data = src.read(1)
            geoms = [shapely.geometry.shape(g) for g, _ in rasterio.features.shapes(
                data, mask=data != 255, transform=src.transform)]
        n = len(geoms)
    else:
        from geoseg.vectorize import vectorize_mask

        if method == "geoseg-2workers":
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                n = vectorize_mask(mask, out, block_size=block_size, client=client,
                                   overwrite=True).n_features
        else:
            n = vectorize_mask(mask, out, block_size=block_size, overwrite=True).n_features
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
        for method in ("rasterio-shapes", "geoseg-inprocess", "geoseg-2workers"):
            proc = subprocess.run(
                [sys.executable, __file__, "--block-size", str(args.block_size), "--one",
                 method, str(mask), str(Path(tmp) / f"{method}.gpkg")],
                capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["mpx_per_s"] = args.size**2 / 1e6 / r["seconds"]
            runs[method] = r
            print(method, r, flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} vCPU, " \
              f"Python {platform.python_version()}"
    doc = {"size": args.size, "block_size": args.block_size, "machine": machine, "runs": runs,
           "note": "rasterio-shapes: whole mask in RAM, polygons only (no merge, no file); "
                   "geoseg: block-wise, merged across seams, written to GeoPackage with style"}
    (RESULTS / "vectorize.json").write_text(json.dumps(doc, indent=2) + "\n")
    line = (f"| {time.strftime('%Y-%m-%d')} | {args.size}² blocks {args.block_size} | {machine} | "
            + " | ".join(f"{m}: {r['mpx_per_s']:.1f} Mpx/s, {r['features']} polys, peak RSS "
                         f"{r['peak_rss_mib']:.0f} MiB (+workers {r['peak_child_rss_mib']:.0f})"
                         for m, r in runs.items()) + " |\n")
    with open(RESULTS / "vectorize.md", "a") as f:
        f.write(line)
    print(line)


if __name__ == "__main__":
    main()
