# ruff: noqa: F811  (the fixtures imported below are test arguments by the same names)
"""Faults at the level of a whole `geoseg run` over scenes in object storage.

Every server is a loopback child process started by the fixtures: the moto S3 server with its
request log (tests/s3server.py), a second one that checks signatures, and the fault proxy in
front of the first (tests/faultproxy.py: 503 on every k-th range request, counted). The
reference is the run over the same files on the local disk. The last tests count, from the
server's request log, the bytes a whole run fetched for one COG (with overviews, 3 x 3 blocks)
against the compressed bytes of the tiles it needed (TileOffsets/TileByteCounts).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from geoseg.remote.listing import filesystem
from geoseg.remote.store import OutputRoot

from .conftest import write_raster
from .faultproxy import FaultProxy, fault_proxy  # noqa: F401  (fixture)
from .s3server import BUCKET, S3Server, s3_auth_server, s3_server  # noqa: F401  (fixtures)
from .test_hostile_cli import geoseg
from .test_remote_outputs import SCENE_FILES, remote_mask
from .test_remote_read import closed_port
from .test_run import pixels, tiny_bundle

H, W = 96, 128
SCENES = ("scene0", "scene1")
EXIT_SOME_FAILED = 3


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="module")
def local(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory):
    """Two small 4-band scenes (64 px tiles) and the tiny model; the run over the local files."""
    tmp = tmp_path_factory.mktemp("faults")
    scenes = tmp / "scenes"
    scenes.mkdir()
    for k, name in enumerate(SCENES):
        write_raster(scenes / f"{name}.tif", pixels(10 + k, H, W), block=64)
    bundle = tiny_bundle(tmp / "tiny.safetensors")
    reference = tmp / "reference"
    with pytest.MonkeyPatch.context() as mp:
        s3_server.env(mp)
        code, output = geoseg("run", scenes, "-m", bundle, "-o", reference,
                              "--scheduler", "synchronous")
    assert code == 0, output
    return tmp, scenes, bundle, reference


def reference_mask(reference: Path, name: str) -> np.ndarray:
    with rasterio.open(reference / name / f"{name}.tif") as src:
        return src.read()


@pytest.mark.slow  # a LocalCluster and GDAL's retry delays: 25 s on 2 busy cores
def test_a_run_through_a_proxy_failing_every_third_range_request_gives_identical_masks(
        local, s3_server: S3Server, fault_proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request of the run (listing, HEADs, GDAL's range reads on the worker) goes through
    the proxy, which answers 503 SlowDown to every 3rd range GET: exit 0, the local masks."""
    tmp, scenes, bundle, reference = local
    prefix = unique("faulty")
    for name in SCENES:
        s3_server.upload(scenes / f"{name}.tif", f"{prefix}scenes/{name}.tif")
    s3_server.env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)  # workers inherit it
    fault_proxy.configure(fail_every=3, delay_ms=1)
    out = tmp / f"out-{prefix.rstrip('/')}"
    code, output = geoseg("run", f"s3://{BUCKET}/{prefix}scenes/", "-m", bundle, "-o", out,
                          "--workers", "1")
    stats = fault_proxy.stats()
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert {e["scene"]: e["status"] for e in report["scenes"]} == dict.fromkeys(SCENES, "ok")
    for name in SCENES:
        with rasterio.open(out / name / f"{name}.tif") as src:
            assert np.array_equal(src.read(), reference_mask(reference, name)), name
    # the faults were served: the run met (and outlived) 503s on its range reads
    assert stats["failed"] >= 2 and stats["range_requests"] >= 3 * stats["failed"], stats


