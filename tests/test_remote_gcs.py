# ruff: noqa: F811  (the fixture imported below is a test argument by the same name)
"""``gs://`` against a loopback GCS emulator (gcp-storage-emulator in a child process on
127.0.0.1, with a request log: tests/gcsserver.py).

The store is named by ``STORAGE_EMULATOR_HOST`` alone, as Google's client libraries name an
emulator: gcsfs honours it for listing and writing, and geoseg maps it onto GDAL's
``CPL_GS_ENDPOINT`` (with ``GS_NO_SIGN_REQUEST=YES``) for ``/vsigs/`` reads, which the emulator
serves with HTTP ``Range``. The scenes of tests/test_remote_inputs.py are uploaded to a bucket;
a run must give the masks of the local run over the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from geoseg.batch.discover import discover
from geoseg.errors import ConfigError, SceneError
from geoseg.remote import call_with_retries, cloud_options, expand
from geoseg.remote.listing import filesystem

from .conftest import BANDS
from .gcsserver import BUCKET, GCSServer, gcs_server  # noqa: F401  (fixture)
from .test_hostile_cli import geoseg  # the CLI in this process: (exit status, output)
from .test_remote_inputs import COG, EXIT_SOME_FAILED, PREFIX, same_mask, stage_scenes
from .test_remote_outputs import SCENE_FILES, expected_keys, store_keys


@dataclass
class Bucket:
    """The scenes in the emulator under a fresh prefix, and the local reference run."""

    server: GCSServer
    prefix: str  # <unique>/
    local: Path
    bundle: Path
    reference: Path
    tmp: Path

    def uri(self, rel: str) -> str:
        return f"gs://{BUCKET}/{self.prefix}{rel}"


@pytest.fixture(scope="module")
def bucket(gcs_server: GCSServer, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("gcs")
    prefix, local, bundle, reference = stage_scenes(gcs_server.upload, tmp, "gcs")
    with pytest.MonkeyPatch.context() as mp:
        gcs_server.env(mp)
        yield Bucket(gcs_server, prefix, local, bundle, reference, tmp)


def uploads(server: GCSServer, root: str) -> list[str]:
    """Keys (relative to ``root``) uploaded under it, in the order the server received them
    (gcsfs uploads small objects with one multipart POST …/o)."""
    base = root.split("://", 1)[1].split("/", 1)[1]
    names = [r.get("name") or "" for r in server.requests()
             if r["method"] == "POST" and r["path"].endswith("/o") and r["status"] < 300]
    return [n[len(base):] for n in names if n.startswith(base)]


def test_storage_emulator_host_maps_onto_gdal_options() -> None:
    for host in ("127.0.0.1:9023", "http://127.0.0.1:9023", "http://127.0.0.1:9023/"):
        gdal = cloud_options(environ={"STORAGE_EMULATOR_HOST": host}).gdal
        assert gdal["CPL_GS_ENDPOINT"] == "http://127.0.0.1:9023/"
        assert gdal["GS_NO_SIGN_REQUEST"] == "YES"
    for unset in ("", "default"):  # gcsfs's "no emulator"
        assert "CPL_GS_ENDPOINT" not in cloud_options(
            environ={"STORAGE_EMULATOR_HOST": unset}).gdal
    with pytest.raises(ConfigError, match="STORAGE_EMULATOR_HOST 'ftp://x': expected"):
        cloud_options(environ={"STORAGE_EMULATOR_HOST": "ftp://x"})


def test_a_refused_read_names_googles_credentials_not_aws() -> None:
    def refused() -> None:
        raise OSError("HTTP response code: 403")

    for uri, names in (("gs://b/k.tif", "GOOGLE_APPLICATION_CREDENTIALS"),
                       ("s3://b/k.tif", "AWS_NO_SIGN_REQUEST")):
        with pytest.raises(SceneError) as err:
            call_with_retries(refused, uri)
        assert str(err.value).startswith(f"{uri}: access denied (HTTP 403); check ")
        assert names in str(err.value)


def test_a_bucket_prefix_and_a_glob_list_like_a_directory(bucket: Bucket) -> None:
    found = {s.name: s for s in discover([bucket.uri("scenes/")])}
    assert set(found) == {COG, PREFIX}
    assert found[PREFIX].files == tuple(bucket.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS)
    assert expand(bucket.uri("**/*_cog.tif")) == [bucket.uri(f"scenes/{COG}.tif")]
    assert [s.name for s in discover([bucket.uri("scenes/*_B0[23].tif")])] == [PREFIX]


def test_a_run_on_a_local_cluster_into_the_bucket_matches_the_local_run(bucket: Bucket) -> None:
    """`geoseg run gs://…/scenes/ gs://…/gone.tif --out gs://…/maps/` on a LocalCluster: the
    local masks, every object, each scene's marker uploaded last, the missing object failed
    alone in one line, the scenes read with range requests only; a re-run skips them all."""
    root = bucket.uri("maps/")
    gone = bucket.uri("elsewhere/gone.tif")
    bucket.server.clear()
    code, output = geoseg("run", bucket.uri("scenes/"), gone, "-m", bucket.bundle, "-o", root,
                          "--scratch", bucket.tmp / "scratch", "--workers", "1")
    assert code == EXIT_SOME_FAILED, output
    assert store_keys(root) == expected_keys((COG, PREFIX)) | {".geoseg/gone.failed.json"}
    fs = filesystem(root)
    base = root.split("://", 1)[1]
    got = bucket.tmp / "got"
    for name in (COG, PREFIX):
        (got / name).mkdir(parents=True)
        (got / name / f"{name}.tif").write_bytes(fs.cat_file(f"{base}{name}/{name}.tif"))
        same_mask(got, name, bucket.reference, name)
    report = json.loads(fs.cat_file(base + "report.json"))
    by_name = {e["scene"]: e for e in report["scenes"]}
    assert by_name[COG]["outputs"]["mask"] == f"{root}{COG}/{COG}.tif"
    error = by_name["gone"]["error"]
    assert error == f"{gone}: not found (HTTP 404); check the key or the prefix", error
    assert [line for line in output.splitlines() if "failed gone:" in line] == [
        f"failed gone: {error}"]
    # each scene's marker is its last object uploaded
    order = uploads(bucket.server, root)
    for name in (COG, PREFIX):
        mine = [k for k in order if k.startswith(f"{name}/")]
        assert len(mine) == len(SCENE_FILES) and mine[-1] == f"{name}/scene.json", order
    # GDAL read the scenes through /vsigs/ with ranges only (no whole download)
    scene_paths = {f"/{BUCKET}/{bucket.prefix}scenes/{f.name}" for f in bucket.local.iterdir()}
    reads = [r for r in bucket.server.requests() if r["path"] in scene_paths]
    assert reads and all(r["method"] == "GET" and r["range"] and r["status"] == 206
                         for r in reads), reads
    # resume: the markers are read from the bucket, nothing is read or uploaded again
    bucket.server.clear()
    code, output = geoseg("run", bucket.uri("scenes/"), "-m", bucket.bundle, "-o", root,
                          "--scratch", bucket.tmp / "scratch", "--scheduler", "synchronous")
    assert code == 0, output
    assert output.count("skipped") >= 2, output
    assert {k for k in uploads(bucket.server, root) if not k.startswith(".geoseg-probe-")} == {
        "report.json", "report.html", "catalog.json"}
    assert not [r for r in bucket.server.requests() if r["path"] in scene_paths and r["range"]]


def test_a_missing_bucket_stops_the_run_before_any_scene(bucket: Bucket) -> None:
    code, output = geoseg("run", bucket.local, "-m", bucket.bundle, "-o",
                          "gs://no-such-bucket-geoseg/maps/", "--scratch", bucket.tmp / "scratch",
                          "--scheduler", "synchronous")
    assert code == 1, output
    assert "error: gs://no-such-bucket-geoseg/maps/: no such bucket 'no-such-bucket-geoseg'; " \
        "create it or give another --out" in output
