"""A rough estimate of a prediction worker's peak memory, from the model and the block grid.

Estimate (bytes) = runtime base (torch and the libraries, measured ~400 MiB) + twice the weights
+ the block's buffers (raw and float32 input with halo, per-class accumulators when blending,
uint8 outputs) + activations: ``batch × 3 ×`` the largest single activation of the model at the
tile size (input, output and the skip connections alive beside it). Checked against
``benchmarks/memory.py`` (U-Net/ResNet-34, tile 1024 with halo 128, batch 4: 2.2 GiB estimated,
1.6–1.8 GiB measured: it errs high); expect ±30 %.
"""

from __future__ import annotations

from geoseg.models.bundle import Bundle
from geoseg.tiling import SceneGrid

__all__ = ["BASE_BYTES", "activation_bytes_per_pixel", "worker_peak_bytes"]

#: Resident memory of an idle worker with torch, rasterio and the model code loaded, bytes.
BASE_BYTES = 400 * 2**20


_MEASURED: dict[str, tuple[float, int]] = {}


def _largest_activation(bundle: Bundle) -> tuple[float, int]:
    """``(bytes per input pixel of the largest leaf activation, weight bytes)``."""
    import torch

    if bundle.sha256 in _MEASURED:
        return _MEASURED[bundle.sha256]

    model = bundle.build().eval()
    side = max(bundle.align * 4, 64)
    largest = [0]

    def hook(_module: torch.nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children())]
    with torch.inference_mode():
        model(torch.zeros(1, len(bundle.meta.bands), side, side))
    for h in handles:
        h.remove()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    _MEASURED[bundle.sha256] = (largest[0] / (side * side), weights)
    return _MEASURED[bundle.sha256]


def activation_bytes_per_pixel(bundle: Bundle) -> float:
    """Bytes of the model's largest activation per input pixel (float32)."""
    return _largest_activation(bundle)[0]


def worker_peak_bytes(bundle: Bundle, grid: SceneGrid, batch_size: int, n_bands: int,
                      itemsize: int, blend: bool, outputs: int = 1, tasks: int = 1) -> int:
    """Estimated peak resident memory of one prediction worker, bytes, running ``tasks`` block
    tasks at once (``cluster.gpu_tasks`` on a GPU worker: each holds its block's buffers)."""
    per_px, weights = _largest_activation(bundle)
    tile = grid.lattice.tile_size
    read = grid.block_size + 2 * grid.lattice.halo
    n_classes = len(bundle.meta.classes)
    # the block's raw pixels and validity; tiles are normalized per batch (float32)
    buffers = read * read * (n_bands * itemsize + 1) + outputs * grid.block_size ** 2
    buffers += 2 * batch_size * n_bands * tile * tile * 4
    if blend:
        buffers += (n_classes + 1) * read * read * 4
    activations = 3 * batch_size * per_px * tile * tile
    return int(BASE_BYTES + 2 * weights + tasks * buffers + activations)
