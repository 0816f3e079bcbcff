# ruff: noqa: F811  (the fixture imported below is a test argument by the same name)
"""Scenes given as URIs: `geoseg run` over objects in a loopback S3 server (real moto server in
its own process, real GDAL /vsis3/ and /vsicurl/ reads, real LocalCluster), against the same
files read locally.

One bucket prefix holds a small 4-band GeoTIFF (``cog.tif``, 64 px tiles) and a Sentinel-2-named
set of band files (B08 at 20 m, resampled on read). The local run over the same files is the
reference: every remote way of naming them (a prefix, a glob, a path-style https URL, a STAC
ItemCollection whose hrefs are ``s3://``) must give the very same masks.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoseg.batch.discover import discover
from geoseg.batch.report import _same_inputs
from geoseg.batch.sources import open_source
from geoseg.batch.state import fingerprint, object_stamp
from geoseg.errors import ConfigError, SceneError
from geoseg.remote.gdal_env import cloud_options
from geoseg.scene import is_uri, open_band_files, open_scene, read_window
from geoseg.tiling import Window

from .conftest import BANDS, write_raster
from .s3server import BUCKET, S3Server, s3_server  # noqa: F401  (fixture)
from .test_hostile_cli import geoseg  # the CLI in this process: (exit status, output)
from .test_run import pixels, tiny_bundle
from .test_stac_inputs import save_item_collection, stac_item

H, W = 96, 128
EXIT_SOME_FAILED = 3
PREFIX = "T18XYZ_20200101T101021"
#: The 4-band raster. Its name carries the acquisition time: the STAC Item writer
#: (geoseg/batch/stac.py scene_datetime) opens an undated scene's first file with rasterio
#: outside the cloud GDAL options, see test_an_undated_remote_raster_gets_its_stac_item.
COG = "S2B_20200101T101021_cog"


def write_scenes(folder: Path) -> Path:
    """``COG.tif`` (4 unnamed bands) and ``PREFIX_B0n.tif`` band files, B08 at 20 m."""
    folder.mkdir(parents=True, exist_ok=True)
    write_raster(folder / f"{COG}.tif", pixels(3, H, W), block=64)
    data = pixels(5, H, W)
    for k, band in enumerate(BANDS):
        plane, transform = data[k : k + 1], from_origin(420000.0, 4150000.0, 10.0, 10.0)
        if band == "B08":
            plane, transform = plane[:, ::2, ::2], from_origin(420000.0, 4150000.0, 20.0, 20.0)
        write_raster(folder / f"{PREFIX}_{band}.tif", plane, transform, block=64)
    return folder


def mask(out: Path, name: str) -> np.ndarray:
    with rasterio.open(out / name / f"{name}.tif") as src:
        return src.read()


def same_mask(a: Path, a_name: str, b: Path, b_name: str) -> None:
    """The two runs' masks: same pixels, CRS and transform."""
    with rasterio.open(a / a_name / f"{a_name}.tif") as x, \
            rasterio.open(b / b_name / f"{b_name}.tif") as y:
        assert (x.crs, x.transform, x.shape) == (y.crs, y.transform, y.shape)
        assert np.array_equal(x.read(), y.read()), (a_name, b_name)


@dataclass
class Store:
    """The objects of this module in the loopback server, and the local reference run."""

    server: S3Server
    root: str  # s3://BUCKET/<unique>/
    key_root: str  # <unique>/
    bundle: Path
    local: Path  # the scenes, locally
    reference: Path  # `geoseg run` output over ``local``

    def uri(self, rel: str) -> str:
        return f"{self.root}{rel}"


