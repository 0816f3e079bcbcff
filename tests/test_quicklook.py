"""Quick-looks: read strip by strip through a bounded block cache, same picture as one read;
summed from the blocks' parts, the same picture whatever the blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from geoseg.batch.quicklook import (
    _strips,
    canvas_quicklook,
    mask_quicklook,
    pick_rgb,
    scene_quicklook,
    write_png,
)
from geoseg.scene import open_scene

from .conftest import TINY_UNET, coherent_field, write_raster


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


# --- the scene's picture summed from the blocks' parts (geoseg.thumb) -----------------------------


def _run_with_quicklook(scene: Path, bundle: Path, out: Path, block_size: int, size: int = 64):
    from geoseg.config import PredictConfig
    from geoseg.pipeline import plan_prediction, run_prediction

    plan = plan_prediction(scene, bundle, out, PredictConfig(device="cpu", block_size=block_size,
                                                             tile_size=208))
    plan = plan.with_quicklook(pick_rgb(plan.job.bands), size)
    return plan, run_prediction(plan)


def test_block_parts_give_one_picture_whatever_the_blocks(make_scene, make_bundle,
                                                          tmp_path: Path) -> None:
    """An integer scene predicted in blocks of 100 and of 1000 px: the same canvas and the same
    PNG bytes; the masks are the files a run without quick-look parts writes, byte for byte;
    and the picture is close to the GDAL re-read's (a different decimation rule)."""
    from geoseg.config import PredictConfig
    from geoseg.pipeline import predict_scene

    scene = make_scene(height=250, width=310, nodata_box=(0, 0, 60, 90))
    bundle = make_bundle(TINY_UNET)
    pngs, canvases = [], []
    for bs in (100, 1000):
        plan, result = _run_with_quicklook(scene, bundle, tmp_path / f"m{bs}.tif", bs)
        assert (len(plan.grid) > 4) == (bs == 100)  # 6 blocks of 128 px, or one
        assert result.quicklook is not None and plan.job.quicklook is not None
        assert plan.job.quicklook.bands == (2, 1, 0)  # B04, B03, B02 of the model's bands
        canvases.append(result.quicklook)
        pngs.append(write_png(tmp_path / f"q{bs}.png", canvas_quicklook(result.quicklook))
                    .read_bytes())
    assert np.array_equal(canvases[0].sums, canvases[1].sums)
    assert np.array_equal(canvases[0].counts, canvases[1].counts)
    assert pngs[0] == pngs[1]
    # geoseg predict asks for no parts, and writes the same mask
    plain = predict_scene(scene, bundle, tmp_path / "plain.tif",
                          PredictConfig(device="cpu", block_size=100, tile_size=208))
    assert plain.quicklook is None
    assert (tmp_path / "plain.tif").read_bytes() == (tmp_path / "m100.tif").read_bytes()
    # against the GDAL re-read: same shape, transparency and colours but at the nodata box's
    # edges, where the two rules cut the source pixels differently
    opened = open_scene(scene)
    old = scene_quicklook(opened, opened.bands, 64).astype(int)
    new = canvas_quicklook(canvases[0]).astype(int)
    assert old.shape == new.shape == (52, 64, 4)
    alpha_differs = (old[..., 3] != new[..., 3]).mean()
    both = (old[..., 3] == 255) & (new[..., 3] == 255)
    diff = np.abs(old[..., :3] - new[..., :3])[both]
    assert alpha_differs < 0.01 and diff.mean() < 2.0, (alpha_differs, diff.mean())


def test_a_run_draws_the_picture_from_the_parts_without_reading_the_scene_again(
        make_scene, make_bundle, tmp_path: Path, monkeypatch) -> None:
    """`geoseg run` (in process): no GDAL re-read of the scene for its quick-look, and the
    picture is the one its blocks summed (block sizes 100 and 1000: the same PNG)."""
    from click.testing import CliRunner
    from PIL import Image

    from geoseg.batch import quicklook
    from geoseg.cli import main

    def no_reread(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the scene was read again for its quick-look")

    monkeypatch.setattr(quicklook, "_read_small", no_reread)
    scene = make_scene(height=250, width=310)
    bundle = make_bundle(TINY_UNET)
    pngs = []
    for bs in (100, 1000):
        out = tmp_path / f"out{bs}"
        result = CliRunner().invoke(main, ["run", str(scene), "-m", str(bundle), "-o", str(out),
                                           "--scheduler", "synchronous", "--no-vectorize",
                                           "--block-size", str(bs)])
        assert result.exit_code == 0, result.output
        pngs.append((out / "scene" / "quicklook.png").read_bytes())
    assert pngs[0] == pngs[1]
    _, expected = _run_with_quicklook(scene, bundle, tmp_path / "m.tif", 1000, size=512)
    assert expected.quicklook is not None
    with Image.open(tmp_path / "out100" / "scene" / "quicklook.png") as png:
        assert np.array_equal(np.asarray(png), canvas_quicklook(expected.quicklook))
