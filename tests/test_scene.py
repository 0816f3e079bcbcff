"""Scenes: validation with clear messages, band matching, boundless windowed reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from geoseg.errors import SceneError
from geoseg.scene import open_scene, read_window, select_bands
from geoseg.tiling import Window

from .conftest import BANDS


def test_metadata(make_scene) -> None:
    scene = open_scene(make_scene())
    assert scene.shape == (777, 1001) and scene.dtype == "uint16" and scene.nodata == 0
    assert [b.name for b in scene.bands] == list(BANDS)
    assert scene.transform == (10.0, 0.0, 420000.0, 0.0, -10.0, 4150000.0)


def test_bad_scenes(make_scene, tmp_path: Path) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(SceneError, match="not a readable raster"):
        open_scene(text)
    with pytest.raises(SceneError, match="no such file"):
        open_scene(tmp_path / "missing.tif")
    with pytest.raises(SceneError, match="has no CRS"):
        open_scene(make_scene("nocrs.tif", crs=None))
    with pytest.raises(SceneError, match="int32 is not supported"):
        open_scene(make_scene("i32.tif", dtype="int32"))


def test_band_matching(make_scene) -> None:
    named = open_scene(make_scene())
    picked = select_bands(named, ["b08", "B02"])
    assert [(b.index, b.name) for b in picked] == [(4, "B08"), (1, "B02")]
    with pytest.raises(SceneError, match="missing band.*B11"):
        select_bands(named, ["B02", "B11"])
    unnamed = open_scene(make_scene("unnamed.tif", names=None, count=4))
    assert [b.index for b in select_bands(unnamed, list(BANDS))] == [1, 2, 3, 4]
    three = open_scene(make_scene("three.tif", names=None, count=3))
    with pytest.raises(SceneError, match="3 unnamed bands but the model needs 4"):
        select_bands(three, list(BANDS))


def test_boundless_read_with_nodata(make_scene) -> None:
    path = make_scene(nodata_box=(0, 0, 60, 90))
    scene = open_scene(path)
    bands = select_bands(scene, BANDS)
    data, valid = read_window(bands, Window(-10, -20, 100, 130), 777, 1001)
    assert data.shape == (4, 100, 130) and data.dtype == np.uint16
    assert not valid[:10].any() and not valid[:, :20].any()  # outside the scene
    assert not valid[10:70, 20:110].any()  # the nodata box
    assert valid[70:, 110:].all()
    with rasterio.open(path) as src:
        assert (data[:, 10:, 20:] == src.read(window=((0, 90), (0, 110)))).all()
    _, outside = read_window(bands, Window(800, 0, 10, 10), 777, 1001)
    assert not outside.any()


def _write(path: Path, data: np.ndarray, alpha: bool = False) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype.name, crs="EPSG:4326",
                       transform=from_origin(10, 50, 0.001, 0.001),
                       photometric="MINISBLACK") as dst:
        if alpha:
            dst.colorinterp = [ColorInterp.gray, ColorInterp.alpha]
        dst.write(data)


def test_alpha_band_masks_pixels(tmp_path: Path) -> None:
    data = np.ones((2, 16, 16), dtype="uint16")  # gray + alpha (GDAL's alpha-mask layouts
    data[1] = 65535                               # are gray+alpha and RGBA)
    data[1, 5:, :3] = 0  # transparent
    _write(tmp_path / "alpha.tif", data, alpha=True)
    scene = open_scene(tmp_path / "alpha.tif")
    _, valid = read_window(scene.bands[:1], Window(0, 0, 16, 16), 16, 16)
    assert not valid[5:, :3].any() and valid[:5].all() and valid[:, 3:].all()


def test_nan_is_nodata(tmp_path: Path) -> None:
    data = np.ones((2, 16, 16), dtype="float32")
    data[1, 2, 3] = np.nan
    _write(tmp_path / "nan.tif", data)
    scene = open_scene(tmp_path / "nan.tif")
    _, valid = read_window(scene.bands, Window(0, 0, 16, 16), 16, 16)
    assert not valid[2, 3] and valid.sum() == 255


def test_nodata_masks_come_from_the_pixels_and_agree_with_gdal(make_scene) -> None:
    """Integer bands whose mask is their nodata value are masked from the pixels already read
    (no second decode by ``read_masks``), exactly as GDAL masks them."""
    from geoseg.scene import _masks_from_pixels

    with rasterio.open(make_scene(nodata_box=(0, 0, 60, 90))) as src:
        pixels = src.read()
        fast = _masks_from_pixels(src, [1, 2, 3, 4], pixels)
        assert fast is not None and 0 < fast.mean() < 1
        assert np.array_equal(fast, src.read_masks() != 0)


def test_internal_mask_masks_pixels(tmp_path: Path) -> None:
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            path, "w", driver="GTiff", width=16, height=16, count=1, dtype="uint16",
            crs="EPSG:4326", transform=from_origin(10, 50, 0.001, 0.001)) as dst:
        dst.write(np.full((1, 16, 16), 7, dtype="uint16"))
        mask = np.full((16, 16), 255, dtype="uint8")
        mask[:4] = 0
        dst.write_mask(mask)
    scene = open_scene(path)
    _, valid = read_window(scene.bands, Window(0, 0, 16, 16), 16, 16)
    assert not valid[:4].any() and valid[4:].all()


def test_fractional_nodata_on_integer_band_masks_like_gdal(tmp_path: Path) -> None:
    """GDAL truncates a fractional nodata value on integer bands (3.7 masks the value 3)."""
    data = np.full((1, 8, 8), 5, dtype="uint8")
    data[0, 2, :] = 3
    path = tmp_path / "frac.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(10, 50, 0.001, 0.001),
                       nodata=3.7) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        gdal = src.read_masks(1) != 0
    scene = open_scene(path)
    _, valid = read_window(scene.bands, Window(0, 0, 8, 8), 8, 8)
    assert np.array_equal(valid, gdal) and not valid[2].any() and valid[3:].all()