@pytest.mark.slow  # a LocalCluster and the retries of the unreachable scene: 40 s
def test_missing_refused_and_unreachable_scenes_fail_alone_in_one_line(
        local, s3_server: S3Server, s3_auth_server: S3Server,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One run: two good scenes, a missing object, an object the (signature-checking) store
    refuses and one on a closed loopback port; outputs to ``s3://…/maps/``. Each bad scene is
    ``failed`` with one line naming its URI and cause; nothing of it under its final keys (its
    failure record only, under ``.geoseg/``); neither secret in the output nor in any object
    written."""
    tmp, scenes, bundle, reference = local
    prefix = unique("bad")
    good = [s3_server.upload(scenes / f"{n}.tif", f"{prefix}scenes/{n}.tif") for n in SCENES]
    missing = f"s3://{BUCKET}/{prefix}scenes/missing.tif"
    private = f"{prefix}private/refused.tif"
    s3_auth_server.upload(scenes / "scene0.tif", private, public=False)
    refused = s3_auth_server.http_url(private)  # unsigned: the store answers 403
    unreachable = f"http://127.0.0.1:{closed_port()}/b/{prefix}unreachable.tif"
    root = f"s3://{BUCKET}/{prefix}maps/"
    s3_server.env(monkeypatch)
    code, output = geoseg("run", *good, missing, refused, unreachable, "-m", bundle, "-o", root,
                          "--scratch", tmp / "scratch", "--workers", "1")
    assert code == EXIT_SOME_FAILED, output
    report = OutputRoot(root).read_json("report.json")
    assert report is not None
    by_name = {e["scene"]: e for e in report["scenes"]}
    assert {n: e["status"] for n, e in by_name.items()} == {
        **dict.fromkeys(SCENES, "ok"), "missing": "failed", "refused": "failed",
        "unreachable": "failed"}, output
    for name, uri, cause in ((
            "missing", missing, "not found (HTTP 404)"), ("refused", refused, "(HTTP 403)"),
            ("unreachable", unreachable, "endpoint unreachable")):
        error = by_name[name]["error"]
        assert error.startswith(f"{uri}: ") and cause in error and "\n" not in error, error
        assert any(uri in line and cause in line for line in output.splitlines()), output
    keys = OutputRoot(root).keys("")
    for name in ("missing", "refused", "unreachable"):
        assert not any(k.startswith(f"{name}/") for k in keys), sorted(keys)
        failure = OutputRoot(root).read_json(f".geoseg/{name}.failed.json")
        assert failure is not None and failure["error"] == by_name[name]["error"], failure
    for name in SCENES:
        assert {f"{name}/{f.format(s=name)}" for f in SCENE_FILES} <= keys
        data, _, _ = remote_mask(root, name)
        assert np.array_equal(data, reference_mask(reference, name)), name
    fs = filesystem(root)
    fs.invalidate_cache()
    base = root.split("://", 1)[1]
    text = output + "".join(fs.cat_file(base + k).decode("latin-1") for k in sorted(keys))
    for secret in (s3_server.secret, s3_auth_server.secret):
        assert secret not in text


# --- bytes fetched for a whole run over one remote COG ----------------------------------------

COG_SIDE, COG_TILE = 1024, 128
#: ``--tile-size 256 --halo 32``: stride 192; ``--block-size 384``: 3 x 3 blocks whose read
#: windows (core ± 32 px) cross the 128 px tiles of the file, so neighbours share tiles.
RUN_GRID = ("--tile-size", "256", "--halo", "32", "--block-size", "384")


def write_cog(path: Path) -> Path:
    """A 4-band uint16 COG, 1024² px, 128 px tiles, DEFLATE, internal overviews (512, 256,
    128 px), noisy so that tiles compress to different sizes, as a real one."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:COG_SIDE, 0:COG_SIDE]
    bands = [1000 + 400 * np.sin(x / (30 + 7 * b)) * np.cos(y / (45 + 5 * b))
             + rng.normal(0, 40, x.shape) for b in range(4)]
    data = np.clip(np.stack(bands), 1, 30000).astype(np.uint16)
    with rasterio.open(path, "w", driver="COG", width=COG_SIDE, height=COG_SIDE, count=4,
                       dtype="uint16", crs="EPSG:32618",
                       transform=rasterio.transform.from_origin(420000, 4150000, 10, 10),
                       blocksize=COG_TILE, compress="deflate",
                       overview_resampling="average") as dst:
        dst.write(data)
    return path


def tiles_of(path: Path, windows: list[tuple[int, int, int, int]], overview: int | None = None
             ) -> dict[tuple[int, int], int]:
    """``(row, col)`` → compressed bytes of each tile of ``path`` (an overview level, 0-based,
    or the full resolution) meeting the windows ``(row0, row1, col0, col1)``, clipped."""
    tiles: dict[tuple[int, int], int] = {}
    with rasterio.open(path, overview_level=overview) as src:
        assert src.interleaving.name.lower() == "pixel"  # one tile holds the 4 bands
        th, tw = src.block_shapes[0]
        for r0, r1, c0, c1 in windows:
            r0, r1, c0, c1 = max(r0, 0), min(r1, src.height), max(c0, 0), min(c1, src.width)
            for r in range(r0 // th, (r1 - 1) // th + 1):
                for c in range(c0 // tw, (c1 - 1) // tw + 1):
                    tiles[r, c] = int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1))
    return tiles


def block_windows(path: Path, bundle: Path) -> list[tuple[int, int, int, int]]:
    """The read windows (core + halo) of the run's blocks, as geoseg plans them."""
    from geoseg.config import PredictConfig
    from geoseg.models.bundle import check_bundle
    from geoseg.pipeline import plan_scene
    from geoseg.scene import open_scene

    info = check_bundle(bundle)
    cfg = PredictConfig(tile_size=256, halo=32, block_size=384)
    grid = plan_scene(open_scene(path), info, cfg, info.align)
    assert len(grid) == 9
    return [(b.read.row, b.read.row_stop, b.read.col, b.read.col_stop) for b in grid.blocks()]


def overview_span(path: Path, overview: int) -> tuple[int, int]:
    """``[first, last)`` byte offsets of an overview level's tiles in the file."""
    with rasterio.open(path, overview_level=overview) as src:
        rows, cols = (-(-n // m) for n, m in zip(src.shape, src.block_shapes[0], strict=True))
        spans = [(int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)),
                  int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1)))
                 for r in range(rows) for c in range(cols)]
    return min(o for o, _ in spans), max(o + n for o, n in spans)


