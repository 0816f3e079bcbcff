"""The run's STAC Catalog (geoseg.batch.catalog) on a real run, and offline STAC validation of
the catalog and of the Items geoseg writes (tests/stacvalid.py: no schema is fetched)."""

from __future__ import annotations

import copy
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pystac
import pytest
from pystac.errors import STACValidationError

from geoseg.batch import plan_batch, run_planned
from geoseg.batch.catalog import (
    CATALOG_JSON,
    catalog_dict,
    item_links,
    root_uri,
    with_item_links,
    write_catalog,
)

from .conftest import BANDS, write_raster
from .stacvalid import SchemaNotVendored, validate, validate_tree
from .test_run import pixels, tiny_bundle

H, W = 64, 80
#: The good scenes, in report order: a GeoTIFF in a UTM zone, band files whose names date them,
#: a GeoTIFF in a CRS with no EPSG code (the Item gets ``proj:wkt2``).
GOOD = ["alpha", "beta_20200101T101010", "gamma"]
CUSTOM_CRS = "+proj=tmerc +lat_0=0 +lon_0=-75.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m"
EXTENSIONS = {
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}


def _run(scenes: Path, bundle: Path, out: Path) -> dict:
    plan = plan_batch([scenes], bundle, out,
                      overrides={"cluster": {"scheduler": "synchronous"},
                                 "run": {"scenes_in_flight": 1},
                                 "predict": {"confidence": True}})
    _, report = run_planned(plan)
    return json.loads(report.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A real run: the :data:`GOOD` scenes and one that fails (every pixel nodata), then the
    same run again (its scenes ``skipped``). Returns the output folder and both reports."""
    d = tmp_path_factory.mktemp("catalog")
    bundle = tiny_bundle(d / "tiny.safetensors")
    scenes = d / "scenes"
    scenes.mkdir()
    write_raster(scenes / "alpha.tif", pixels(1, H, W), names=BANDS)
    (scenes / "beta").mkdir()
    for k, band in enumerate(BANDS):
        write_raster(scenes / "beta" / f"beta_20200101T101010_{band}.tif",
                     pixels(2, H, W)[k : k + 1])
    write_raster(scenes / "gamma.tif", pixels(3, H, W), crs=CUSTOM_CRS, names=BANDS)
    write_raster(scenes / "blank.tif", np.zeros((4, H, W), "uint16"), names=BANDS)
    out = d / "out"
    first = _run(scenes, bundle, out)
    second = _run(scenes, bundle, out)
    return out, first, second


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (schemas must come from disk)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def statuses(report: dict) -> dict[str, str]:
    return {e["scene"]: e["status"] for e in report["scenes"]}


def test_the_run_has_finished_and_failed_scenes(run):
    _, first, second = run
    assert statuses(first) == {**dict.fromkeys(GOOD, "ok"), "blank": "failed"}
    assert statuses(second) == {**dict.fromkeys(GOOD, "skipped"), "blank": "failed"}
    assert [e["scene"] for e in first["scenes"] if e["status"] == "ok"] == GOOD
    out = run[0]
    items = {n: json.loads((out / n / "stac.json").read_text(encoding="utf-8")) for n in GOOD}
    assert items["beta_20200101T101010"]["properties"]["datetime"] == "2020-01-01T10:10:10Z"
    assert "proj:wkt2" in items["gamma"]["properties"]  # no EPSG code
    assert "confidence" in items["alpha"]["assets"]


def test_the_run_writes_its_catalog_and_links_its_items_to_it(run, no_network):
    """run_planned writes catalog.json with the report; each Item's root and parent are it."""
    out = run[0]
    cat = json.loads((out / CATALOG_JSON).read_text(encoding="utf-8"))
    assert [link["href"] for link in cat["links"] if link["rel"] == "item"] == [
        f"./{n}/stac.json" for n in GOOD]
    for name in GOOD:
        item = json.loads((out / name / "stac.json").read_text(encoding="utf-8"))
        links = {link["rel"]: link["href"] for link in item["links"]}
        assert links["root"] == links["parent"] == "../catalog.json" and "self" not in links
    assert set(validate_tree(str(out / CATALOG_JSON)).values()) == {"Catalog", "Feature"}


def test_no_catalog_without_stac_items(tmp_path):
    bundle = tiny_bundle(tmp_path / "tiny.safetensors")
    (tmp_path / "scenes").mkdir()
    write_raster(tmp_path / "scenes" / "alpha.tif", pixels(1, H, W), names=BANDS)
    out = tmp_path / "out"
    plan = plan_batch([tmp_path / "scenes"], bundle, out,
                      overrides={"cluster": {"scheduler": "synchronous"},
                                 "run": {"stac": False}})
    run_planned(plan)
    assert (out / "report.json").is_file() and not (out / CATALOG_JSON).exists()


def test_local_catalog_links_every_finished_item_and_validates_offline(run, no_network):
    out, first, _ = run
    data = write_catalog(out, first["scenes"], header=first)
    path = out / CATALOG_JSON
    assert path.read_bytes() == data
    assert not [p.name for p in out.iterdir() if "catalog" in p.name and p != path]  # no temp
    cat = json.loads(data)
    assert validate(cat) == ["https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/"
                             "catalog.json"]
    assert cat["type"] == "Catalog"
    items = [link["href"] for link in cat["links"] if link["rel"] == "item"]
    assert items == [f"./{n}/stac.json" for n in GOOD]  # report order; blank failed
    assert [link["href"] for link in cat["links"] if link["rel"] == "root"] == [
        "./catalog.json"]
    assert not [link for link in cat["links"] if link["rel"] == "self"]  # self-contained
    assert "tiny.safetensors" in cat["description"]
    assert validate_tree(str(path)) == {
        str(path): "Catalog", **{str(out / n / "stac.json"): "Feature" for n in GOOD}}


def test_skipped_scenes_are_linked_too(run, tmp_path):
    out, first, second = run
    local = tmp_path / "out"
    shutil.copytree(out, local)
    write_catalog(local, second["scenes"], header=second)
    linked = json.loads((local / CATALOG_JSON).read_text(encoding="utf-8"))
    assert [link["title"] for link in linked["links"] if link["rel"] == "item"] == GOOD


def test_pystac_walks_the_catalog_to_every_item_and_their_assets_exist(run, tmp_path):
    out, first, _ = run
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # self-contained: it works wherever the folder goes
    write_catalog(moved, first["scenes"], header=first)
    catalog = pystac.Catalog.from_file(str(moved / CATALOG_JSON))
    items = list(catalog.get_items(recursive=True))
    assert sorted(i.id for i in items) == GOOD
    for item in items:
        assert Path(item.get_self_href()) == moved / item.id / "stac.json"
        assert {"mask", "vectors", "thumbnail", "mask-thumbnail"} <= set(item.assets)
        for key, asset in item.assets.items():
            href = Path(asset.get_absolute_href())
            assert href.is_file(), (item.id, key, href)
            assert href.parent == moved / item.id


def test_items_geoseg_writes_validate_offline_with_their_extensions(run, no_network):
    out, first, _ = run
    for name in GOOD:
        item = json.loads((out / name / "stac.json").read_text(encoding="utf-8"))
        checked = validate(item)
        assert checked[0] == "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
        assert set(checked[1:]) == EXTENSIONS == set(item["stac_extensions"])


@pytest.mark.parametrize("breaks", ["classification", "projection", "raster", "processing"])
def test_each_vendored_extension_schema_is_applied(run, no_network, breaks):
    out, _, _ = run
    item = json.loads((out / "alpha" / "stac.json").read_text(encoding="utf-8"))
    bad = copy.deepcopy(item)
    mask = bad["assets"]["mask"]
    if breaks == "classification":
        mask["classification:classes"][0]["color_hint"] = "not a colour"
    elif breaks == "projection":
        bad["properties"]["proj:shape"] = [64]
    elif breaks == "raster":
        mask["raster:bands"][0]["data_type"] = "uint7"
    else:
        bad["properties"]["processing:software"] = "geoseg"
    with pytest.raises(STACValidationError, match=f"stac-extensions.github.io/{breaks}/"):
        validate(bad)


def test_an_unvendored_schema_fails_loudly_without_fetching(run, no_network):
    out, _, _ = run
    item = json.loads((out / "alpha" / "stac.json").read_text(encoding="utf-8"))
    item["stac_extensions"].append("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    with pytest.raises(SchemaNotVendored, match="tests/stac_schemas/eo/v1.1.0/schema.json"):
        validate(item)
    with pytest.raises(AssertionError, match="network access attempted"):  # the guard holds
        socket.create_connection(("127.0.0.1", 9))


def test_items_with_catalog_links_point_back_and_validate(run, tmp_path, no_network):
    out, first, _ = run
    local = tmp_path / "out"
    shutil.copytree(out, local)
    write_catalog(local, first["scenes"], header=first)
    for name in GOOD:
        path = local / name / "stac.json"
        item = with_item_links(json.loads(path.read_text(encoding="utf-8")), name)
        assert [(link["rel"], link["href"]) for link in item["links"]] == [
            ("root", "../catalog.json"), ("parent", "../catalog.json")]
        validate(item)
        path.write_text(json.dumps(item), encoding="utf-8")
    for name in GOOD:
        item = pystac.Item.from_file(str(local / name / "stac.json"))
        root, parent = item.get_root(), item.get_parent()
        assert root is not None and parent is not None
        assert root.id == parent.id == "geoseg-run"
        assert Path(root.get_self_href()) == local / CATALOG_JSON
        assert sorted(i.id for i in root.get_items(recursive=True)) == GOOD


def test_remote_root_gives_absolute_uris_and_writes_nothing(run, tmp_path, monkeypatch,
                                                             no_network):
    out, first, _ = run
    monkeypatch.chdir(tmp_path)
    for given in ("s3://bucket/prefix/", "s3://bucket/prefix"):
        data = write_catalog(given, first["scenes"], header=first)
        cat = json.loads(data)
        validate(cat)
        hrefs = [(link["rel"], link["href"]) for link in cat["links"]]
        assert hrefs == [("root", "s3://bucket/prefix/catalog.json"),
                         ("self", "s3://bucket/prefix/catalog.json"),
                         *[("item", f"s3://bucket/prefix/{n}/stac.json") for n in GOOD]]
        read = pystac.Catalog.from_dict(cat)
        assert read.get_self_href() == "s3://bucket/prefix/catalog.json"
        assert [link.get_absolute_href() for link in read.get_item_links()] == [
            f"s3://bucket/prefix/{n}/stac.json" for n in GOOD]
    assert list(tmp_path.iterdir()) == []  # uploading is the caller's job
    store = {"s3://bucket/prefix/catalog.json": data}  # a bucket as the caller uploads it
    for name in GOOD:
        item = json.loads((out / name / "stac.json").read_text(encoding="utf-8"))
        store[f"s3://bucket/prefix/{name}/stac.json"] = json.dumps(
            with_item_links(item, name, "s3://bucket/prefix/")).encode()
    assert set(validate_tree("s3://bucket/prefix/catalog.json", store.__getitem__)) == set(store)
    assert item_links("alpha", root_uri("gs://b/maps")) == [
        {"rel": "self", "href": "gs://b/maps/alpha/stac.json", "type": "application/geo+json"},
        {"rel": "root", "href": "gs://b/maps/catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "gs://b/maps/catalog.json", "type": "application/json"}]


def test_remote_items_with_links_validate(run, no_network):
    out, _, _ = run
    item = json.loads((out / "alpha" / "stac.json").read_text(encoding="utf-8"))
    linked = with_item_links(item, "alpha", "s3://bucket/prefix/")
    validate(linked)
    assert pystac.Item.from_dict(linked).get_self_href() == "s3://bucket/prefix/alpha/stac.json"


def test_roots_and_entries_that_are_not_geoseg_s_are_refused(run):
    _, first, _ = run
    with pytest.raises(ValueError, match="as a string"):
        root_uri(Path("s3://bucket/prefix/"))
    with pytest.raises(ValueError, match="bucket or host"):
        root_uri("s3://")
    assert root_uri("relative/out") is None and root_uri(Path("/abs/out")) is None
    ok = next(e for e in first["scenes"] if e["status"] == "ok")
    scene_relative = {**ok, "outputs": {"stac": "stac.json"}}  # not a report entry
    with pytest.raises(ValueError, match="report entries"):
        catalog_dict([scene_relative])
    for hostile in ("../etc", "a/b", "x#y", ".hidden", ""):
        with pytest.raises(ValueError):
            catalog_dict([{**ok, "scene": hostile, "outputs": {"stac": f"{hostile}/stac.json"}}])
    with pytest.raises(ValueError):
        item_links("../x")
    unicode = {**ok, "scene": "Sant_Joan_dÀlacant", "outputs": {
        "stac": "Sant_Joan_dÀlacant/stac.json"}}
    assert catalog_dict([unicode])["links"][-1]["href"] == "./Sant_Joan_dÀlacant/stac.json"
    for status in ("failed", "pending"):  # even with an Item left on disk: not finished
        assert [link["rel"] for link in catalog_dict([{**ok, "status": status}])["links"]] == [
            "root"]
    assert len(catalog_dict([{**ok, "status": "skipped"}])["links"]) == 2
    no_item = {**ok, "outputs": {k: v for k, v in ok["outputs"].items() if k != "stac"}}
    assert [link["rel"] for link in catalog_dict([no_item])["links"]] == ["root"]


def test_proj_wkt2_holds_wkt2(run):
    out, _, _ = run
    wkt = json.loads((out / "gamma" / "stac.json").read_text(encoding="utf-8"))[
        "properties"]["proj:wkt2"]
    assert wkt.startswith(("PROJCRS[", "GEOGCRS[", "BOUNDCRS[", "COMPOUNDCRS[")), wkt[:40]
