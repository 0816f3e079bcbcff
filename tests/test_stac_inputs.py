"""STAC inputs: Items, ItemCollections and static Catalogs as scenes (real files, real pystac).

Band GeoTIFFs are written into tmp dirs; the STAC documents pointing at them are written with
pystac, with Earth Search style assets (``red``, ``nir`` … with ``eo:bands``, ``red-jp2``
duplicates, a ``visual`` composite, a thumbnail) and Planetary Computer style ones (``B04`` …).
The end-to-end test runs a real `geoseg run` over an ItemCollection.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from geoseg.batch.discover import NAME_BYTES, discover
from geoseg.batch.sources import open_source
from geoseg.batch.stacmatch import (
    BandAsset,
    StacAsset,
    band_aliases,
    is_data_asset,
    match_bands,
    parse_asset,
)
from geoseg.cli import main
from geoseg.errors import ConfigError, SceneError

from .conftest import BANDS, assert_same_mask, write_raster
from .test_run import pixels, tiny_bundle

H, W = 96, 128
EXIT_SOME_FAILED = 3
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EARTH_SEARCH = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}


# --- pure band matching ---------------------------------------------------------------------------

def eo(name: str, common: str = "", **raster: float) -> dict:
    """An asset with one band (``eo:bands`` and, given, ``raster:bands``)."""
    fields: dict = {"type": COG, "roles": ["data"],
                    "eo:bands": [{"name": name, **({"common_name": common} if common else {})}]}
    if raster:
        fields["raster:bands"] = [raster]
    return fields


def assets(spec: dict[str, dict]) -> list[StacAsset]:
    return [parse_asset(k, f, f"/data/{k}.tif") for k, f in spec.items() if is_data_asset(k, f)]


def test_aliases_follow_the_sentinel2_and_landsat_tables() -> None:
    assert band_aliases("B04") == {"b4", "red"} == band_aliases("b4") - {"b04"}
    assert band_aliases("B8A") == {"b8a", "nir08"}
    assert band_aliases("SR_B5") == {"sr_b5", "b5", "nir08"}
    assert "rededge1" in band_aliases("B5") and "nir08" in band_aliases("B5", landsat=True)
    assert band_aliases("Red") == {"red"}


def test_earth_search_keys_win_over_jp2_duplicates_and_visual() -> None:
    spec = {c: eo(b, c, scale=0.0001, offset=-0.1, nodata=0) for b, c in EARTH_SEARCH.items()}
    spec |= {f"{c}-jp2": {**eo(b, c), "type": "image/jp2"} for b, c in EARTH_SEARCH.items()}
    spec["nir08"] = eo("B8A", "nir08")
    spec["visual"] = {"type": COG, "roles": ["visual"], "eo:bands": [
        {"name": "B04", "common_name": "red"}, {"name": "B03", "common_name": "green"},
        {"name": "B02", "common_name": "blue"}]}
    spec["thumbnail"] = {"href": "t.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    found = match_bands("item x", assets(spec), [*BANDS, "B8A"])
    assert {b: m.key for b, m in found.items()} == {**EARTH_SEARCH, "B8A": "nir08"}
    assert found["B04"] == BandAsset("red", "/data/red.tif", 1, 0.0001, -0.1, 0.0)
    assert found["B04"].to_json() == {"asset": "red", "href": "/data/red.tif", "index": 1,
                                      "scale": 0.0001, "offset": -0.1, "nodata": 0.0}
    # the common names match a bundle named by them too
    assert match_bands("x", assets(spec), ["red"])["red"].key == "red"


def test_planetary_computer_keys_and_non_data_assets() -> None:
    spec = {b: eo(b, c) for b, c in EARTH_SEARCH.items()}
    spec["preview"] = {"type": COG, "roles": ["overview"], "eo:bands": [{"name": "B04"}]}
    spec["tilejson"] = {"type": "application/json", "roles": ["tiles"]}
    spec["granule-metadata"] = {"type": "application/xml", "roles": ["metadata"]}
    spec["B03_legacy.xml"] = {"roles": ["data"]}  # no raster media type or suffix
    kept = assets(spec)
    assert [a.key for a in kept] == list(EARTH_SEARCH)
    assert {b: m.key for b, m in match_bands("x", kept, ["B4", "b02"]).items()} == {
        "B4": "B04", "b02": "B02"}


def test_multiband_asset_gives_indexes_and_stac11_bands_are_read() -> None:
    image = {"type": COG, "roles": ["data"], "bands": [
        {"name": "b1", "eo:common_name": "red", "raster:scale": 2.0},
        {"name": "b2", "eo:common_name": "green"}, {"name": "b3", "eo:common_name": "blue"},
        {"name": "b4", "eo:common_name": "nir", "nodata": 0}]}
    found = match_bands("naip", assets({"image": image}), BANDS)
    assert {b: m.index for b, m in found.items()} == {"B02": 3, "B03": 2, "B04": 1, "B08": 4}
    assert (found["B04"].scale, found["B08"].nodata, found["B02"].scale) == (2.0, 0.0, None)


def test_visual_only_when_nothing_else_has_the_band() -> None:
    visual = {"type": COG, "roles": ["visual"], "eo:bands": [
        {"name": "B04", "common_name": "red"}, {"name": "B03", "common_name": "green"}]}
    both = assets({"visual": visual, "red": eo("B04", "red")})
    assert match_bands("x", both, ["B04", "B03"]) == {
        "B04": BandAsset("red", "/data/red.tif"), "B03": BandAsset("visual", "/data/visual.tif", 2)}


def test_ambiguous_and_missing_bands_name_the_item_the_band_and_the_assets() -> None:
    two = assets({"B04": eo("B04"), "red": eo("B04", "red")})
    with pytest.raises(SceneError, match=r"item 7: band B04 matches several assets \(B04, red\)"):
        match_bands("item 7", two, ["B04"])
    with pytest.raises(SceneError) as err:
        match_bands("item 'T18' (items.json)", assets({"B02": eo("B02"), "nir": eo("B08")}),
                    BANDS)
    text = str(err.value)
    assert text.startswith("item 'T18' (items.json): no asset for band(s) B03, B04 (")
    assert "data assets: B02, nir" in text


def test_landsat_items_read_plain_band_numbers_as_landsat_bands() -> None:
    spec = {"nir08": eo("SR_B5", "nir08"), "rededge1": eo("B05", "rededge1")}
    assert match_bands("l", assets(spec), ["B5"], landsat=True)["B5"].key == "nir08"
    assert match_bands("s", assets(spec), ["B5"])["B5"].key == "rededge1"
    assert match_bands("l", assets(spec), ["SR_B5"])["SR_B5"].key == "nir08"


def test_landsat_items_are_told_by_their_platform(tmp_path) -> None:
    from geoseg.batch.stacin import read_stac

    item = pystac.Item("LC09_L2SP_015034_20230101", None, None, dt.datetime(2023, 1, 1),
                       {"platform": "landsat-9"})
    for key, name in (("nir08", "SR_B5"), ("red", "SR_B4")):
        item.add_asset(key, pystac.Asset(f"{key}.TIF", media_type=COG, roles=["data"],
                                         extra_fields={"eo:bands": [{"name": name}]}))
    item.add_asset("qa_pixel", pystac.Asset("qa.TIF", media_type=COG, roles=["cloud"]))
    item.save_object(include_self_link=False, dest_href=str(tmp_path / "l9.json"))
    (read,) = read_stac(tmp_path / "l9.json")
    assert read.landsat and [a.key for a in read.assets] == ["nir08", "red"]
    assert {b: m.href for b, m in read.match(["B5", "B4"]).items()} == {
        "B5": str(tmp_path / "nir08.TIF"), "B4": str(tmp_path / "red.TIF")}


# --- real files, real documents -------------------------------------------------------------------

def declare(path: Path, scale: float, offset: float) -> Path:
    """Declare every band's encoding in the file itself (GDAL scale/offset)."""
    with rasterio.open(path, "r+") as dst:
        dst.scales = (scale,) * dst.count
        dst.offsets = (offset,) * dst.count
    return path


