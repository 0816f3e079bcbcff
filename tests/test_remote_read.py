# ruff: noqa: F811  (the fixtures imported below are test arguments by the same names)
"""Reading windows from object storage: a loopback S3 server (moto) and a fault-injection proxy.

Every server is a child process on 127.0.0.1 started by the fixtures (tests/s3server.py,
tests/faultproxy.py). GDAL remembers objects it has read (and failures) per process, so each
test reads objects under keys of its own.
"""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoseg.errors import SceneError
from geoseg.remote import RetryPolicy, cloud_env, cloud_options, expand, list_prefix
from geoseg.remote.gdal_env import CloudOptions
from geoseg.remote.retry import read_remote_window
from geoseg.remote.uri import gdal_path
from geoseg.sample import sentinel2_band_paths
from geoseg.tiling import Window

from .faultproxy import FaultProxy, fault_proxy  # noqa: F401  (fixture)
from .s3server import BUCKET, S3Server, s3_auth_server, s3_server  # noqa: F401  (fixtures)

BLOCK = 256
#: Windows crossing tile borders, and one inside a tile (row, col, height, width).
WINDOWS = [Window(0, 0, 100, 100), Window(200, 300, 300, 256), Window(700, 900, 68, 124)]


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-band uint16 tiled COG (768 x 1024, 256 px tiles, DEFLATE) of noisy smooth fields."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:768, 0:1024]
    bands = [(1000 + 500 * np.sin(x / (40 + 9 * b)) * np.cos(y / 55) + rng.normal(0, 60, x.shape))
             for b in range(4)]
    data = np.clip(np.stack(bands), 0, 65535).astype(np.uint16)
    path = tmp_path_factory.mktemp("cog") / "scene.tif"
    with rasterio.open(path, "w", driver="COG", width=1024, height=768, count=4, dtype="uint16",
                       crs="EPSG:32618", transform=from_origin(420000, 4150000, 10, 10),
                       blocksize=BLOCK, compress="deflate") as dst:
        dst.write(data)
    return path


def local(path: Path, w: Window) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(window=((w.row, w.row_stop), (w.col, w.col_stop)))


def fresh_key(name: str = "scene.tif") -> str:
    return f"t-{uuid.uuid4().hex[:12]}/{name}"


def opts(endpoint: str, **kw: object) -> CloudOptions:
    """Test options: tiny GDAL retry delays, no waiting."""
    kw.setdefault("retry_delay_s", 0.01)
    return cloud_options({"endpoint_url": endpoint}, environ={}, **kw)  # type: ignore[arg-type]


def no_sleep() -> tuple[list[float], RetryPolicy]:
    return [], RetryPolicy(attempts=3, base_delay_s=0.5)


