"""Scene-level normalization from the bundle's per-band statistics.

Normalization is a fixed affine map per band, the same for every tile of every scene, so it can
never introduce seams (no per-tile statistics, no guessing of scales from pixel values).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from geoseg.errors import SceneError
from geoseg.models.bundle import BandSpec
from geoseg.scene import BandRef

if TYPE_CHECKING:
    import torch

__all__ = ["band_statistics", "normalize", "normalize_batch"]


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


@functools.lru_cache(maxsize=32)
def _affine(stats: tuple[tuple[float, float], ...], device: str) -> tuple[torch.Tensor, ...]:
    """Per-band mean and 1/std as float32 tensors on ``device``, made once: a fresh copy to a
    GPU on every batch would wait for the work already queued there."""
    import torch

    mean = torch.tensor([m for m, _ in stats], dtype=torch.float32, device=device)
    scale = torch.tensor([1.0 / s for _, s in stats], dtype=torch.float32, device=device)
    if mean.is_cuda:  # made on one task's stream, read on every task's stream
        torch.cuda.synchronize(mean.device)
    return mean, scale


def normalize_batch(raw: np.ndarray, valid: np.ndarray, bands: Sequence[BandSpec],
                    device: torch.device | str) -> torch.Tensor:
    """:func:`normalize` for a batch of tiles, on ``device``: the raw pixels travel in their own
    dtype (uint16: half the bytes of float32), from pinned memory on CUDA (an asynchronous copy
    on the caller's stream), and are scaled there, with the same float32 arithmetic, so the
    result is the same to the bit.

    Args:
        raw: ``(N, C, h, w)`` pixels in the scene's dtype.
        valid: ``(N, h, w)`` bool.
        bands: the bundle's band specs, ``C`` of them.
        device: where the model runs.

    Returns:
        ``(N, C, h, w)`` float32 tensor on ``device``; 0 where not valid.
    """
    import torch

    if raw.ndim != 4 or raw.shape[1] != len(bands):
        raise ValueError(f"expected (N, {len(bands)}, h, w) pixels, got {raw.shape}")
    mean, scale = _affine(tuple((b.mean, b.std) for b in bands), str(device))
    # uint16 travels as its int16 bits and is widened there: torch's own uint16 has only
    # limited support (on CUDA in particular), int16 and int32 have all of it
    unsigned16 = raw.dtype == np.uint16
    src = torch.from_numpy(raw.view(np.int16) if unsigned16 else raw)
    ok = torch.from_numpy(valid)
    if torch.device(device).type == "cuda":  # pinned: the copies run asynchronously
        src, ok = src.pin_memory(), ok.pin_memory()
    x = src.to(device, non_blocking=True)
    if unsigned16:
        x = x.to(torch.int32).bitwise_and_(0xFFFF)
    x = x.to(torch.float32)
    if x.data_ptr() == src.data_ptr():  # float32 already on the CPU: never scale the caller's
        x = x.clone()
    x -= mean[None, :, None, None]
    x *= scale[None, :, None, None]
    invalid = ~ok.to(device, non_blocking=True)
    return x.masked_fill_(invalid[:, None], 0.0)  # also clears NaN/inf


def band_statistics(
    bands: Sequence[BandRef], height: int, width: int, max_side: int = 1024
) -> list[tuple[float, float]]:
    """Per-band ``(mean, std)`` of valid pixels, from a decimated read (≤ ``max_side`` px a side).

    Reads through GDAL's overviews when the file has them; never the full-resolution scene.

    Raises:
        SceneError: the bands hold no valid pixel.
    """
    import rasterio
    from rasterio.enums import Resampling

    scale = max(1.0, max(height, width) / max_side)
    shape = (max(1, round(height / scale)), max(1, round(width / scale)))
    stats = []
    for band in bands:
        with rasterio.open(band.path) as src:
            pixels = src.read(band.index, out_shape=shape, resampling=Resampling.nearest)
            mask = src.read_masks(band.index, out_shape=shape, resampling=Resampling.nearest)
        values = pixels[(mask != 0) & np.isfinite(pixels)].astype(np.float64)
        if values.size == 0:
            raise SceneError(f"{band.path}: band {band.index} ({band.name}) has no valid pixel")
        stats.append((float(values.mean()), float(max(values.std(), 1e-6))))
    return stats