def stage_scenes(upload: Callable[[Path, str], object], tmp: Path, tag: str
                 ) -> tuple[str, Path, Path, Path]:
    """The remote tests' case: :func:`write_scenes` under ``tmp``, each file uploaded with
    ``upload(path, key)`` under a fresh ``<tag>-<hex>/scenes/`` prefix, the tiny bundle, and
    the local run they are compared with. Returns ``(prefix, local folder, bundle, the local
    run's output folder)``."""
    local = write_scenes(tmp / "scenes")
    prefix = f"{tag}-{uuid.uuid4().hex[:8]}/"
    for f in sorted(local.iterdir()):
        upload(f, f"{prefix}scenes/{f.name}")
    bundle = tiny_bundle(tmp / "tiny.safetensors")
    reference = tmp / "reference"
    code, output = geoseg("run", local, "-m", bundle, "-o", reference,
                          "--scheduler", "synchronous")
    assert code == 0, output
    return prefix, local, bundle, reference


@pytest.fixture(scope="module")
def store(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory):
    """Scenes uploaded under a fresh prefix; the environment pointed at the server (only
    ``AWS_*`` variables, as a user would: geoseg maps ``AWS_ENDPOINT_URL`` for GDAL)."""
    unique, local, bundle, reference = stage_scenes(
        s3_server.upload, tmp_path_factory.mktemp("remote"), "remote-inputs")
    with pytest.MonkeyPatch.context() as mp:
        s3_server.env(mp)
        yield Store(s3_server, f"s3://{BUCKET}/{unique}", unique, bundle, local, reference)


def written_text(*folders: Path) -> str:
    """Every file written under ``folders``, as text (binary files decoded loosely)."""
    return "\n".join(f.read_bytes().decode("latin-1") for folder in folders
                     for f in sorted(folder.rglob("*")) if f.is_file())


# --- discovery, opening, fingerprints (no run) ----------------------------------------------------

def test_a_prefix_lists_rasters_and_groups_band_files_keeping_uris(store) -> None:
    found = {s.name: s for s in discover([store.uri("scenes/")])}
    assert set(found) == {COG, PREFIX}
    cog, bands = found[COG], found[PREFIX]
    assert (cog.kind, cog.path, cog.files) == ("raster", store.uri(f"scenes/{COG}.tif"),
                                              (store.uri(f"scenes/{COG}.tif"),))
    assert bands.kind == "bands" and bands.path == store.uri("scenes")
    assert bands.files == tuple(store.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS)
    assert all(isinstance(f, str) for f in cog.files + bands.files)
    # a glob: the same objects; a URI with a doubled slash stays as written, never a Path
    assert [s.name for s in discover([store.uri("scenes/*_B0[23].tif")])] == [PREFIX]
    odd = store.uri(f"scenes//{COG}.tif")
    (scene,) = discover([odd])
    assert scene.path == odd and scene.files == (odd,)


def test_outputs_of_geoseg_in_the_store_are_never_scenes(store, tmp_path) -> None:
    """A glob over a bucket meets a scene folder (``scene.json`` beside its mask), a staging
    folder, a confidence raster and the run's own output prefix: none is a scene."""
    base = f"{store.key_root}globbed/"
    raster = store.local / f"{COG}.tif"
    record = tmp_path / "scene.json"
    record.write_text(json.dumps({"scene": "old", "status": "ok", "outputs": {"mask": "old.tif"}}))
    for key in ("in/a.tif", "maps/old/old.tif", "maps/.partial-b/b.tif", "in/a.confidence.tif",
                "out/c/c.tif"):
        store.server.upload(raster, base + key)
    store.server.upload(record, base + "maps/old/scene.json")
    found = discover([f"s3://{BUCKET}/{base}**/*.tif"], exclude=[f"s3://{BUCKET}/{base}out/"])
    assert [s.files for s in found] == [(f"s3://{BUCKET}/{base}in/a.tif",)]
    # a record that is no geoseg record does not hide its folder
    record.write_text('{"hello": 1}')
    store.server.upload(record, base + "maps/old/scene.json")
    assert len(discover([f"s3://{BUCKET}/{base}maps/old/"])) == 1


def test_an_empty_prefix_or_glob_is_one_clear_config_error(store) -> None:
    with pytest.raises(ConfigError, match=re.escape(store.uri("nothing/")) + ": no such prefix"):
        discover([store.uri("nothing/")])
    with pytest.raises(ConfigError, match="no object matches"):
        discover([store.uri("scenes/*.jp2")])


