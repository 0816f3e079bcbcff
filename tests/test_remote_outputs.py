# ruff: noqa: F811  (the fixture imported below is a test argument by the same name)
"""Outputs to object storage: `geoseg run … --out s3://bucket/prefix/` into the loopback S3
server (moto in its own process, with a request log), on a real LocalCluster, against the same
scenes mapped into a local folder.

Each scene is built in a local scratch folder and uploaded, ``scene.json`` last (the completion
marker); resume, ``--split`` jobs and the report read the markers from the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.errors import OutputError, SceneError
from geoseg.remote.listing import filesystem
from geoseg.remote.store import OutputRoot

from .conftest import write_raster
from .s3server import (  # noqa: F401  (fixtures)
    BUCKET,
    S3Server,
    s3_auth_server,
    s3_server,
)
from .stacvalid import validate_tree
from .test_hostile_cli import geoseg  # the CLI in this process: (exit status, output)
from .test_run import pixels, tiny_bundle

H, W = 96, 128
SCENES = ("scene0", "scene1", "scene2")
EXIT_SOME_FAILED = 3
GEOSEG = str(Path(sys.executable).parent / "geoseg")
#: Every file of a finished scene, relative to its folder.
SCENE_FILES = ("{s}.tif", "{s}.tif.aux.xml", "{s}.gpkg", "{s}.qml", "quicklook.png", "mask.png",
               "stac.json", "scene.json")
ROOT_FILES = ("report.json", "report.html", "catalog.json")


@dataclass
class Outs:
    """The loopback server, the local scenes and model, and the local reference run."""

    server: S3Server
    tmp: Path
    scenes: Path
    bundle: Path
    reference: Path

    def root(self, label: str) -> str:
        """A fresh output root URI (``s3://BUCKET/<label>-<unique>/maps/``)."""
        return f"s3://{BUCKET}/{label}-{uuid.uuid4().hex[:8]}/maps/"

    def run(self, root: str, *args: object) -> tuple[int, str]:
        return geoseg("run", self.scenes, "-m", self.bundle, "-o", root,
                      "--scratch", self.tmp / "scratch", *args)


@pytest.fixture(scope="module")
def outs(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("remote-out")
    scenes = tmp / "scenes"
    scenes.mkdir()
    for k, name in enumerate(SCENES):
        write_raster(scenes / f"{name}.tif", pixels(k, H, W), block=64)
    bundle = tiny_bundle(tmp / "tiny.safetensors")
    with pytest.MonkeyPatch.context() as mp:
        s3_server.env(mp)
        reference = tmp / "reference"
        code, output = geoseg("run", scenes, "-m", bundle, "-o", reference,
                              "--scheduler", "synchronous")
        assert code == 0, output
        yield Outs(s3_server, tmp, scenes, bundle, reference)


def expected_keys(names: tuple[str, ...] = SCENES) -> set[str]:
    return {f"{s}/{f.format(s=s)}" for s in names for f in SCENE_FILES} | set(ROOT_FILES)


def store_keys(root: str) -> set[str]:
    return OutputRoot(root).keys("")


def remote_mask(root: str, name: str) -> tuple[np.ndarray, object, object]:
    fs = filesystem(root)
    fs.invalidate_cache()  # fsspec's instance (and its listings) outlive each test
    data = fs.cat_file(f"{root.split('://', 1)[1]}{name}/{name}.tif")
    with rasterio.MemoryFile(data) as mem, mem.open() as src:
        return src.read(), src.crs, src.transform


def assert_same_masks(outs: Outs, root: str, names: tuple[str, ...] = SCENES) -> None:
    for name in names:
        with rasterio.open(outs.reference / name / f"{name}.tif") as ref:
            data, crs, transform = remote_mask(root, name)
            assert (crs, transform) == (ref.crs, ref.transform), name
            assert np.array_equal(data, ref.read()), name


def puts(server: S3Server, root: str) -> list[str]:
    """Keys PUT under ``root``, in the order the server received them."""
    prefix = "/" + root.split("://", 1)[1]
    return [r["path"][len(prefix):] for r in server.requests()
            if r["method"] == "PUT" and r["path"].startswith(prefix) and r["status"] < 300]


def test_remote_run_uploads_every_output_marker_last_and_matches_the_local_run(
        outs: Outs, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = outs.root("full")
    outs.server.clear()
    code, output = outs.run(root, "--workers", "1")  # a LocalCluster
    assert code == 0, output
    keys = store_keys(root)
    assert keys == expected_keys(), sorted(keys ^ expected_keys())
    # the same files as the local run (which writes its catalog too)
    local = {p.relative_to(outs.reference).as_posix() for p in outs.reference.rglob("*")
             if p.is_file()}
    assert keys == local
    assert_same_masks(outs, root)
    # each scene's marker is its last object uploaded, and the report follows it
    order = puts(outs.server, root)
    for name in SCENES:
        mine = [i for i, k in enumerate(order) if k.startswith(f"{name}/")]
        assert len(mine) == len(SCENE_FILES), (name, order)
        assert order[mine[-1]] == f"{name}/scene.json", order
        assert any(k == "report.json" for k in order[mine[-1]:])
    # the scratch folder keeps no scene once uploaded
    scratch = next((outs.tmp / "scratch").iterdir())
    assert not [p for p in scratch.iterdir() if p.name in SCENES]
    # the report names the store; the catalog and its Items validate as a tree
    fs = filesystem(root)
    report = json.loads(fs.cat_file(root.split("://", 1)[1] + "report.json"))
    assert report["out_dir"] == root
    assert [e["status"] for e in report["scenes"]] == ["ok"] * 3
    assert report["scenes"][0]["outputs"]["mask"] == root + "scene0/scene0.tif"
    tree = validate_tree(root + "catalog.json", read=fs.cat)
    catalog = json.loads(fs.cat_file(root.split("://", 1)[1] + "catalog.json"))
    assert {link["rel"]: link["href"] for link in catalog["links"]}["self"] == \
        root + "catalog.json"
    assert [link["href"] for link in catalog["links"] if link["rel"] == "item"] == [
        f"{root}{name}/stac.json" for name in SCENES]
    page = fs.cat_file(root.split("://", 1)[1] + "report.html").decode()
    assert 'href="scene0/scene0.tif"' in page  # relative: resolves where the prefix is served
    assert f"Outputs in <code>{root}</code>" in page
    assert sorted(tree.values()) == ["Catalog", "Feature", "Feature", "Feature"]
    item = json.loads(fs.cat_file(root.split("://", 1)[1] + "scene1/stac.json"))
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert links["self"] == root + "scene1/stac.json"
    assert links["root"] == links["parent"] == root + "catalog.json"
    assert item["assets"]["mask"]["href"] == "./scene1.tif"  # resolves against self
    # no secret in any object uploaded, the output or the log
    secret = outs.server.secret
    for key in keys:
        assert secret.encode() not in fs.cat_file(root.split("://", 1)[1] + key), key
    assert secret not in output and secret not in caplog.text


def test_rerun_skips_finished_scenes_reading_markers_from_the_store(outs: Outs) -> None:
    root = outs.root("rerun")
    assert outs.run(root, "--scheduler", "synchronous")[0] == 0
    outs.server.clear()
    code, output = outs.run(root, "--scheduler", "synchronous")
    assert code == 0, output
    assert output.count("skipped") >= 3
    written = [k for k in puts(outs.server, root) if not k.startswith(".geoseg-probe-")]
    assert set(written) == set(ROOT_FILES)  # no scene uploaded again: only the report


def test_split_jobs_into_one_root_give_the_full_set(outs: Outs) -> None:
    root = outs.root("split")
    assert outs.run(root, "--scheduler", "synchronous", "--split", "0/2")[0] == 0
    report = json.loads(filesystem(root).cat_file(root.split("://", 1)[1] + "report.json"))
    assert [e["status"] for e in report["scenes"]] == ["ok", "pending", "ok"]
    outs.server.clear()
    assert outs.run(root, "--scheduler", "synchronous", "--split", "1/2")[0] == 0
    assert store_keys(root) == expected_keys()
    # job 1 wrote its report twice (after its scene, at its end): job 0's records read once
    key_path = "/" + root.split("://", 1)[1]
    gets = [r["path"][len(key_path):] for r in outs.server.requests()
            if r["method"] == "GET" and r["path"].startswith(key_path + "scene")]
    assert gets.count("scene0/scene.json") == gets.count("scene2/scene.json") == 1, gets
    assert_same_masks(outs, root)
    report = json.loads(filesystem(root).cat_file(root.split("://", 1)[1] + "report.json"))
    assert [e["status"] for e in report["scenes"]] == ["ok"] * 3  # job 1 read job 0's markers


def test_a_scene_whose_input_is_missing_fails_alone(outs: Outs) -> None:
    root = outs.root("missing")
    gone = f"s3://{BUCKET}/nowhere-{uuid.uuid4().hex[:8]}/gone.tif"
    code, output = geoseg("run", outs.scenes / "scene0.tif", gone, "-m", outs.bundle,
                          "-o", root, "--scratch", outs.tmp / "scratch",
                          "--scheduler", "synchronous")
    assert code == EXIT_SOME_FAILED, output
    keys = store_keys(root)
    assert {k for k in keys if not k.startswith(".geoseg/")} == \
        expected_keys(("scene0",))
    assert keys - expected_keys(("scene0",)) == {".geoseg/gone.failed.json"}
    failure = OutputRoot(root).read_json(".geoseg/gone.failed.json")
    assert failure is not None and "not found" in failure["error"]
    assert outs.server.secret not in json.dumps(failure)


def test_a_missing_bucket_stops_the_run_before_any_scene(outs: Outs) -> None:
    code, output = geoseg("run", outs.scenes, "-m", outs.bundle, "-o",
                          "s3://no-such-bucket-geoseg/maps/", "--scratch", outs.tmp / "scratch",
                          "--scheduler", "synchronous")
    assert code == 1
    assert "no such bucket 'no-such-bucket-geoseg'" in output


def test_a_failed_upload_names_the_uri_and_leaves_no_marker(outs: Outs, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    for name in ("a.tif", "b.png", "scene.json"):
        (folder / name).write_bytes(b"x")
    root = OutputRoot(f"s3://{BUCKET}/upload-{uuid.uuid4().hex[:8]}/")
    done: list[str] = []

    def uploaded(key: str) -> None:  # b.png vanishes from scratch once a.tif is up
        done.append(key)
        (folder / "b.png").unlink(missing_ok=True)

    with pytest.raises(SceneError) as err:
        root.publish(folder, "s/", "scene.json", uploaded=uploaded)
    assert done == ["s/a.tif"]
    assert str(err.value).startswith(root.uri("s/b.png") + ": cannot upload")
    assert "\n" not in str(err.value) and outs.server.secret not in str(err.value)
    assert root.keys("s/") == set()  # a.tif removed again, no marker
    (folder / "b.png").write_bytes(b"x")
    root.publish(folder, "s/", "scene.json")
    assert root.keys("s/") == {"s/a.tif", "s/b.png", "s/scene.json"}
    (folder / "b.png").unlink()
    root.publish(folder, "s/", "scene.json")  # a stale object of the scene goes
    assert root.keys("s/") == {"s/a.tif", "s/scene.json"}


def test_output_root_refuses_http_and_collapsed_uris(outs: Outs) -> None:
    with pytest.raises(OutputError, match="not http"):
        OutputRoot("https://example.com/maps/")
    code, output = geoseg("run", outs.scenes, "-m", outs.bundle, "-o", "s3:/bucket/maps")
    assert code == 1 and "lost a '/'" in output


@pytest.mark.slow
def test_sigkill_mid_upload_then_rerun_completes_with_identical_outputs(outs: Outs) -> None:
    root = outs.root("kill")
    args = [GEOSEG, "run", str(outs.scenes), "-m", str(outs.bundle), "-o", root,
            "--scratch", str(outs.tmp / "scratch-kill"), "--scheduler", "synchronous",
            "--scenes-in-flight", "1"]
    env = dict(os.environ)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"):
        assert var in env  # the fixture's environment
    outs.server.clear()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    try:  # killed on what it has done: its first object of the second scene in the store
        while proc.poll() is None:
            if any(k.startswith("scene1/") for k in puts(outs.server, root)):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)  # a polling interval, not a wait for something to happen
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    keys = store_keys(root)
    store = OutputRoot(root)
    assert "scene0/scene.json" in keys and "scene2/scene.json" not in keys
    for name in SCENES:  # a marker only for a complete scene
        record = store.read_json(f"{name}/scene.json")
        if record is not None:
            assert {f"{name}/{p}" for p in record["outputs"].values()} <= keys
    outs.server.clear()
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    assert store_keys(root) == expected_keys()
    assert_same_masks(outs, root)
    again = puts(outs.server, root)
    assert not [k for k in again if k.startswith("scene0/")]  # finished before: skipped


def test_a_signed_urls_token_reaches_no_record_report_or_item(outs: Outs, tmp_path: Path) -> None:
    """The records name a signed URL redacted (the mask COG's GEOSEG_SCENE tag is written by
    geoseg/pipeline.py, outside this test's reach: left out here)."""
    key = f"signed-{uuid.uuid4().hex[:8]}/scene0.tif"
    outs.server.upload(outs.scenes / "scene0.tif", key)
    url = outs.server.http_url(key) + "?X-Amz-Signature=TOKEN-XYZ&sig=TOKEN-XYZ"
    root = outs.root("signed")
    code, output = geoseg("run", url, "-m", outs.bundle, "-o", root,
                          "--scratch", tmp_path, "--scheduler", "synchronous")
    assert code == 0, output
    assert "TOKEN-XYZ" not in output
    store = OutputRoot(root)
    for rel in ("scene0/scene.json", "scene0/stac.json", "report.json"):
        text = json.dumps(store.read_json(rel))
        assert "TOKEN-XYZ" not in text and "X-Amz-Signature=***" in text, rel
    record = store.read_json("scene0/scene.json")
    assert record is not None and record["bands"]["B02"] == "scene0.tif#1"


def test_an_unusable_scratch_folder_stops_the_run_naming_scratch(outs: Outs,
                                                                 tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, output = geoseg("run", outs.scenes, "-m", outs.bundle, "-o", outs.root("scratch"),
                          "--scratch", blocker / "sub", "--scheduler", "synchronous")
    assert code == 1, output
    assert "a parent of it is a file, not a directory; give a directory as --scratch" in output


def test_refused_credentials_stop_the_run_in_one_line_without_the_secret(
        outs: Outs, s3_auth_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-secret-0000000000000000000000000000"
    s3_auth_server.env(monkeypatch, secret=wrong)
    code, output = geoseg("run", outs.scenes, "-m", outs.bundle, "-o", f"s3://{BUCKET}/denied/",
                          "--scratch", outs.tmp / "scratch", "--scheduler", "synchronous")
    assert code == 1
    line = next(x for x in output.splitlines() if "cannot write the output root" in x)
    assert line.startswith(f"error: s3://{BUCKET}/denied/: cannot write the output root (")
    assert wrong not in output and s3_auth_server.secret not in output


@pytest.mark.slow
def test_demo_model_over_an_item_collection_of_s3_assets_into_s3(
        outs: Outs, tmp_path: Path) -> None:
    """The issue's case on a window of the real Sentinel-2 sample: `geoseg run items.json -m
    models/s2-demo-landcover.safetensors --out s3://…/maps/` on a LocalCluster, the item's
    assets in the store, gives the mask of the run over the same local band files."""
    from .test_run import crop_sentinel2
    from .test_stac_inputs import save_item_collection, stac_item

    demo = Path(__file__).resolve().parent.parent / "models" / "s2-demo-landcover.safetensors"
    local = tmp_path / "s2"
    crop_sentinel2(local)
    prefix = f"demo-{uuid.uuid4().hex[:8]}/"
    hrefs = {}
    for band in ("B02", "B03", "B04", "B08"):
        hrefs[band] = outs.server.upload(local / f"s2_{band}.jp2", f"{prefix}s2_{band}.jp2")
    items = save_item_collection([stac_item("s2", hrefs, "earth-search", None)],
                                 tmp_path / "items.json")
    reference = tmp_path / "reference"
    code, output = geoseg("run", local, "-m", demo, "-o", reference, "--scheduler",
                          "synchronous")
    assert code == 0, output
    root = outs.root("demo")
    code, output = geoseg("run", items, "-m", demo, "-o", root, "--scratch", tmp_path / "scr",
                          "--workers", "1")
    assert code == 0, output
    with rasterio.open(reference / "s2" / "s2.tif") as ref:
        data, crs, transform = remote_mask(root, "s2")
        assert (crs, transform) == (ref.crs, ref.transform)
        assert np.array_equal(data, ref.read())
    assert store_keys(root) == expected_keys(("s2",))
    fs = filesystem(root)
    assert sorted(validate_tree(root + "catalog.json", read=fs.cat).values()) == [
        "Catalog", "Feature"]
    record = OutputRoot(root).read_json("s2/scene.json")
    assert record is not None and record["stac"]["bands"]["B04"]["asset"] == "red"
    assert record["stac"]["bands"]["B04"]["href"] == hrefs["B04"]


def test_file_systems_follow_the_store_environment(outs: Outs,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One file system per store environment: a changed endpoint or key gets a new one (the
    cause of a run with refused keys writing through an earlier test's server)."""
    uri = f"s3://{BUCKET}/x"
    first = filesystem(uri)
    assert filesystem(uri) is first
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-secret-0000000000000000000000000")
    other = filesystem(uri)
    assert other is not first and filesystem(uri) is other
    monkeypatch.undo()
    assert filesystem(uri) is first