def byte_range(request: dict[str, Any]) -> tuple[int, int]:
    """``[start, stop)`` of a request's ``Range: bytes=a-b`` header."""
    a, b = request["range"].split("=", 1)[1].split("-")
    return int(a), int(b) + 1


@pytest.fixture(scope="module")
def cog_run(local, s3_server: S3Server):
    """`geoseg run` over one COG in the store on a LocalCluster; the store's log of its object."""
    tmp, _, bundle, _ = local
    cog = write_cog(tmp / "cog.tif")
    key = f"{unique('bytes')}cog.tif"
    uri = s3_server.upload(cog, key)
    with pytest.MonkeyPatch.context() as mp:
        s3_server.env(mp)
        s3_server.clear()
        code, output = geoseg("run", uri, "-m", bundle, "-o", tmp / f"out-{key.split('/')[0]}",
                              *RUN_GRID, "--workers", "1")
        log = [r for r in s3_server.requests() if r["path"] == f"/{BUCKET}/{key}"]
    assert code == 0, output
    return cog, bundle, log


@pytest.mark.slow  # a LocalCluster over a 1024² scene: 30 s on 2 busy cores
def test_a_run_over_a_remote_cog_reads_ranges_and_no_overview(cog_run) -> None:
    """Only ranged GETs, and none for the overviews: the quick-look is summed from the pixels
    the block tasks read (geoseg.thumb), not read again. (The first full-resolution tile's
    request starts at /vsicurl's 16 KiB chunk boundary, so it may carry the overviews' last
    bytes: less than one chunk in all, where the quick-look used to read a whole level.)"""
    cog, _, log = cog_run
    gets = [r for r in log if r["method"] == "GET"]
    assert gets and all(r["range"] and r["status"] == 206 for r in gets), log
    first, last = overview_span(cog, 0)  # the levels lie before the full resolution
    covered = sorted(byte_range(r) for r in gets
                     if byte_range(r)[0] < last and byte_range(r)[1] > first)
    overview_bytes = sum(min(b, last) - max(a, first) for a, b in covered)
    assert overview_bytes < 16384 <= last - first, (covered, first, last)


@pytest.mark.slow
def test_a_run_over_a_remote_cog_fetches_at_most_1_3_times_the_tiles_it_needs(
        cog_run) -> None:
    """Bytes the store sent for the scene ≤ 1.3 × the compressed bytes of the tiles needed: the
    full-resolution tiles meeting any block's read window (core + halo; each tile once). The
    quick-look needs none of its own (summed from the blocks' pixels)."""
    cog, bundle, log = cog_run
    fetched = sum(r["bytes"] for r in log)
    windows = block_windows(cog, bundle)
    needed = sum(tiles_of(cog, windows).values())
    per_block = sum(sum(tiles_of(cog, [w]).values()) for w in windows)
    why = (f"fetched {fetched} B in {len(log)} requests; needed {needed} B (tiles of the blocks; "
           f"{per_block} counted per block); file {cog.stat().st_size} B")
    assert 0 < needed <= fetched <= 1.3 * needed, why
