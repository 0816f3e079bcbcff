"""Measure a model's receptive field: the halo that makes the mask independent of tiling."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["receptive_field_radius"]


def receptive_field_radius(
    model: torch.nn.Module, in_channels: int, size: int = 512, trials: int = 2
) -> int:
    """Pixels on each side of an output pixel that can influence it (its receptive field radius).

    The support of the gradient of one centre output pixel w.r.t. the input, over a few random
    inputs (union, so inactive ReLUs do not hide a path). A halo of at least this radius, rounded
    up to the model's stride, makes the mask identical for every tile and block size (for models
    without image-level pooling). If the radius reaches the border of the ``size`` probe, the
    true radius is larger: probe again with a bigger ``size``.

    Args:
        model: an eval-mode segmentation model returning ``(N, K, H, W)``.
        in_channels: number of input bands.
        size: side of the probe input, pixels (a multiple of the model's stride).
        trials: random inputs to union.

    Returns:
        The radius in pixels (``size // 2`` means "at least that").
    """
    import torch

    model = model.eval()
    support = torch.zeros(size, size, dtype=torch.bool)
    c = size // 2
    generator = torch.Generator().manual_seed(0)
    for _ in range(trials):
        x = torch.randn(1, in_channels, size, size, generator=generator, requires_grad=True)
        out = model(x)
        out[0, :, c, c].sum().backward()
        assert x.grad is not None
        support |= x.grad[0].abs().sum(dim=0) > 0
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0:
        return 0
    return int(max(c - rows.min(), rows.max() - c, c - cols.min(), cols.max() - c))
