"""GDAL's block cache is bounded while a dataset stays open for a whole scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from geoseg.blockcache import BLOCK_CACHE_MIB, bounded_block_cache
from geoseg.tiling import Window
from geoseg.writers import RasterSpec, StreamingCOGWriter


def _cache() -> int:
    return int(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))


def test_writer_holds_a_bounded_cache_and_gives_it_back(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    spec = RasterSpec(crs_wkt=CRS.from_epsg(32618).to_wkt(),
                      transform=(10.0, 0.0, 400000.0, 0.0, -10.0, 4200000.0), height=300, width=200)
    before = _cache()
    with StreamingCOGWriter(tmp_path / "mask.tif", spec) as writer:
        assert _cache() == BLOCK_CACHE_MIB * 2**20
        writer.write(Window(0, 0, 300, 200), np.ones((1, 300, 200), np.uint8))
        writer.commit()
    assert _cache() == before
    with rasterio.open(tmp_path / "mask.tif") as src:
        assert src.read(1).min() == 1


def test_the_users_gdal_cachemax_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    before = _cache()
    with bounded_block_cache(8):
        assert _cache() == before
    monkeypatch.delenv("GDAL_CACHEMAX")
    with bounded_block_cache(8):
        assert _cache() == 8 * 2**20
