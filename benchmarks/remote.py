"""Reading a COG locally and from a loopback S3 server: Mpx/s per process, bytes fetched vs needed.

    python -m benchmarks.remote [--size 2048] [--block 512] [--repeat 2]

Writes a synthetic 4-band uint16 DEFLATE COG (``--block`` px tiles, geoseg's block size), puts
it into moto's S3 server on 127.0.0.1 (tests/s3server.py: a child process with a request log),
and reads every ``--block`` window once per pass, in one process, with geoseg's cloud options
(:func:`geoseg.remote.cloud_options`): from the local file, through ``s3://`` (/vsis3) and
through plain path-style ``http://`` (/vsicurl). Each remote pass reads a fresh copy of the
object (GDAL caches what it read per process). Bytes fetched are the server's response bodies;
bytes needed are the compressed tiles (``BLOCK_SIZE_x_y``) plus the header GDAL reads at open.

The server shares the machine's cores with the reader (moto is Python: it serves about as
fast as this reads), so the remote figures are a floor for a real store, not a forecast.
Results go to ``benchmarks/results/remote.json`` and ``remote.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


def write_cog(path: Path, size: int, block: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:size, 0:size]
    bands = [1000 + 500 * np.sin(x / (40 + 9 * b)) * np.cos(y / 55) + rng.normal(0, 60, x.shape)
             for b in range(4)]
    data = np.clip(np.stack(bands), 0, 65535).astype(np.uint16)
    with rasterio.open(path, "w", driver="COG", width=size, height=size, count=4,
                       dtype="uint16", crs="EPSG:32618", transform=from_origin(0, 0, 10, 10),
                       blocksize=block, compress="deflate") as dst:
        dst.write(data)


def needed_bytes(path: Path, block: int) -> int:
    import rasterio

    with rasterio.open(path) as src:
        n = src.height // block
        return sum(int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1))
                   for r in range(n) for c in range(n))


def read_all(gdal_path: str, size: int, block: int, options: Any) -> float:
    """Seconds to read every block window once (open included)."""
    import rasterio

    from geoseg.remote import cloud_env

    t0 = time.perf_counter()
    with cloud_env(options), rasterio.open(gdal_path) as src:
        for r in range(0, size, block):
            for c in range(0, size, block):
                src.read(window=((r, r + block), (c, c + block)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import rasterio

    from geoseg.remote import cloud_options
    from tests.s3server import BUCKET, start_server

    size, block = args.size, args.block
    mpx = size * size / 1e6
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cog = Path(tmp) / "scene.tif"
        write_cog(cog, size, block)
        tiles = needed_bytes(cog, block)
        server = start_server()
        try:
            os.environ.update(AWS_ACCESS_KEY_ID=server.key, AWS_SECRET_ACCESS_KEY=server.secret,
                              AWS_REGION="us-east-1")
            opts = cloud_options({"endpoint_url": server.endpoint}, environ={})
            for how in ("local", "s3", "http"):
                for _ in range(args.repeat):
                    if how == "local":
                        path, fetched = str(cog), None
                    else:
                        key = f"bench/{uuid.uuid4().hex}.tif"
                        server.upload(cog, key)
                        path = (f"/vsis3/{BUCKET}/{key}" if how == "s3"
                                else "/vsicurl/" + server.http_url(key))
                        server.clear()
                    seconds = read_all(path, size, block, opts)
                    log = server.requests() if how != "local" else []
                    fetched = sum(r["bytes"] for r in log) if how != "local" else None
                    rows.append({"source": how, "seconds": round(seconds, 3),
                                 "mpx_s": round(mpx / seconds, 1),
                                 "requests": len(log) if how != "local" else None,
                                 "bytes_fetched": fetched, "bytes_tiles": tiles,
                                 "file_bytes": cog.stat().st_size})
                    print(rows[-1], flush=True)
        finally:
            server.stop()
    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "cpus": len(os.sched_getaffinity(0)), "gdal": rasterio.__gdal_version__,
               "rasterio": rasterio.__version__,
               "load_1min_after": round(os.getloadavg()[0], 2)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "remote.json").write_text(json.dumps(
        {"args": vars(args), "machine": machine, "rows": rows}, indent=1) + "\n")
    lines = ["# Reading a COG locally and from a loopback S3 server (benchmarks/remote.py)",
             "", f"`python -m benchmarks.remote --size {size} --block {block} --repeat "
             f"{args.repeat}`: a {size}² 4-band uint16 DEFLATE COG, {block} px tiles, every "
             f"{block} px window read once per pass, one process, geoseg's cloud options.", "",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs, Python "
             f"{machine['python']}, rasterio {machine['rasterio']}, GDAL {machine['gdal']}, "
             f"load {machine['load_1min_after']} (1 min, after the run). "
             "The moto server (Python) runs on the same cores.", "",
             "| source | pass s | Mpx/s | requests | bytes fetched | tiles' bytes "
             "| fetched/tiles |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['bytes_fetched'] / r['bytes_tiles']:.3f}" if r["bytes_fetched"] else "-"
        lines.append(f"| {r['source']} | {r['seconds']} | {r['mpx_s']} | "
                     f"{r['requests'] if r['requests'] is not None else '-'} | "
                     f"{r['bytes_fetched'] if r['bytes_fetched'] is not None else '-'} | "
                     f"{r['bytes_tiles']} | {ratio} |")
    (RESULTS / "remote.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