def test_open_scene_reads_a_uri_like_the_local_file(store) -> None:
    remote = open_scene(store.uri(f"scenes/{COG}.tif"))
    local = open_scene(store.local / f"{COG}.tif")
    assert remote.files == (store.uri(f"scenes/{COG}.tif"),)
    assert (remote.name, remote.shape, remote.transform, remote.crs_wkt, remote.dtype) == (
        local.name, local.shape, local.transform, local.crs_wkt, local.dtype)
    https = store.server.http_url(f"{store.key_root}scenes/{COG}.tif")
    assert is_uri(https) and open_scene(https).shape == local.shape
    # an object named without a raster extension (STAC hrefs may be), named directly
    bare = store.server.upload(store.local / f"{COG}.tif", f"{store.key_root}bare/B04")
    (source,) = discover([bare])
    assert (source.kind, source.name, open_scene(bare).shape) == ("raster", "B04", local.shape)


def test_storage_options_instead_of_the_endpoint_variable(store, monkeypatch) -> None:
    """A store named by ``storage_options`` (a config's ``storage.options``), not by
    ``AWS_ENDPOINT_URL``: listed, opened and read in those options; a task's copy is public."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    so = {"endpoint_url": store.server.endpoint}
    found = {s.name: s for s in discover([store.uri("scenes/")], storage_options=so)}
    assert set(found) == {COG, PREFIX}
    options = cloud_options(so)
    assert open_source(found[COG], BANDS, options=options).shape == (H, W)
    assert object_stamp(found[COG].path, so)[0] == (store.local / f"{COG}.tif").stat().st_size
    uri = store.uri(f"scenes/{PREFIX}_B08.tif")  # 20 m: read through a warped VRT
    remote = open_band_files(PREFIX, {b: store.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS},
                             options=options)
    local = open_band_files(PREFIX, {b: store.local / f"{PREFIX}_{b}.tif" for b in BANDS})
    assert remote.bands[-1].path == uri and remote.bands[-1].warp
    window = Window(-8, 40, 64, 100)  # past the left edge
    got = read_window(remote.bands, window, remote.height, remote.width, remote.crs_wkt,
                      remote.transform, options=pickle.loads(pickle.dumps(options.public())))
    want = read_window(local.bands, window, local.height, local.width, local.crs_wkt,
                       local.transform)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_a_missing_object_is_one_line_naming_the_uri(store) -> None:
    gone = store.uri("scenes/gone.tif")
    with pytest.raises(SceneError) as err:
        open_scene(gone)
    text = str(err.value)
    assert text.startswith(f"{gone}: not found") and "\n" not in text


def test_fingerprint_asks_the_store_and_changes_with_the_object(store, tmp_path) -> None:
    uri = store.uri(f"fp/{COG}.tif")
    store.server.upload(store.local / f"{COG}.tif", f"{store.key_root}fp/{COG}.tif")
    size, etag = object_stamp(uri)
    assert size == (store.local / f"{COG}.tif").stat().st_size and etag
    assert object_stamp(store.uri("fp/gone.tif")) == (None, None)
    before = fingerprint("sha", {}, [uri])
    store.server.clear()
    assert fingerprint("sha", {}, [uri]) == before
    assert {r["method"] for r in store.server.requests()} <= {"HEAD"}  # never a download
    other = write_raster(tmp_path / f"{COG}.tif", pixels(4, H, W), block=64)
    store.server.upload(other, f"{store.key_root}fp/{COG}.tif")
    assert fingerprint("sha", {}, [uri]) != before


def test_signed_urls_resume_across_signatures_and_no_message_shows_one(store) -> None:
    url = store.server.http_url(f"{store.key_root}scenes/{COG}.tif")
    first, again = f"{url}?sig=SIGNATURE-1", f"{url}?sig=SIGNATURE-2"
    assert fingerprint("sha", {}, [first]) == fingerprint("sha", {}, [again])
    assert fingerprint("sha", {}, [first]) != fingerprint("sha", {}, [url])
    (source,) = discover([first])
    record = {"inputs": [f"{url}?sig=***"]}  # a record that kept the URI redacted
    assert _same_inputs(record, source) and _same_inputs({"inputs": [again]}, source)
    assert not _same_inputs({"inputs": [store.uri(f"scenes/{COG}.tif")]}, source)
    with pytest.raises(SceneError) as err:
        open_scene(url.replace(".tif", "-gone.tif") + "?sig=SIGNATURE-3")
    assert "SIGNATURE" not in str(err.value) and "-gone.tif?sig=***: not found" in str(err.value)


def test_a_pickled_remote_scene_carries_no_credential(store) -> None:
    scene = open_scene(store.uri(f"scenes/{COG}.tif"))
    blob = pickle.dumps(scene)
    assert store.server.secret.encode() not in blob and store.server.key.encode() not in blob


# --- real runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_run(store, tmp_path_factory):
    """`geoseg run` on a local cluster over the prefix and a missing object; then again."""
    out = tmp_path_factory.mktemp("remote-out")
    gone = store.uri("elsewhere/gone.tif")
    with pytest.MonkeyPatch.context() as mp:
        store.server.env(mp)
        first = geoseg("run", store.uri("scenes/"), gone, "-m", store.bundle, "-o", out,
                       "--workers", "1")
        report = json.loads((out / "report.json").read_text())
        store.server.clear()
        second = geoseg("run", store.uri("scenes/"), gone, "-m", store.bundle, "-o", out,
                        "--scheduler", "synchronous")
        requests = store.server.requests()
    return out, gone, first, report, second, requests


@pytest.mark.slow
def test_a_prefix_on_a_local_cluster_maps_like_the_local_files(store, cluster_run) -> None:
    out, gone, (code, output), report, _, _ = cluster_run
    assert code == EXIT_SOME_FAILED, output
    by_name = {e["scene"]: e for e in report["scenes"]}
    assert {n: e["status"] for n, e in by_name.items()} == {
        COG: "ok", PREFIX: "ok", "gone": "failed"}
    same_mask(out, COG, store.reference, COG)
    same_mask(out, PREFIX, store.reference, PREFIX)
    assert by_name[COG]["inputs"] == [store.uri(f"scenes/{COG}.tif")]
    assert by_name[PREFIX]["inputs"] == [store.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS]
    error = by_name["gone"]["error"]
    assert error.startswith(f"{gone}: not found") and "\n" not in error, error
    assert sum(gone in line for line in output.splitlines()) >= 1, output


@pytest.mark.slow
def test_a_rerun_skips_finished_remote_scenes_reading_no_pixel(store, cluster_run) -> None:
    out, gone, _, _, (code, output), requests = cluster_run
    assert code == EXIT_SOME_FAILED, output
    report = json.loads((out / "report.json").read_text())
    assert {e["scene"]: e["status"] for e in report["scenes"]} == {
        COG: "skipped", PREFIX: "skipped", "gone": "failed"}
    scene_objects = {f"/{BUCKET}/{store.key_root}scenes/{COG}.tif"} | {
        f"/{BUCKET}/{store.key_root}scenes/{PREFIX}_{b}.tif" for b in BANDS}
    reads = [r for r in requests if r["path"] in scene_objects and r["method"] == "GET"]
    assert reads == [] and any(r["method"] == "HEAD" for r in requests), requests


def test_glob_https_url_and_stac_hrefs_map_like_the_local_files(store, tmp_path) -> None:
    https = store.server.http_url(f"{store.key_root}scenes/{COG}.tif")
    items = save_item_collection(
        [stac_item("item-1", {b: store.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS},
                   "planetary-computer", encoding=None)], tmp_path / "items.json")
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        store.server.env(mp)
        code, output = geoseg("run", store.uri("scenes/S2B_*.tif"), https, items, "-m",
                              store.bundle, "-o", out, "--scheduler", "synchronous")
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    inputs = {e["scene"]: e["inputs"] for e in report["scenes"]}
    assert inputs == {COG: [https], f"{COG}-2": [store.uri(f"scenes/{COG}.tif")],
                      "item-1": [store.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS]}
    same_mask(out, COG, store.reference, COG)
    same_mask(out, f"{COG}-2", store.reference, COG)
    same_mask(out, "item-1", store.reference, PREFIX)


def test_stac_documents_in_the_store_map_like_the_local_files(store, tmp_path) -> None:
    """An ItemCollection and a static Catalog kept in the bucket (as published next to their
    scenes: the catalog's child and item links and the assets' hrefs relative to the objects)
    are read through fsspec, child links too, and map as the local band files do."""
    import pystac

    hrefs = {b: store.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS}
    items = save_item_collection([stac_item("in-store", hrefs, "earth-search", encoding=None)],
                                 tmp_path / "items.json")
    collection_uri = store.server.upload(items, f"{store.key_root}stac/items.json")
    # a catalog written locally with relative links, then uploaded object by object
    cat = pystac.Catalog("run", "scenes in the store")
    rel = {b: f"../../../scenes/{PREFIX}_{b}.tif" for b in BANDS}  # from stac/cat/<item>/
    cat.add_item(stac_item("in-catalog", rel, "planetary-computer", encoding=None))
    local = tmp_path / "cat"
    cat.normalize_hrefs(str(local))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    for f in sorted(local.rglob("*.json")):
        store.server.upload(f, f"{store.key_root}stac/cat/{f.relative_to(local).as_posix()}")
    catalog_uri = store.uri("stac/cat/catalog.json")
    with pytest.MonkeyPatch.context() as mp:
        store.server.env(mp)
        found = {s.name: s for s in discover([collection_uri, catalog_uri])}
        assert set(found) == {"in-store", "in-catalog"}
        assert found["in-catalog"].files == tuple(hrefs.values())  # relative hrefs resolved
        out = tmp_path / "out"
        code, output = geoseg("run", collection_uri, catalog_uri, "-m", store.bundle, "-o", out,
                              "--scheduler", "synchronous")
    assert code == 0, output
    same_mask(out, "in-store", store.reference, PREFIX)
    same_mask(out, "in-catalog", store.reference, PREFIX)


@pytest.mark.slow
def test_the_secret_key_is_written_and_logged_nowhere(store, cluster_run, tmp_path,
                                                      caplog) -> None:
    out, _, (_, first), _, (_, second), _ = cluster_run
    secret = store.server.secret
    with caplog.at_level(logging.DEBUG), pytest.MonkeyPatch.context() as mp:
        store.server.env(mp)
        code, third = geoseg("-v", "run", store.uri("scenes/"), store.uri("elsewhere/x.tif"),
                             "-m", store.bundle, "-o", tmp_path, "--scheduler", "synchronous")
    assert code == EXIT_SOME_FAILED, third
    assert secret not in written_text(out, tmp_path)
    assert secret not in first + second + third + caplog.text


def test_an_undated_remote_raster_gets_its_stac_item(store, tmp_path) -> None:
    key = f"{store.key_root}undated/plain.tif"
    store.server.upload(store.local / f"{COG}.tif", key)
    with pytest.MonkeyPatch.context() as mp:
        store.server.env(mp)
        code, output = geoseg("run", f"s3://{BUCKET}/{key}", "-m", store.bundle, "-o", tmp_path,
                              "--scheduler", "synchronous")
    assert code == 0, output
    same_mask(tmp_path, "plain", store.reference, COG)


def test_a_signed_urls_signature_reaches_no_output(store, tmp_path) -> None:
    url = store.server.http_url(f"{store.key_root}scenes/{COG}.tif") + "?sig=SIGNATURE-XYZ"
    with pytest.MonkeyPatch.context() as mp:
        store.server.env(mp)
        code, output = geoseg("run", url, "-m", store.bundle, "-o", tmp_path,
                              "--scheduler", "synchronous")
    assert code == 0, output
    same_mask(tmp_path, COG, store.reference, COG)
    assert "SIGNATURE-XYZ" not in output + written_text(tmp_path)
