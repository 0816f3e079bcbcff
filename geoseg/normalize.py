"""Scene-level normalization from the bundle's per-band statistics.

Normalization is a fixed affine map per band, the same for every tile of every scene, so it can
never introduce seams (no per-tile statistics, no guessing of scales from pixel values).

A scene band whose declared encoding (``physical = DN × scale + offset``) differs from the
bundle's is converted to the bundle's values by the same affine map: the conversion is folded
into the band's mean and std (:func:`folded_statistics`), so it costs nothing per pixel.
Pixels are read, and nodata detected, on the values as stored; the conversion happens on the
float32 values only, so nothing wraps (uint16 DN − 1000 is negative, not 64536).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.errors import SceneError
from geoseg.models.bundle import BandSpec
from geoseg.scene import BandRef

if TYPE_CHECKING:
    import torch

__all__ = [
    "Conversion",
    "band_conversions",
    "band_statistics",
    "folded_statistics",
    "normalize",
    "normalize_batch",
]


def _text(encoding: tuple[float, float] | None) -> str:
    """As :meth:`InputEncoding.text` shows it (any numbers, valid or not)."""
    if encoding is None:
        return "none"
    return f"scale {encoding[0]:.10g} offset {encoding[1]:.10g}"


@dataclass(frozen=True)
class Conversion:
    """How one scene band's stored values become the values the bundle was made with:
    ``DN_b = gain × DN + bias`` (float64), from ``(s_i, o_i)`` to ``(s_b, o_b)``:
    ``gain = s_i / s_b``, ``bias = (o_i − o_b) / s_b``.

    Attributes:
        band: the band's name (the bundle's).
        path: the file it is read from.
        source: the scene band's declared ``(scale, offset)``; None: declares none.
        target: the bundle's ``(scale, offset)``; None: the bundle records none.
        gain, bias: the map; 1 and 0 when nothing is converted.
    """

    band: str
    path: str
    source: tuple[float, float] | None
    target: tuple[float, float] | None
    gain: float = 1.0
    bias: float = 0.0

    @property
    def converts(self) -> bool:
        """Whether the values change (gain ≠ 1 or bias ≠ 0)."""
        return self.gain != 1.0 or self.bias != 0.0

    def to_json(self) -> dict[str, Any]:
        """For a scene's record: ``{"from": {"scale", "offset"} | None, "to": …, "gain",
        "bias"}`` (``from``: the scene band's declared encoding, ``to``: the bundle's)."""
        def enc(e: tuple[float, float] | None) -> dict[str, float] | None:
            return None if e is None else {"scale": e[0], "offset": e[1]}

        return {"from": enc(self.source), "to": enc(self.target), "gain": self.gain,
                "bias": self.bias}


def band_conversions(bands: Sequence[BandRef], specs: Sequence[BandSpec],
                     bundle: str = "") -> tuple[Conversion, ...]:
    """Per band, the conversion from the scene band's encoding to the bundle's, or a refusal.

    ============================  =====================  ==================================
    scene band declares           bundle records none    bundle records ``(s_b, o_b)``
    ============================  =====================  ==================================
    nothing (GDAL: 1 and 0)       values as stored       as stored if ``(1, 0)``, else
                                                         **refused**
    ``(s_i, o_i)``                as stored if ``(1,     converted: ``DN_b = (DN × s_i + o_i
                                  0)``, else **refused**  − o_b) / s_b``
    ============================  =====================  ==================================

    A file that declares nothing is taken as identity only where that changes nothing: GDAL
    cannot tell "declares nothing" from "declares 1 and 0", and integer reflectance files
    without metadata (Sentinel-2 JP2 from the SAFE carry BOA_ADD_OFFSET only in the product
    XML) would otherwise be multiplied by 10000 or shifted by 1000 without a word.

    Args:
        bands: the scene's bands, in the bundle's order (:func:`geoseg.scene.select_bands`).
        specs: the bundle's band specs, same order.
        bundle: the bundle's path, for messages.

    Raises:
        SceneError: a band whose encoding cannot be brought to the bundle's; the message names
            the file, the band, both encodings and the fix.
    """
    if len(bands) != len(specs):
        raise ValueError(f"{len(bands)} scene bands for {len(specs)} bundle bands")
    where = f"the bundle {bundle}" if bundle else "the bundle"
    out = []
    for band, spec in zip(bands, specs, strict=True):
        enc = spec.encoding
        target = None if enc is None else (enc.scale, enc.offset)
        source = band.encoding
        head = f"{band.path}: band {band.name} (band {band.index} of the file)"
        if source is not None and not (
                source[0] > 0 and np.isfinite(source[0]) and np.isfinite(source[1])):
            raise SceneError(f"{head} declares {_text(source)}; a scale must be finite and > 0, "
                             "an offset finite: fix the file's metadata")
        if source == target or (target is None and source == (1.0, 0.0)) or (
                source is None and target == (1.0, 0.0)):
            out.append(Conversion(band.name, band.path, source, target))
        elif source is not None and target is None:
            raise SceneError(
                f"{head} declares {_text(source)} (physical = DN × scale + offset) but "
                f"{where} records no input encoding for {band.name}, so geoseg cannot tell "
                "whether its values match the model's; record the encoding the model was made "
                f"with, e.g. `geoseg model set-encoding BUNDLE --scale {source[0]:.10g} "
                f"--offset {source[1]:.10g}` if it was trained on DN in this file's encoding")
        elif source is None and target is not None:
            raise SceneError(
                f"{head} declares no scale/offset, and {where} takes {band.name} as "
                f"{_text(target)}: taking the file's values as physical (scale 1, offset 0) "
                "would change them by that factor and offset; if its DN are in the bundle's "
                f"encoding, declare it in the file: `gdal_edit.py -scale {target[0]:.10g} "
                f"-offset {target[1]:.10g} FILE` (or a VRT)")
        elif source is not None and target is not None:
            gain = source[0] / target[0]
            bias = (source[1] - target[1]) / target[0]
            out.append(Conversion(band.name, band.path, source, target, gain, bias))
    return tuple(out)


def folded_statistics(bands: Sequence[BandSpec],
                      conversions: Sequence[Conversion] | None = None
                      ) -> tuple[tuple[float, float], ...]:
    """Per band, the ``(mean, std)`` that normalize the scene's stored values exactly as the
    bundle's ``mean``/``std`` normalize the converted ones, in float64.

    With the conversion ``DN_b = gain × DN + bias``: ``(DN_b − mean) / std = (DN − mean') /
    std'`` with ``mean' = (mean − bias) / gain`` and ``std' = std / gain``. A band without a
    conversion (None, or gain 1 and bias 0) keeps the bundle's numbers exactly, so its
    normalization is the same to the bit as before encodings existed.
    """
    if conversions is None:
        return tuple((b.mean, b.std) for b in bands)
    if len(conversions) != len(bands):
        raise ValueError(f"{len(conversions)} conversions for {len(bands)} bands")
    out = []
    for b, c in zip(bands, conversions, strict=True):
        if c.converts:
            out.append(((b.mean - c.bias) / c.gain, b.std / c.gain))
        else:
            out.append((b.mean, b.std))
    return tuple(out)


def normalize(raw: np.ndarray, valid: np.ndarray, bands: Sequence[BandSpec],
              conversions: Sequence[Conversion] | None = None) -> np.ndarray:
    """Scale raw pixels to model input.

    Args:
        raw: ``(C, H, W)`` pixels in the scene's dtype, bands in the bundle's order.
        valid: ``(H, W)`` bool, False where any band is nodata (or outside the scene).
        bands: the bundle's band specs, ``C`` of them.
        conversions: per band, from the scene's encoding to the bundle's
            (:func:`band_conversions`); None: the values are the bundle's already.

    Returns:
        ``(C, H, W)`` float32, ``(raw - mean) / std`` (after the conversion, folded into
        ``mean``/``std``); 0 (the band mean) where not valid.
    """
    if raw.ndim != 3 or raw.shape[0] != len(bands):
        raise ValueError(f"expected ({len(bands)}, H, W) pixels, got {raw.shape}")
    stats = folded_statistics(bands, conversions)
    mean = np.array([m for m, _ in stats], dtype=np.float32)[:, None, None]
    scale = np.array([1.0 / s for _, s in stats], dtype=np.float32)[:, None, None]
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
                    device: torch.device | str,
                    conversions: Sequence[Conversion] | None = None) -> torch.Tensor:
    """:func:`normalize` for a batch of tiles, on ``device``: the raw pixels travel in their own
    dtype (uint16: half the bytes of float32), from pinned memory on CUDA (an asynchronous copy
    on the caller's stream), and are scaled there, with the same float32 arithmetic, so the
    result is the same to the bit.

    Args:
        raw: ``(N, C, h, w)`` pixels in the scene's dtype.
        valid: ``(N, h, w)`` bool.
        bands: the bundle's band specs, ``C`` of them.
        device: where the model runs.
        conversions: per band, from the scene's encoding to the bundle's (as in
            :func:`normalize`).

    Returns:
        ``(N, C, h, w)`` float32 tensor on ``device``; 0 where not valid.
    """
    import torch

    if raw.ndim != 4 or raw.shape[1] != len(bands):
        raise ValueError(f"expected (N, {len(bands)}, h, w) pixels, got {raw.shape}")
    mean, scale = _affine(folded_statistics(bands, conversions), str(device))
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
