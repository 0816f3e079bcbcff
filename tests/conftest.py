"""Shared fixtures: real GeoTIFFs written to tmp dirs and tiny real smp bundles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

BANDS = ("B02", "B03", "B04", "B08")

#: A U-Net small enough for CI whose receptive field is bounded (radius 65 px, stride 8):
#: with a halo of 72 px its mask must not depend on tiling at all.
TINY_UNET = {"arch": "unet", "encoder": "resnet18",
             "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}, "halo": 72}
TINY_DEEPLAB = {"arch": "deeplabv3plus", "encoder": "resnet18",
                "arch_kwargs": {"decoder_channels": 32}, "halo": 64}


def write_raster(path: Path, data: np.ndarray, transform=None, crs: str | None = "EPSG:32618",
                 nodata: float | None = 0, names: Sequence[str] | None = None,
                 block: int = 256) -> Path:
    """Write ``data`` ``(bands, H, W)`` as a tiled DEFLATE GeoTIFF (10 m UTM 18N by default)."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=data.dtype.name,
                   transform=transform or from_origin(420000.0, 4150000.0, 10.0, 10.0),
                   tiled=True, blockxsize=block, blockysize=block, nodata=nodata,
                   compress="deflate")
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, n in enumerate(names or [], start=1):
            dst.set_band_description(i, n)
    return path


def coherent_field(height: int, width: int, seed: int, bands: int = 4) -> np.ndarray:
    """``(bands, H, W)`` float64 smooth spatial patterns plus noise (not white noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for k in range(bands):
        fx, fy, px, py = rng.uniform(20, 90, 2).tolist() + rng.uniform(0, 6, 2).tolist()
        out.append(np.sin(x / fx + px) + np.cos(y / fy + py) + 0.1 * rng.normal(size=x.shape))
    return np.stack(out)


@pytest.fixture
def make_scene(tmp_path: Path) -> Callable[..., Path]:
    """Write a synthetic scene; returns its path."""

    def make(
        name: str = "scene.tif",
        height: int = 777,
        width: int = 1001,
        dtype: str = "uint16",
        names: Sequence[str] | None = BANDS,
        nodata: float | None = 0,
        crs: str | None = "EPSG:32618",
        seed: int = 0,
        nodata_box: tuple[int, int, int, int] | None = (0, 0, 60, 90),
        count: int | None = None,
    ) -> Path:
        count = count or (len(names) if names else 4)
        field = coherent_field(height, width, seed, count)
        base, amp, top = (120, 40, 254) if dtype == "uint8" else (1000, 400, 30000)
        data = (base + amp * field).clip(1, top).astype(dtype)
        if nodata_box is not None and nodata is not None:
            r0, c0, r1, c1 = nodata_box
            data[:, r0:r1, c0:c1] = nodata
        return write_raster(tmp_path / name, data, crs=crs, nodata=nodata, names=names)

    return make


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny random-init bundle; returns its path."""

    def make(spec: dict | None = None, name: str = "model.safetensors", n_classes: int = 5,
             tile_size: int = 256, dtype: str = "uint16", seed: int = 0) -> Path:
        spec = spec or TINY_UNET
        path = tmp_path / name
        init_bundle(
            path,
            arch=spec["arch"],
            encoder=spec["encoder"],
            arch_kwargs=spec["arch_kwargs"],
            bands=tuple(BandSpec(name=b, mean=1000.0, std=400.0) for b in BANDS),
            input_dtype=dtype,  # type: ignore[arg-type]
            classes=tuple(ClassSpec(id=i, name=f"class{i}", color=(50 * i, 200 - 30 * i, 90))
                          for i in range(n_classes)),
            tile_size=tile_size,
            halo=spec["halo"],
            seed=seed,
        )
        return path

    return make