def test_s3_and_http_windows_identical(cog: Path, s3_server: S3Server,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.env(monkeypatch)
    key = fresh_key()
    uri = s3_server.upload(cog, key)
    assert gdal_path(uri) == f"/vsis3/{BUCKET}/{key}"
    for w in WINDOWS:
        expected = local(cog, w)
        np.testing.assert_array_equal(read_remote_window(uri, w), expected)
        np.testing.assert_array_equal(read_remote_window(s3_server.http_url(key), w), expected)
    served = [r for r in s3_server.requests() if r["path"] == f"/{BUCKET}/{key}"]
    assert served and all(r["method"] != "GET" or r["range"] for r in served)  # ranges only


def test_sentinel2_jp2_band_window(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Sentinel-2 JP2 band file (untiled, 7.5 MB) read through s3://: identical, and
    GDAL fetches part of the file only (seen: 1.0 MB in 2 requests for 256 x 256 px)."""
    s3_server.env(monkeypatch)
    path = sentinel2_band_paths(("B04",))["B04"]
    uri = s3_server.upload(path, fresh_key(path.name))
    s3_server.clear()
    w = Window(500, 600, 256, 256)
    np.testing.assert_array_equal(read_remote_window(uri, w), local(path, w))
    fetched = sum(r["bytes"] for r in s3_server.requests())
    assert 0 < fetched < 0.3 * path.stat().st_size, fetched


def test_no_listing_and_no_sidecar_probe_on_open(cog: Path, s3_server: S3Server,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.env(monkeypatch)
    key = fresh_key()
    uri = s3_server.upload(cog, key)
    s3_server.clear()
    read_remote_window(uri, WINDOWS[0])
    log = s3_server.requests()
    assert log, "the read went to the server"
    assert all(r["path"] == f"/{BUCKET}/{key}" for r in log), log  # no LIST, no .aux.xml/.ovr


def tile_bytes(path: Path, w: Window) -> int:
    """Compressed bytes of the tiles ``w`` needs (pixel-interleaved: one tile holds 4 bands)."""
    total = 0
    with rasterio.open(path) as src:
        assert src.interleaving.name.lower() == "pixel"
        for r in range(w.row // BLOCK, (w.row_stop - 1) // BLOCK + 1):
            for c in range(w.col // BLOCK, (w.col_stop - 1) // BLOCK + 1):
                total += int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1))
    return total


@pytest.mark.parametrize("w", [Window(0, 0, 256, 256), Window(200, 300, 300, 256),
                               Window(256, 0, 256, 1024)])
def test_bytes_fetched_bounded(cog: Path, s3_server: S3Server, w: Window,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a window fetches ≤ 1.3 × its tiles' compressed bytes: nothing whole."""
    s3_server.env(monkeypatch)
    key = fresh_key()
    s3_server.upload(cog, key)
    with cloud_env(opts(s3_server.endpoint)), rasterio.open(f"/vsis3/{BUCKET}/{key}") as src:
        s3_server.clear()  # the header (one 32 KiB request at open) is not the window's
        pixels = src.read(window=((w.row, w.row_stop), (w.col, w.col_stop)))
    np.testing.assert_array_equal(pixels, local(cog, w))
    fetched = sum(r["bytes"] for r in s3_server.requests())
    needed = tile_bytes(cog, w)
    assert 0 < needed <= fetched <= 1.3 * needed, (fetched, needed)
    assert fetched < 0.5 * cog.stat().st_size  # at most a third of the tiles: not the file


def test_fault_proxy_gdal_retries(cog: Path, s3_server: S3Server, fault_proxy: FaultProxy,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """503 on every 3rd range request: GDAL's own retries give identical arrays."""
    s3_server.env(monkeypatch)
    key = fresh_key()
    uri = s3_server.upload(cog, key)
    fault_proxy.configure(fail_every=3, delay_ms=2)
    sleeps, policy = no_sleep()
    for w in WINDOWS:
        got = read_remote_window(uri, w, options=opts(fault_proxy.endpoint), policy=policy,
                                 sleep=sleeps.append)
        np.testing.assert_array_equal(got, local(cog, w))
    stats = fault_proxy.stats()
    assert stats["failed"] >= 1 and stats["range_requests"] >= 3 * stats["failed"], stats
    assert sleeps == []  # GDAL retried; our layer had nothing to do


def test_fault_proxy_wrapper_retries(cog: Path, s3_server: S3Server, fault_proxy: FaultProxy,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 burst longer than GDAL's retries: the wrapper reopens and rereads; identical."""
    s3_server.env(monkeypatch)
    key = fresh_key()
    uri = s3_server.upload(cog, key)
    fault_proxy.configure(fail_first=4)  # GDAL tries each request twice (max_retry=1)
    retries: list[int] = []
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=6, base_delay_s=0.5, jitter=0.5)
    for w in WINDOWS:
        got = read_remote_window(uri, w, options=opts(fault_proxy.endpoint, max_retry=1),
                                 policy=policy, sleep=sleeps.append,
                                 on_retry=lambda n, f: retries.append(n))
        np.testing.assert_array_equal(got, local(cog, w))
    stats = fault_proxy.stats()
    assert stats["failed"] == 4, stats
    # GDAL spends 2 of the 4 failures per attempt (a request and its retry): 2 attempts failed.
    # Without clearing GDAL's memory of the failure a third failed with no request at all.
    assert retries == [1, 2], retries
    assert len(sleeps) == len(retries)  # exponential backoff, half of it jitter:
    assert all(0.25 * 2 ** n <= s <= 0.5 * 2 ** n for n, s in enumerate(sleeps)), sleeps


def assert_one_clear_line(exc: SceneError, uri: str, cause: str, secret: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and msg.startswith(uri + ": ") and cause in msg, msg
    assert secret not in msg


def test_not_found_is_one_line_and_not_retried(s3_server: S3Server,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.env(monkeypatch)
    uri = f"s3://{BUCKET}/{fresh_key('missing.tif')}"
    sleeps, policy = no_sleep()
    with pytest.raises(SceneError) as info:
        read_remote_window(uri, WINDOWS[0], options=opts(s3_server.endpoint), policy=policy,
                           sleep=sleeps.append)
    assert_one_clear_line(info.value, uri, "not found (HTTP 404); check the key or the prefix",
                          s3_server.secret)
    assert sleeps == []


def test_wrong_credentials_403_never_shows_the_secret(
        cog: Path, s3_auth_server: S3Server, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    key = fresh_key()
    uri = s3_auth_server.upload(cog, key, public=False)
    wrong = "WRONGsecretWRONGsecretWRONGsecret0000000"
    s3_auth_server.env(monkeypatch, secret=wrong)
    caplog.set_level(logging.DEBUG)  # rasterio's and GDAL's debug messages too (CPL_DEBUG)
    debug = CloudOptions({**opts(s3_auth_server.endpoint).gdal, "CPL_DEBUG": "ON"})
    sleeps, policy = no_sleep()
    with pytest.raises(SceneError) as info:
        read_remote_window(uri, WINDOWS[0], options=debug, policy=policy, sleep=sleeps.append)
    assert_one_clear_line(info.value, uri, "invalid credentials (HTTP 403)", wrong)
    assert sleeps == []
    # the right secret, given as storage options: reads; neither secret in logs or reprs
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    good = cloud_options({"key": s3_auth_server.key, "secret": s3_auth_server.secret,
                          "endpoint_url": s3_auth_server.endpoint}, environ={})
    # the same object: GDAL's memory of the 403 was cleared
    np.testing.assert_array_equal(read_remote_window(uri, WINDOWS[0], options=good),
                                  local(cog, WINDOWS[0]))
    assert "GDAL signalled an error" in caplog.text  # the log did capture GDAL's words
    for secret in (wrong, s3_auth_server.secret):
        assert secret not in caplog.text
        assert secret not in repr(good) and secret not in str(good)
        assert secret not in repr(good.public()) and not good.public().credentials


@pytest.mark.slow  # a real cluster: 5 s on 2 busy cores
def test_dask_worker_reads_with_its_own_credentials(cog: Path, s3_auth_server: S3Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process of a real LocalCluster reads a private object with the credentials of
    its own environment; the task carries options without secrets, and its pickled graph holds
    neither the secret nor the key."""
    import pickle

    import dask
    from distributed import Client, LocalCluster

    uri = s3_auth_server.upload(cog, fresh_key(), public=False)
    s3_auth_server.env(monkeypatch)  # the workers inherit this environment, as on a node
    options = cloud_options(environ={"AWS_ENDPOINT_URL": s3_auth_server.endpoint}).public()
    task = dask.delayed(read_remote_window, pure=False)(uri, WINDOWS[0], options=options)
    blob = pickle.dumps(dict(task.__dask_graph__()))
    assert s3_auth_server.secret.encode() not in blob and s3_auth_server.key.encode() not in blob
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        got = client.compute(task).result(timeout=120)
    np.testing.assert_array_equal(got, local(cog, WINDOWS[0]))


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_unreachable_endpoint_retried_then_one_line(cog: Path, s3_server: S3Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.env(monkeypatch)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    uri = f"s3://{BUCKET}/{fresh_key()}"
    sleeps, policy = no_sleep()
    with pytest.raises(SceneError) as info:
        read_remote_window(uri, WINDOWS[0], options=opts(endpoint, max_retry=0), policy=policy,
                           sleep=sleeps.append)
    assert_one_clear_line(info.value, uri, "endpoint unreachable", s3_server.secret)
    assert "after 3 attempts" in str(info.value)
    assert len(sleeps) == 2


def test_list_prefix_and_glob(cog: Path, s3_server: S3Server,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.env(monkeypatch)
    root = f"t-{uuid.uuid4().hex[:12]}"
    bands = sentinel2_band_paths(("B02", "B03"))
    for path in bands.values():
        s3_server.upload(path, f"{root}/s2/{path.name}")
    s3_server.upload(cog, f"{root}/cogs/a/scene.tif")
    s3_server.upload(cog, f"{root}/cogs/b/scene.tif")
    readme = cog.with_name("README.txt")
    readme.write_text("not a raster")
    s3_server.upload(readme, f"{root}/s2/README.txt")
    base = f"s3://{BUCKET}/{root}"
    assert list_prefix(base + "/s2/") == [f"{base}/s2/s2_B02.jp2", f"{base}/s2/s2_B03.jp2"]
    assert expand(base + "/**/*.tif") == [f"{base}/cogs/a/scene.tif", f"{base}/cogs/b/scene.tif"]
    assert expand(base + "/s2/*.jp2") == list_prefix(base + "/s2")
    with pytest.raises(SceneError, match="no object matches"):
        expand(base + "/**/*.vrt")
    # a public bucket: no credentials, AWS_NO_SIGN_REQUEST as for GDAL (s3fs: anon=True)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    assert expand(base + "/s2/*.jp2") == [f"{base}/s2/s2_B02.jp2", f"{base}/s2/s2_B03.jp2"]
    with pytest.raises(SceneError, match="no such prefix"):
        list_prefix(base + "/nothing/")
    s3_server.upload(readme, f"{root}/docs/README.txt")
    with pytest.raises(SceneError, match="no raster"):
        list_prefix(base + "/docs/")


@pytest.mark.parametrize(("option", "ours", "other", "measure"), [
    # 2 x 2 tiles: the two runs of adjacent tiles in 2 requests; SINGLE_GET fetches the span
    # from the first tile to the last in 16 KiB chunks (seen: 17 requests, 8 x bytes)
    ("GDAL_HTTP_MULTIRANGE", "SERIAL", "SINGLE_GET", "tile_requests"),
    # no LIST of the prefix when opening (GDAL lists it to look for sidecar files)
    ("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR", "FALSE", "list_requests"),
])
def test_options_measured(cog: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch,
                          option: str, ours: str, other: str, measure: str) -> None:
    """Each option against another value: requests counted in the server's log."""
    s3_server.env(monkeypatch)
    counts = {}
    w = Window(0, 0, 2 * BLOCK, 2 * BLOCK)
    for value in (ours, other):
        key = fresh_key()
        s3_server.upload(cog, key)
        o = opts(s3_server.endpoint)
        o = CloudOptions({**o.gdal, option: value})
        s3_server.clear()
        with cloud_env(o), rasterio.open(f"/vsis3/{BUCKET}/{key}") as src:
            opened = len(s3_server.requests())
            pixels = src.read(window=((w.row, w.row_stop), (w.col, w.col_stop)))
        np.testing.assert_array_equal(pixels, local(cog, w))
        log = s3_server.requests()
        counts[value] = (len(log) - opened if measure == "tile_requests"
                         else sum(1 for r in log if "list-type" in r["query"]
                                  or "prefix=" in r["query"]))
    if measure == "tile_requests":
        assert counts[ours] == 2 and counts[other] >= 4 * counts[ours], counts
    else:
        assert counts[ours] == 0 and counts[other] >= 1, counts


def test_options_never_pickle_secrets() -> None:
    """What could go into a Dask task graph has no secret; the full options refuse to go."""
    import pickle

    o = cloud_options({"key": "AKIAEXAMPLE", "secret": "s3cr3t-VALUE", "anon": False},
                      environ={})
    with pytest.raises(TypeError, match="public"):
        pickle.dumps(o)
    blob = pickle.dumps(o.public())
    assert b"s3cr3t-VALUE" not in blob and pickle.loads(blob) == o.public()


# --- pure functions: no server ------------------------------------------------------------


@pytest.mark.parametrize(("uri", "path"), [
    ("s3://bucket/scenes/a.tif", "/vsis3/bucket/scenes/a.tif"),
    ("gs://bucket/a.tif", "/vsigs/bucket/a.tif"),
    ("az://container/dir/a.tif", "/vsiaz/container/dir/a.tif"),
    ("abfs://container@acct.dfs.core.windows.net/dir/a.tif", "/vsiaz/container/dir/a.tif"),
    ("https://host/x/a.tif?v=1", "/vsicurl/https://host/x/a.tif?v=1"),
    ("/data/scenes/a.tif", "/data/scenes/a.tif"),
])
def test_gdal_path(uri: str, path: str) -> None:
    assert gdal_path(uri) == path


def test_uri_helpers_keep_the_double_slash() -> None:
    from geoseg.remote import is_remote, join, name, parent

    assert is_remote("s3://b/k") and is_remote("HTTPS://h/x") and not is_remote("/tmp/s3:/x")
    assert not is_remote("C:\\data\\a.tif") and not is_remote(Path("s3://b/k"))
    assert join("s3://b/x/", "/y/", "z.tif") == "s3://b/x/y/z.tif"
    assert parent("s3://b/x/y.tif") == "s3://b/x" and parent("s3://b") == "s3://b"
    assert name("https://h/a/b.tif?sig=x") == "b.tif" and name("s3://b/x/") == "x"
    with pytest.raises(ValueError, match="no bucket"):
        gdal_path("s3:///key.tif")


@pytest.mark.parametrize(("text", "secret"), [
    ("https://user:hunter2@host/a.tif", "hunter2"),
    ("http://h/b/a.tif?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef01", "deadbeef01"),
    ("https://acct.blob.core.windows.net/c/a.tif?sv=2022-11-02&sig=abc%2Bdef%3D", "abc%2Bdef"),
    ("failed with AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
    ("DefaultEndpointsProtocol=https;AccountKey=Zm9vYmFy==;EndpointSuffix=x", "Zm9vYmFy"),
])
def test_redact(text: str, secret: str) -> None:
    from geoseg.remote import redact

    out = redact(text)
    assert secret not in out and "***" in out
    assert redact("s3://bucket/scenes/a.tif") == "s3://bucket/scenes/a.tif"


def test_endpoint_and_environment_mapping() -> None:
    from geoseg.errors import ConfigError

    env = {"AWS_ENDPOINT_URL": "https://minio.example:9000", "AWS_NO_SIGN_REQUEST": "YES",
           "AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "never-copied"}
    o = cloud_options(environ=env)
    assert {k: o.gdal[k] for k in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING",
                                   "AWS_NO_SIGN_REQUEST", "AWS_REGION")} == {
        "AWS_S3_ENDPOINT": "minio.example:9000", "AWS_HTTPS": "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_NO_SIGN_REQUEST": "YES", "AWS_REGION": "eu-west-1"}
    assert "never-copied" not in repr(o) and not o.credentials
    o = cloud_options({"endpoint_url": "http://127.0.0.1:9000", "anon": True}, environ=env)
    assert (o.gdal["AWS_S3_ENDPOINT"], o.gdal["AWS_HTTPS"]) == ("127.0.0.1:9000", "NO")
    with pytest.raises(ConfigError, match="unknown key.*secret_key"):
        cloud_options({"secret_key": "x"}, environ={})
    with pytest.raises(ConfigError, match="expected http"):
        cloud_options({"endpoint_url": "127.0.0.1:9000"}, environ={})


def test_retry_codes_only_where_gdal_knows_them() -> None:
    from geoseg.remote.gdal_env import base_options

    assert "GDAL_HTTP_RETRY_CODES" in base_options(gdal=(3, 10, 0))
    assert "GDAL_HTTP_RETRY_CODES" not in base_options(gdal=(3, 9, 3))
    assert "CPL_VSIL_CURL_ALLOWED_EXTENSIONS" not in base_options(allowed_extensions=None)


@pytest.mark.parametrize(("message", "transient", "cause"), [
    ("HTTP response code: 503", True, "server error"),
    ("Please reduce your request rate.", True, "server error"),
    ("HTTP response code: 429", True, "throttled"),
    ("CURL error: Failed to connect to 127.0.0.1 port 9: Could not connect to server", True,
     "unreachable"),
    ("CURL error: Operation timed out after 10001 milliseconds", True, "timed out"),
    ("The specified key does not exist.", False, "not found (HTTP 404)"),
    ("HTTP response code: 404", False, "not found (HTTP 404)"),
    ("The request signature we calculated does not match the signature you provided.", False,
     "invalid credentials"),
    ("HTTP response code: 403", False, "access denied"),
    ("'/vsis3/b/x.txt' not recognized as a supported file format.", False, "not a raster"),
])
def test_classify(message: str, transient: bool, cause: str) -> None:
    from rasterio.errors import RasterioIOError

    from geoseg.remote import classify

    f = classify(RasterioIOError(message))
    assert (f.transient, cause in f.cause) == (transient, True), f


def test_retry_policy_backoff_and_budget() -> None:
    import random

    from geoseg.remote import call_with_retries

    p = RetryPolicy(attempts=5, base_delay_s=1.0, max_delay_s=4.0, jitter=0.5)
    rng = random.Random(0)
    for n, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (5, 4.0)]:
        assert cap / 2 <= p.delay(n, rng) <= cap
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("HTTP response code: 503")
        return "ok"

    assert call_with_retries(flaky, "s3://b/k.tif", p, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    with pytest.raises(SceneError, match=r"^s3://b/k\.tif: server error \(HTTP 5xx\) after 2"):
        call_with_retries(lambda: (_ for _ in ()).throw(OSError("HTTP response code: 502")),
                          "s3://b/k.tif", RetryPolicy(attempts=2), sleep=sleeps.append)


def test_import_stays_light() -> None:
    """geoseg.remote loads neither rasterio nor fsspec nor boto3 until used."""
    import subprocess
    import sys

    code = ("import sys, geoseg.remote; "
            "print(sorted(m for m in ('rasterio', 'fsspec', 's3fs', 'boto3', 'botocore') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


def test_errors_redact_signed_urls() -> None:
    """A signed URL in the URI and in GDAL's message: neither signature reaches the error."""
    from rasterio.errors import RasterioIOError

    from geoseg.remote import call_with_retries

    uri = "https://h.example/b/a.tif?X-Amz-Credential=AKIAX%2F1&X-Amz-Signature=feedc0ffee99"

    def fail() -> None:
        raise RasterioIOError(f"Weird answer from {uri}&sig=abcdef0123 (code 418)")

    with pytest.raises(SceneError) as info:
        call_with_retries(fail, uri, RetryPolicy(attempts=1))
    msg = str(info.value)
    assert msg.startswith("https://h.example/b/a.tif?X-Amz-Credential=***&X-Amz-Signature=***: ")
    assert "feedc0ffee99" not in msg and "abcdef0123" not in msg and "AKIAX" not in msg
