# ruff: noqa: F811  (the fixtures imported below are test arguments by the same names)
"""Faults at the level of a whole `geoseg run` over scenes in object storage.

Every server is a loopback child process started by the fixtures: the moto S3 server with its
request log (tests/s3server.py), a second one that checks signatures, and the fault proxy in
front of the first (tests/faultproxy.py: 503 on every k-th range request, counted). The
reference is the run over the same files on the local disk.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.remote.store import OutputRoot

from .conftest import write_raster
from .faultproxy import FaultProxy, fault_proxy  # noqa: F401  (fixture)
from .s3server import BUCKET, S3Server, s3_auth_server, s3_server  # noqa: F401  (fixtures)
from .test_remote_inputs import geoseg
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
    ``failed`` with one line naming its URI and cause; nothing of it under its final keys;
    the secret nowhere."""
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
    for name in SCENES:
        assert {f"{name}/{f.format(s=name)}" for f in SCENE_FILES} <= keys
        data, _, _ = remote_mask(root, name)
        assert np.array_equal(data, reference_mask(reference, name)), name
    text = output + json.dumps(report)
    for secret in (s3_server.secret, s3_auth_server.secret):
        assert secret not in text
