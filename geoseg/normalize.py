"""Scene-level normalization from the bundle's per-band statistics.

Normalization is a fixed affine map per band, the same for every tile of every scene, so it can
never introduce seams (no per-tile statistics, no guessing of scales from pixel values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geoseg.models.bundle import BandSpec

__all__ = ["normalize"]


def normalize(raw: np.ndarray, valid: np.ndarray, bands: Sequence[BandSpec]) -> np.ndarray:
    """Scale raw pixels to model input.

    Args:
        raw: ``(C, H, W)`` pixels in the scene's dtype, bands in the bundle's order.
        valid: ``(H, W)`` bool, False where any band is nodata (or outside the scene).
        bands: the bundle's band specs, ``C`` of them.

    Returns:
        ``(C, H, W)`` float32, ``(raw - mean) / std``; 0 (the band mean) where not valid.
    """
    if raw.ndim != 3 or raw.shape[0] != len(bands):
        raise ValueError(f"expected ({len(bands)}, H, W) pixels, got {raw.shape}")
    mean = np.array([b.mean for b in bands], dtype=np.float32)[:, None, None]
    scale = np.array([1.0 / b.std for b in bands], dtype=np.float32)[:, None, None]
    out = raw.astype(np.float32, copy=True)
    out -= mean
    out *= scale
    np.copyto(out, np.float32(0), where=~valid[None, :, :])  # also clears NaN/inf
    return out
