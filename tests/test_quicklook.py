"""Quick-looks: read strip by strip through a bounded block cache, same picture as one read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from geoseg.batch.quicklook import _strips, mask_quicklook, scene_quicklook
from geoseg.scene import open_scene

from .conftest import coherent_field, write_raster


def _one_read(path: Path, shape: tuple[int, int]) -> list[np.ndarray]:
    """Each of bands 3, 2, 1 decimated in one GDAL read (what the strips must reproduce)."""
    planes = []
    with rasterio.open(path) as ds:
        for band in (3, 2, 1):
            data = ds.read(band, out_shape=shape, resampling=Resampling.average)
            mask = ds.read_masks(band, out_shape=shape) > 0
            plane = data.astype(np.float32)
            plane[~mask | (data == ds.nodata)] = np.nan
            planes.append(plane)
    return planes


def test_strips_cover_every_source_row_once() -> None:
    for height, out, rows in ((1500, 64, 512), (1933, 509, 512), (600, 600, 512), (10, 3, 512),
                              (16384, 1024, 4096), (1100, 47, 300)):
        strips = list(_strips(height, out, rows))
        assert strips[0][0] == 0 and strips[-1][1] == height
        assert [s[2] for s in strips[1:]] == [s[3] for s in strips[:-1]]  # picture rows tile
        assert [s[0] for s in strips[1:]] == [s[1] for s in strips[:-1]]  # source rows tile


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
def test_strip_reads_give_the_one_read_picture(tmp_path: Path, monkeypatch, tiled) -> None:
    """Strips of 512 source rows in columns of 300 source columns (lowered from 4096 so that
    this small scene has several; a striped file is read full width): the picture of one GDAL
    read, to the bit."""
    from geoseg.batch import quicklook

    monkeypatch.setattr(quicklook, "_CHUNK_COLS", 300)
    assert quicklook._column_width(256) == 300 and quicklook._column_width(1100) == 1100
    data = (1000 + 400 * coherent_field(1500, 1100, seed=3)).clip(1, 30000).astype("uint16")
    data[:, 200:260, 300:900] = 0  # nodata
    path = write_raster(tmp_path / "scene.tif", data, names=("B02", "B03", "B04", "B08"))
    if not tiled:
        with rasterio.open(path) as src:
            profile = dict(src.profile, tiled=False, blockysize=8)
            profile.pop("blockxsize")
            with rasterio.open(tmp_path / "striped.tif", "w", **profile) as dst:
                dst.write(src.read())
                dst.descriptions = src.descriptions
        path = tmp_path / "striped.tif"
        with rasterio.open(path) as src:
            assert src.block_shapes[0] == (8, 1100)
    scene = open_scene(path)
    picture = scene_quicklook(scene, scene.bands, 64)
    assert picture.shape == (64, 47, 4)
    reference = _one_read(path, (64, 47))
    valid = np.all([np.isfinite(p) for p in reference], axis=0)
    assert np.array_equal(picture[..., 3] == 255, valid)
    for k, plane in enumerate(reference):
        lo, hi = np.percentile(plane[valid], [2, 98])
        expected = np.clip(np.nan_to_num((plane - lo) / max(float(hi - lo), 1e-6) * 255), 0, 255)
        assert np.array_equal(picture[..., k], expected.astype(np.uint8)), k


def test_mask_quicklook_paints_the_classes_and_leaves_nodata_clear(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    from geoseg.maskfile import NODATA, write_mask
    from geoseg.models.bundle import ClassSpec

    classes = (ClassSpec(id=0, name="a", color=(10, 20, 30)),
               ClassSpec(id=1, name="b", color=(200, 100, 0)))
    labels = np.array([[0, 1], [NODATA, 1]], np.uint8)
    mask = write_mask(tmp_path / "m.tif", labels, "EPSG:32618",
                      from_origin(420000.0, 4150000.0, 10.0, 10.0), classes)
    rgba = mask_quicklook(mask, 64)
    assert rgba.tolist() == [[[10, 20, 30, 255], [200, 100, 0, 255]],
                             [[0, 0, 0, 0], [200, 100, 0, 255]]]
