"""Normalization per batch of tiles on the model's device equals the block-wide one, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoseg.models.bundle import BandSpec
from geoseg.normalize import normalize, normalize_batch

BANDS = [BandSpec(name=f"b{i}", mean=1000 + 7.3 * i, std=300 + 11.1 * i) for i in range(4)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = (rng.random((3, 4, 50, 60)) * 3000).astype(dtype)
    valid = rng.random((3, 50, 60)) > 0.2
    if dtype == "uint16":  # the top of the range, where uint16 and int16 bits differ
        raw[0, 0, :3, :3], raw[2, 3, 7, 9] = 65535, 40000
    if dtype == "float32":
        raw[0, 1, 2, 3], raw[1, 0, 5, 5] = np.nan, np.inf  # read_window marks them invalid
        valid &= np.isfinite(raw).all(axis=1)
    return raw, valid


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_batch_normalization_is_bit_identical(dtype: str, device: str) -> None:
    raw, valid = _batch(dtype)
    expected = np.stack([normalize(raw[n], valid[n], BANDS) for n in range(len(raw))])
    before = raw.copy()
    got = normalize_batch(raw, valid, BANDS, device)
    assert np.array_equal(raw, before, equal_nan=True)  # the input is left alone
    assert got.dtype == torch.float32 and got.device.type == device
    assert np.array_equal(got.cpu().numpy(), expected)
    assert (got.cpu().numpy()[np.broadcast_to(~valid[:, None], raw.shape)] == 0).all()


def test_wrong_band_count_is_an_error() -> None:
    raw, valid = _batch("uint16")
    with pytest.raises(ValueError, match=r"expected \(N, 3, h, w\)"):
        normalize_batch(raw, valid, BANDS[:3], "cpu")
