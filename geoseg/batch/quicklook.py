"""Small pictures for the run report: a scene in natural colours beside its class mask.

Reads are decimated by GDAL (overviews or resolution levels where the files have them), so a
quick-look of a huge scene costs a few MB, never the full scene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geoseg.batch.discover import band_key
from geoseg.scene import BandRef, Scene, open_on_grid

__all__ = ["mask_quicklook", "pick_rgb", "quicklook_shape", "scene_quicklook", "write_png"]

_RGB_NAMES = (("b4", "red", "r"), ("b3", "green", "g"), ("b2", "blue", "b"))


def quicklook_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` of a picture whose longest side is at most ``size`` px, aspect kept."""
    scale = max(height, width) / size
    if scale <= 1:
        return height, width
    return max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))


def pick_rgb(bands: Sequence[BandRef]) -> tuple[BandRef, ...]:
    """Red, green and blue bands by name (``B04/B03/B02``, ``red``…); else the first three."""
    by_key = {band_key(b.name): b for b in bands}
    rgb = []
    for names in _RGB_NAMES:
        hit = next((by_key[n] for n in names if n in by_key), None)
        if hit is None:
            break
        rgb.append(hit)
    if len(rgb) == 3:
        return tuple(rgb)
    return tuple(bands[:3]) if len(bands) >= 3 else (bands[0],) * 3


def _read_small(scene: Scene, band: BandRef, shape: tuple[int, int]) -> np.ndarray:
    """One band decimated to ``shape``: float32 with NaN where there is no data."""
    from rasterio.enums import Resampling

    with open_on_grid(band.path, band.warp, band.fill, scene.crs_wkt, scene.transform,
                      scene.shape) as ds:
        nodata = ds.nodata if ds.nodata is not None else band.fill
        data = ds.read(band.index, out_shape=shape, resampling=Resampling.average)
        mask = ds.read_masks(band.index, out_shape=shape) > 0
    out = data.astype(np.float32)
    bad = ~mask | ~np.isfinite(out)
    if nodata is not None:
        bad |= data == nodata
    out[bad] = np.nan
    return out


def scene_quicklook(scene: Scene, bands: Sequence[BandRef], size: int) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA: a 2–98 % stretch per band, transparent where no data."""
    shape = quicklook_shape(scene.height, scene.width, size)
    planes = [_read_small(scene, b, shape) for b in pick_rgb(bands)]
    rgba = np.zeros((*shape, 4), np.uint8)
    valid = np.ones(shape, bool)
    for k, plane in enumerate(planes):
        ok = np.isfinite(plane)
        valid &= ok
        if ok.any():
            lo, hi = np.percentile(plane[ok], [2, 98])
            scaled = (plane - lo) / max(float(hi - lo), 1e-6) * 255
            rgba[..., k] = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    return rgba


def mask_quicklook(mask_path: Path, size: int) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA of a class mask in its colour table (nearest; nodata clear)."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(mask_path) as src:
        shape = quicklook_shape(src.height, src.width, size)
        data = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        cmap = src.colormap(1)
    lut = np.zeros((256, 4), np.uint8)
    for value, rgba in cmap.items():
        lut[value] = rgba
    lut[255] = 0
    return lut[data]


def write_png(path: Path, rgba: np.ndarray) -> Path:
    """Write an ``(h, w, 4)`` uint8 array as a PNG."""
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(path, optimize=True)
    return path
