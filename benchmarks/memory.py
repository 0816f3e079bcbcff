"""Peak memory of every process against scene size: it must stay flat.

    python -m benchmarks.memory [--sizes 1000 5000] [--workers 2]

For each size, a fresh LocalCluster runs `predict_scene` on a synthetic 4-band uint16 DEFLATE
tiled GeoTIFF with a U-Net/ResNet-34 (random init). Each process reports its own lifetime peak
RSS (``ru_maxrss``) at the end, so nothing is sampled or missed. Results go to
``benchmarks/results/memory.json`` and ``memory.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

RESULTS = Path(__file__).parent / "results"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_scene(path: Path, size: int) -> None:
    """A coherent 4-band uint16 scene written strip by strip (never whole in memory)."""
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                   crs="EPSG:32618", transform=from_origin(400000, 4200000, 10, 10), tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", nodata=0)
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            y = np.arange(row, row + h, dtype=np.float32)[:, None]
            bands = [1000 + 400 * np.sin(x[None] / (40 + 9 * k) + k) * np.cos(y / (55 + 7 * k))
                     for k in range(4)]
            dst.write(np.stack(bands).astype("uint16"),
                      window=rasterio.windows.Window(0, row, size, h))


def measure(scene: Path, bundle: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    from geoseg.config import PredictConfig
    from geoseg.pipeline import predict_scene

    cfg = PredictConfig(tile_size=1024, halo=128, block_size=2048, batch_size=1)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        start = time.perf_counter()
        result = predict_scene(scene, bundle, scene.with_suffix(".mask.tif"), cfg, client=client,
                               overwrite=True, threads=max(1, 2 // workers))
        seconds = time.perf_counter() - start
        workers_peak = client.run(peak_rss_mib)
    return {
        "seconds": round(seconds, 1),
        "blocks": len(result.grid),
        "block_size": result.grid.block_size,
        "worker_peak_rss_mib": sorted(round(v, 1) for v in workers_peak.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "unet-r34.safetensors"
        init_bundle(bundle, arch="unet", encoder="resnet34",
                    bands=tuple(BandSpec(name=f"b{i}", mean=1000, std=300) for i in range(4)),
                    input_dtype="uint16",
                    classes=tuple(ClassSpec(id=i, name=f"c{i}", color=(i, i, i)) for i in range(6)),
                    tile_size=1024, halo=128)
        for size in args.sizes:
            scene = Path(tmp) / f"scene{size}.tif"
            write_scene(scene, size)
            row = {"size": size, "megapixels": round(size * size / 1e6, 1)}
            row.update(measure(scene, bundle, args.workers))
            row["client_peak_rss_mib"] = round(peak_rss_mib(), 1)  # lifetime peak, cumulative
            rows.append(row)
            print(json.dumps(row), flush=True)  # noqa: T201 (a script)
    machine = f"{platform.node()} {platform.machine()}, {__import__('os').cpu_count()} CPU, no GPU"
    out = {"benchmark": "memory", "machine": machine, "model": "unet/resnet34 (random init)",
           "config": "tile 1024, halo 128, block 2048 (→2304), batch 1, "
                     f"{args.workers} worker processes", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"Machine: {machine}; model {out['model']}; {out['config']}.", "",
             "| scene | Mpx | blocks | seconds | worker peak RSS (MiB) | client peak RSS (MiB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']}² | {r['megapixels']} | {r['blocks']} | {r['seconds']} | "
                     f"{', '.join(map(str, r['worker_peak_rss_mib']))} | {r['client_peak_rss_mib']} |")
    (RESULTS / "memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