def band_files(folder: Path, prefix: str, seed: int, skip: str = "", add: int = 0,
               encoding: tuple[float, float] | None = None) -> dict[str, Path]:
    """One GeoTIFF per band (B08 at 20 m, the others at 10 m), named ``<prefix>_<band>.tif``;
    ``add`` DN added to every pixel; ``encoding`` declared in the files (GDAL scale/offset)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = pixels(seed, H, W) + np.uint16(add)
    out = {}
    for k, band in enumerate(BANDS):
        if band == skip:
            continue
        plane, transform = data[k : k + 1], from_origin(420000.0, 4150000.0, 10.0, 10.0)
        if band == "B08":
            plane, transform = plane[:, ::2, ::2], from_origin(420000.0, 4150000.0, 20.0, 20.0)
        out[band] = write_raster(folder / f"{prefix}_{band}.tif", plane, transform, block=64)
        if encoding:
            declare(out[band], *encoding)
    return out


def stac_item(item_id: str, hrefs: dict[str, str], style: str,
              encoding: tuple[float, float] | None = (0.0001, 0.0), **props: object) -> pystac.Item:
    """An item whose assets are ``hrefs`` (band → href), keyed Earth Search style (``red`` …,
    plus ``-jp2`` twins and a thumbnail) or Planetary Computer style; ``encoding``: the
    ``raster:bands`` scale and offset declared (None: no ``raster:bands``)."""
    item = pystac.Item(item_id, {"type": "Point", "coordinates": [-75.9, 37.5]},
                       [-76.0, 37.4, -75.8, 37.6], dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                       dict(props))
    for band, href in hrefs.items():
        common = EARTH_SEARCH[band]
        key = common if style == "earth-search" else band
        bands = [{"name": band, "common_name": common}]
        fields: dict = {"eo:bands": bands}
        if encoding:
            fields["raster:bands"] = [{"scale": encoding[0], "offset": encoding[1], "nodata": 0}]
        item.add_asset(key, pystac.Asset(href, media_type=COG, roles=["data"],
                                         extra_fields=fields))
        if style == "earth-search":
            item.add_asset(f"{key}-jp2", pystac.Asset(
                href.replace(".tif", ".jp2"), media_type="image/jp2", roles=["data"],
                extra_fields={"eo:bands": bands}))
    item.add_asset("thumbnail", pystac.Asset("thumb.jpg", media_type="image/jpeg",
                                             roles=["thumbnail"]))
    return item


def save_item_collection(items: list[pystac.Item], path: Path) -> Path:
    """``items`` as `stac-client search … --save` writes them: one FeatureCollection."""
    pystac.ItemCollection(items, clone_items=True).save_object(str(path))
    return path


@pytest.fixture(scope="module")
def stac(tmp_path_factory) -> dict[str, Path]:
    """Band files of four items and the documents pointing at them."""
    root = tmp_path_factory.mktemp("stac")
    es = band_files(root / "es", "S2A_T18XYZ_20200101", seed=1)
    pc = band_files(root / "pc", "S2B_T18XYZ_20200111", seed=2)
    gap = band_files(root / "gap", "S2B_T18XYZ_20200121", seed=3, skip="B03")
    (root / "multi").mkdir()
    multi = declare(write_raster(root / "multi" / "T18MULTI.tif", pixels(4, H, W), names=BANDS),
                    0.0001, 0.0)
    docs = root / "docs"
    docs.mkdir()
    # relative hrefs (against the collection's own folder) for two items, absolute for the rest
    items = [
        stac_item("S2A_T18XYZ_20200101", {b: f"../es/{p.name}" for b, p in es.items()},
                  "earth-search", (0.0001, -0.1), platform="sentinel-2a"),
        stac_item("S2B_T18XYZ_20200111", {b: str(p) for b, p in pc.items()}, "planetary"),
        stac_item("S2B_T18XYZ_20200121", {b: f"../gap/{p.name}" for b, p in gap.items()},
                  "planetary"),
    ]
    image = pystac.Item("T18MULTI", None, None, dt.datetime(2020, 1, 1), {})
    image.add_asset("image", pystac.Asset(str(multi), media_type=COG, roles=["data"],
                                          extra_fields={"eo:bands": [
                                              {"name": b, "common_name": EARTH_SEARCH[b]}
                                              for b in BANDS]}))
    items.append(image)
    # detected by content: no .json suffix
    save_item_collection(items, docs / "search-results")
    single = items[1].clone()
    single.save_object(include_self_link=False, dest_href=str(docs / "one-item.json"))
    catalog = pystac.Catalog("local", "two items")
    catalog.add_items([i.clone() for i in items[:2]])
    catalog.normalize_hrefs(str(root / "catalog"))
    for it in catalog.get_items():  # asset hrefs relative to each item's own file
        for asset in it.assets.values():
            target = (docs / asset.href).resolve()  # ("/abs" / "x" is "/abs")
            asset.href = os.path.relpath(target, Path(it.get_self_href()).parent)
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return {"root": root, "items": docs / "search-results", "item": docs / "one-item.json",
            "catalog": root / "catalog" / "catalog.json", "es": root / "es", "pc": root / "pc",
            "multi": multi}


def by_name(inputs: list) -> dict:
    return {s.name: s for s in discover(inputs)}


def test_item_collection_gives_one_scene_per_item_with_matched_band_files(stac) -> None:
    scenes = by_name([stac["items"]])
    assert list(scenes) == ["S2A_T18XYZ_20200101", "S2B_T18XYZ_20200111",
                            "S2B_T18XYZ_20200121", "T18MULTI"]  # the document's order
    es = scenes["S2A_T18XYZ_20200101"]
    assert (es.kind, es.path, es.original) == ("stac", stac["items"], "S2A_T18XYZ_20200101")
    match = es.band_match(BANDS)
    assert {b: (m.key, m.href) for b, m in match.items()} == {
        b: (EARTH_SEARCH[b], str(stac["es"] / f"S2A_T18XYZ_20200101_{b}.tif")) for b in BANDS}
    assert es.encodings(BANDS)["B04"] == (0.0001, -0.1)
    assert scenes["T18MULTI"].encodings(BANDS)["B04"] == (None, None)
    assert set(es.files) == {stac["es"] / f"S2A_T18XYZ_20200101_{b}.tif" for b in BANDS}
    pc = scenes["S2B_T18XYZ_20200111"].band_match(BANDS)
    assert {b: (m.key, Path(m.href).parent) for b, m in pc.items()} == {
        b: (b, stac["pc"]) for b in BANDS}
    multi = scenes["T18MULTI"].band_match(BANDS)
    assert {b: (m.key, m.index) for b, m in multi.items()} == {
        b: ("image", i) for i, b in enumerate(BANDS, start=1)}
    with pytest.raises(SceneError, match=r"S2B_T18XYZ_20200121.*no asset for band\(s\) B03"):
        scenes["S2B_T18XYZ_20200121"].band_match(BANDS)


def test_item_and_catalog_resolve_relative_hrefs_against_their_own_location(stac) -> None:
    item = discover([stac["item"]])
    assert [(s.name, s.kind) for s in item] == [("S2B_T18XYZ_20200111", "stac")]
    # file:// hrefs (some catalogs write them) are local paths
    url = pystac.Item.from_file(str(stac["item"]))
    url.assets["B04"].href = (stac["pc"] / "S2B_T18XYZ_20200111_B04.tif").as_uri()
    url.save_object(include_self_link=False, dest_href=str(stac["root"] / "file-url.json"))
    (by_url,) = discover([stac["root"] / "file-url.json"])
    assert by_url.band_match(["B04"])["B04"].href == str(
        stac["pc"] / "S2B_T18XYZ_20200111_B04.tif")
    walked = by_name([stac["catalog"]])
    assert set(walked) == {"S2A_T18XYZ_20200101", "S2B_T18XYZ_20200111"}
    for scene in walked.values():
        hrefs = [m.href for m in scene.band_match(BANDS).values()]
        assert all(Path(h).is_file() for h in hrefs), hrefs
    # pystac wrote the catalog's item with hrefs relative to the item file itself
    written = json.loads(next((stac["root"] / "catalog").rglob("S2A_*.json")).read_text())
    assert written["assets"]["red"]["href"].startswith("../../")
    assert walked["S2A_T18XYZ_20200101"].band_match(["B04"])["B04"].href == str(
        stac["es"] / "S2A_T18XYZ_20200101_B04.tif")


def test_catalog_link_loops_end_the_walk_and_broken_links_name_the_catalog(stac,
                                                                            tmp_path) -> None:
    def catalog(name: str, *links: tuple[str, str]) -> Path:
        doc = {"type": "Catalog", "stac_version": "1.0.0", "id": name, "description": name,
               "links": [{"rel": "root", "href": "./loop.json"},
                         *({"rel": rel, "href": href} for rel, href in links)]}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        return tmp_path / f"{name}.json"

    stac_item("looped", {b: str(stac["es"] / f"S2A_T18XYZ_20200101_{b}.tif") for b in BANDS},
              "earth-search").save_object(include_self_link=False,
                                          dest_href=str(tmp_path / "looped.json"))
    root = catalog("loop", ("child", "./inner.json"))
    catalog("inner", ("child", "./loop.json"), ("child", "./inner.json"),
            ("item", "./looped.json"))
    assert [(s.name, s.kind) for s in discover([root])] == [("looped", "stac")]
    broken = catalog("broken", ("child", "./nowhere.json"))
    with pytest.raises(ConfigError, match=r"broken.json: not a readable STAC Catalog \("):
        discover([broken])


def test_stac_json_in_a_walked_folder_is_not_a_scene_and_one_item_twice_is_one(stac) -> None:
    assert [s.kind for s in discover([stac["root"] / "docs"])] == []
    twice = discover([stac["item"], stac["items"], stac["catalog"]])
    assert sorted(s.name for s in twice) == sorted([
        "S2A_T18XYZ_20200101", "S2B_T18XYZ_20200111", "S2B_T18XYZ_20200121", "T18MULTI"])


def test_a_named_json_that_is_no_stac_is_skipped_with_a_warning(tmp_path, caplog) -> None:
    (tmp_path / "geo.json").write_text('{"type": "Topology", "objects": {}}')
    (tmp_path / "notes").write_text("{not json")
    assert discover([tmp_path / "geo.json", tmp_path / "notes"]) == []
    assert "geo.json: not a GeoTIFF, band file or STAC document; skipped" in caplog.text
    assert "notes: not a GeoTIFF" in caplog.text


def test_opened_scenes_use_the_matched_files_at_their_resolutions(stac) -> None:
    scenes = by_name([stac["items"]])
    es = open_source(scenes["S2A_T18XYZ_20200101"], BANDS)
    # the item's raster:bands encoding replaces the file's (which declares none)
    assert [(b.name, Path(b.path).name, b.index, b.warp, b.encoding) for b in es.bands] == [
        (b, f"S2A_T18XYZ_20200101_{b}.tif", 1, b == "B08", (0.0001, -0.1)) for b in BANDS]
    assert (es.name, es.shape) == ("S2A_T18XYZ_20200101", (H, W))
    # an item declaring nothing keeps the file's own encoding
    multi = open_source(scenes["T18MULTI"], ["B08", "B02"])
    assert [(b.name, b.path, b.index, b.encoding) for b in multi.bands] == [
        ("B08", str(stac["multi"]), 4, (0.0001, 0.0)), ("B02", str(stac["multi"]), 1,
                                                         (0.0001, 0.0))]
    with pytest.raises(SceneError, match=r"'S2B_T18XYZ_20200121'.*B03.*data assets: B02, B04"):
        open_source(scenes["S2B_T18XYZ_20200121"], BANDS)


def test_real_sentinel2_jp2_assets_open_like_the_band_files_themselves(tmp_path) -> None:
    """An Earth Search style item over the real Sentinel-2 sample (JP2, 10/20/60 m)."""
    from geoseg.sample import sentinel2_band_paths
    from geoseg.scene import open_band_files

    common = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B08": "nir",
              "B8A": "nir08", "B11": "swir16", "B12": "swir22"}
    paths = sentinel2_band_paths(tuple(common))
    item = pystac.Item("S2_sample", None, None, dt.datetime(2020, 1, 1), {})
    for band, path in paths.items():
        item.add_asset(common[band], pystac.Asset(str(path), media_type="image/jp2", roles=[
            "data"], extra_fields={"eo:bands": [{"name": band, "common_name": common[band]}]}))
    (scene,) = discover([save_item_collection([item], tmp_path / "items.json")])
    wanted = ["B02", "B8A", "B11", "B04"]
    opened = open_source(scene, wanted)
    assert opened == open_band_files("S2_sample", {b: paths[b] for b in wanted})
    assert [(b.name, b.warp) for b in opened.bands] == [
        ("B02", False), ("B8A", True), ("B11", True), ("B04", False)]
    assert opened.shape == (1947, 1933)  # rows, columns


def test_bands_from_a_multiband_asset_and_other_assets_are_refused_clearly(stac,
                                                                           tmp_path) -> None:
    item = pystac.Item("mixed", None, None, dt.datetime(2020, 1, 1), {})
    item.add_asset("rgb", pystac.Asset(str(stac["multi"]), media_type=COG, extra_fields={
        "eo:bands": [{"name": b} for b in BANDS[:3]]}))
    item.add_asset("nir", pystac.Asset(str(stac["es"] / "S2A_T18XYZ_20200101_B08.tif"),
                                       media_type=COG))
    (scene,) = discover([save_item_collection([item], tmp_path / "items.json")])
    assert {b: (m.key, m.index) for b, m in scene.band_match(BANDS).items()} == {
        "B02": ("rgb", 1), "B03": ("rgb", 2), "B04": ("rgb", 3), "B08": ("nir", 1)}
    with pytest.raises(SceneError, match=r"^STAC item 'mixed' .*multi-band asset\(s\) rgb and "
                                         r"from other assets .*B08: nir\) cannot be combined"):
        open_source(scene, BANDS)


def test_a_missing_asset_file_fails_with_the_item_named(tmp_path) -> None:
    item = stac_item("gone", {b: str(tmp_path / f"gone_{b}.tif") for b in BANDS}, "planetary")
    path = save_item_collection([item], tmp_path / "items.json")
    (scene,) = discover([path])
    assert scene.files == ()  # nothing local to fingerprint
    with pytest.raises(SceneError, match=r"^STAC item 'gone' \(.*items.json\): .*gone_B02.tif"):
        open_source(scene, BANDS)


HOSTILE_IDS = ["../../etc/passwd", "a/b\\c", "line\nbreak\x1b[31m", "dup", "DUP", "dup",
               "x" * 600, ".", "con", "-rf", "\u202eexe.tif"]


def test_hostile_item_ids_get_safe_unique_names_and_keep_a_readable_original(tmp_path) -> None:
    files = band_files(tmp_path / "b", "b", seed=5)
    items = [stac_item(i, {b: str(p) for b, p in files.items()}, "planetary") for i in HOSTILE_IDS]
    for k, item in enumerate(items):  # distinct assets, so no item is a duplicate of another
        item.assets["B02"].href = f"{item.assets['B02'].href}?v={k}"
    scenes = discover([save_item_collection(items, tmp_path / "hostile.json")])
    names = [s.name for s in scenes]
    assert len(scenes) == len(HOSTILE_IDS)
    assert len({n.casefold() for n in names}) == len(names)
    for scene in scenes:
        assert scene.name.replace("-", "").replace("_", "").isalnum() or scene.name == "scene"
        assert len(scene.name.encode()) <= NAME_BYTES and not scene.name.startswith("-")
        assert "\n" not in scene.original and "\x1b" not in scene.original
    assert names == ["_etc_passwd", "a_b_c", "line_break_31m", "dup", "DUP-2", "dup-3",
                     "x" * NAME_BYTES, "scene", "con_", "rf", "_exe_tif"]  # document order
    assert scenes[2].original == "line\\x0abreak\\x1b[31m"
    with pytest.raises(SceneError) as err:  # errors name the item without its control bytes
        scenes[2].band_match(["B99"])
    assert str(err.value).startswith("STAC item 'line\\x0abreak\\x1b[31m' (")
    assert scenes[0].original == "../../etc/passwd" and scenes[6].original == "x" * 600


def test_item_ids_and_file_scenes_share_one_set_of_unique_names(tmp_path) -> None:
    files = band_files(tmp_path / "b", "b", seed=6)
    write_raster(tmp_path / "dup.tif", pixels(7, 8, 8))
    items = [stac_item(i, {b: str(p) for b, p in files.items()}, "planetary")
             for i in ("dup", "report.json")]
    items[1].assets["B02"].href += "?v=1"  # another item (ids differ anyway)
    doc = save_item_collection(items, tmp_path / "z-items.json")
    scenes = discover([tmp_path / "dup.tif", doc])
    assert [(s.name, s.kind, s.original) for s in scenes] == [
        ("dup", "raster", "dup"), ("dup-2", "stac", "dup"), ("report_json", "stac", "report.json")]
    # the same inputs in another order: the same names
    assert [s.name for s in discover([doc, tmp_path / "dup.tif"])] == ["dup", "dup-2",
                                                                        "report_json"]


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over ``tmp_path`` (started and stopped by the test)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_documents_and_hrefs_stay_uris(http_root) -> None:
    root, url = http_root
    hrefs = {"B02": "bands/x_B02.tif", "B03": "s3://bucket//double//x_B03.tif",
             "B04": "https://example.org/a//b/x_B04.tif?sig=1", "B08": "gs://b/x_B08.tif"}
    save_item_collection([stac_item("remote", hrefs, "earth-search")], root / "items.json")
    (scene,) = discover([f"{url}/items.json"])
    assert (scene.kind, scene.path) == ("stac", f"{url}/items.json")
    matched = {**hrefs, "B02": f"{url}/bands/x_B02.tif"}
    assert {b: m.href for b, m in scene.band_match(BANDS).items()} == matched
    # every remote data asset is a file of the scene (its resume fingerprint asks the store),
    # as written: the .jp2 twins too, the thumbnail not
    twins = {h.replace(".tif", ".jp2") for h in matched.values()}
    assert set(scene.files) == set(matched.values()) | twins
    assert all(isinstance(f, str) for f in scene.files)
    (root / "plain.json").write_text('{"type": "Topology"}')
    with pytest.raises(ConfigError, match="plain.json: not a STAC Item"):
        discover([f"{url}/plain.json"])
    # a document in a store is read through fsspec: one line naming it when that fails
    with pytest.raises(ConfigError, match=r"s3://bucket/items.json: cannot read this STAC "
                       r"document \(\w+"):
        discover(["s3://bucket/items.json"], storage_options={
            "endpoint_url": "http://127.0.0.1:9", "anon": True})


# --- a real run -----------------------------------------------------------------------------------

def geoseg(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_run_over_an_item_collection_fails_the_item_missing_a_band_alone(stac,
                                                                          tmp_path) -> None:
    """Items whose DN are shifted by +1000 and say so in ``raster:bands`` (Sentinel-2 L2A
    since baseline 04.00), plain ones, one with a coarse band, one multi-band asset, one
    missing a band and one declaring no encoding, mapped with a bundle that records its
    encoding (reflectance = DN / 10000)."""
    bundle = tiny_bundle(tmp_path / "tiny.safetensors")
    code, output = geoseg("model", "set-encoding", bundle, "--scale", "0.0001", "--offset", "0")
    assert code == 0, output
    direct = band_files(tmp_path / "direct", "S2A_T18XYZ_20200101", 1, encoding=(0.0001, 0.0))
    shifted = band_files(tmp_path / "shifted", "L2A", 1, add=1000)
    plain = {b: str(p) for b, p in band_files(tmp_path / "plain", "plain", 2).items()}
    gap = {b: str(p) for b, p in band_files(tmp_path / "gap", "gap", 3, skip="B03").items()}
    image = pystac.Item("T18MULTI", None, None, dt.datetime(2020, 1, 1), {})
    image.add_asset("image", pystac.Asset(str(stac["multi"]), media_type=COG, extra_fields={
        "eo:bands": [{"name": b} for b in BANDS]}))
    items = save_item_collection([
        stac_item("S2A_T18XYZ_20200101", {b: str(p) for b, p in shifted.items()},
                  "earth-search", (0.0001, -0.1)),
        stac_item("plain", plain, "planetary"), stac_item("gap", gap, "planetary"),
        image, stac_item("nometa", plain, "planetary", None)], tmp_path / "items.json")
    out, ref = tmp_path / "out", tmp_path / "ref"
    code, output = geoseg("run", items, "-m", bundle, "-o", out, "--scheduler", "synchronous")
    assert code == EXIT_SOME_FAILED, output
    report = json.loads((out / "report.json").read_text())
    status = {e["scene"]: e for e in report["scenes"]}
    assert {n: e["status"] for n, e in status.items()} == {
        "S2A_T18XYZ_20200101": "ok", "plain": "ok", "gap": "failed", "T18MULTI": "ok",
        "nometa": "failed"}
    error = status["gap"]["error"]
    assert "STAC item 'gap'" in error and "band(s) B03" in error and "B02, B04, B08" in error
    assert "declares no scale/offset" in status["nometa"]["error"]
    assert not (out / "gap").exists() and not (out / "nometa").exists()
    # the same reflectances given directly, stored as plain DN and declared in the files
    code, output = geoseg("run", direct["B02"].parent, stac["multi"], "-m", bundle, "-o", ref,
                          "--scheduler", "synchronous")
    assert code == 0, output
    for name in ("S2A_T18XYZ_20200101", "T18MULTI"):
        assert_same_mask(out / name / f"{name}.tif", ref / name / f"{name}.tif")
    with rasterio.open(out / "plain" / "plain.tif") as mask:
        assert mask.shape == (H, W) and np.unique(mask.read(1)).size > 1
    # resume: finished items are skipped, the failed ones are tried again
    code, output = geoseg("run", items, "-m", bundle, "-o", out, "--scheduler", "synchronous")
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert (code, summary["skipped"], summary["failed"]) == (EXIT_SOME_FAILED, 3, 2), output
