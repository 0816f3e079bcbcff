"""A rough estimate of a prediction worker's peak memory, from the model and the block grid.

Estimate (bytes) = runtime base (torch and the libraries, measured ~400 MiB) + twice the weights
+ the block's buffers (raw and float32 input with halo, per-class accumulators when blending,
uint8 outputs) + activations: ``batch × 3 ×`` the largest single activation of the model at the
tile size (input, output and the skip connections alive beside it). Checked against
``benchmarks/memory.py`` (U-Net/ResNet-34, tile 1024 with halo 128, batch 4: 2.2 GiB estimated,
1.6–1.8 GiB measured: it errs high); expect ±30 %.

The largest activation is measured by running the model once on a small input, which needs
torch. A process that has not imported torch (``geoseg inspect``: it only reads bundle
headers) has it measured in a short-lived child process (``python -m geoseg.batch.estimate``),
so that it never holds torch itself; the child also checks the bundle in full.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass

from geoseg.blockcache import BLOCK_CACHE_MIB
from geoseg.errors import BundleError
from geoseg.models.bundle import BundleInfo
from geoseg.thumb import QuicklookCanvas
from geoseg.tiling import SceneGrid

__all__ = ["BASE_BYTES", "CLIENT_BASE_BYTES", "ModelSize", "activation_bytes_per_pixel",
           "client_peak_bytes", "measure_model", "scene_client_bytes", "worker_peak_bytes"]

#: Resident memory of an idle worker with torch, rasterio and the model code loaded, bytes.
BASE_BYTES = 400 * 2**20

#: Resident memory of ``geoseg run``'s client (no torch: rasterio, GDAL, shapely, Dask's
#: client and the local scheduler) besides its scenes, bytes. Measured peaks, 4 scenes of
#: 1024² with the demo model, vectorizing: 290 MiB with 1 scene in flight, 312-320 MiB with
#: 2 and 321-323 MiB with 3; the bound (this + in flight × :func:`scene_client_bytes`, 81 MiB
#: each there before the quick-look canvas of :mod:`geoseg.thumb`) errs high: 381, 462 and
#: 543 MiB.
CLIENT_BASE_BYTES = 300 * 2**20


@dataclass(frozen=True)
class ModelSize:
    """What the estimate needs of a model.

    Attributes:
        activation_per_px: bytes of its largest leaf activation per input pixel (float32).
        weight_bytes: bytes of its parameters as built (float32).
        align: the built model's size divisor, pixels.
    """

    activation_per_px: float
    weight_bytes: int
    align: int


_MEASURED: dict[str, ModelSize] = {}


def measure_model(bundle: BundleInfo) -> ModelSize:
    """Load ``bundle`` (checking it in full, as a worker would), build its model and measure
    it; in this process when torch is loaded here already, else in a child process. Cached
    per bundle checksum.

    Raises:
        BundleError: the bundle fails the full check (non-finite weights, weights that do
            not fit, a size divisor other than ``bundle.align``), or the child failed.
    """
    from geoseg.models.bundle import check_align

    if bundle.sha256 not in _MEASURED:
        if "torch" in sys.modules:
            size = _measure(str(bundle.path))
        else:
            size = _measure_in_child(str(bundle.path))
        check_align(bundle, size.align)
        _MEASURED[bundle.sha256] = size
    return _MEASURED[bundle.sha256]


def _measure(path: str) -> ModelSize:
    """:func:`measure_model` in this process (imports torch)."""
    import torch

    from geoseg.models.bundle import load_bundle

    bundle = load_bundle(path)
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
    return ModelSize(largest[0] / (side * side), weights, bundle.align)


def _measure_in_child(path: str) -> ModelSize:
    """:func:`measure_model` in a child Python process (its torch goes when it ends)."""
    done = subprocess.run([sys.executable, "-m", "geoseg.batch.estimate", path],
                          capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        answer = {}
    if "error" in answer:
        raise BundleError(answer["error"])
    if done.returncode != 0 or "align" not in answer:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BundleError(f"{path}: cannot measure the model for the memory estimate "
                          f"(python -m geoseg.batch.estimate: {why})")
    return ModelSize(**answer)


def activation_bytes_per_pixel(bundle: BundleInfo) -> float:
    """Bytes of the model's largest activation per input pixel (float32)."""
    return measure_model(bundle).activation_per_px


def worker_peak_bytes(bundle: BundleInfo, grid: SceneGrid, batch_size: int, n_bands: int,
                      itemsize: int, blend: bool, outputs: int = 1, tasks: int = 1) -> int:
    """Estimated peak resident memory of one prediction worker, bytes, running ``tasks`` block
    tasks at once (``cluster.gpu_tasks`` on a GPU worker: each holds its block's buffers)."""
    size = measure_model(bundle)
    per_px, weights = size.activation_per_px, size.weight_bytes
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


#: Client bytes per quick-look pixel besides the canvas the blocks' parts are summed into
#: (:meth:`~geoseg.thumb.QuicklookCanvas.bytes_per_pixel`): the mean planes drawn from it
#: (3 float64) and the RGBA picture (4 uint8). The mask's picture (uint8 plus RGBA) is drawn
#: after the scene's, from memory that is free again.
_QUICKLOOK_DRAW_BYTES = 3 * 8 + 4


def scene_client_bytes(block_size: int, outputs: int, quicklook_size: int) -> int:
    """Client memory one scene in flight holds at most, bytes.

    The GDAL block cache of its COG writers (:data:`~geoseg.blockcache.BLOCK_CACHE_MIB`;
    GDAL's cache is one per process, so several scenes share it and this errs high); two
    blocks of its ``outputs`` uint8 bands (one being written, one fetched), each with its
    quick-look part (float64 sums of 3 bands and uint32 counts over the picture pixels its core
    touches: at most ``min(block_size, quicklook_size) + 1`` a side); and its quick-look: the
    canvas the parts are summed into (``quicklook_size``² px × 3 float64 sums and an int64
    count, 8 MiB at 512 px), then the picture drawn from it. A scene never holds more: blocks
    stream through and the files are the checkpoint (``docs/architecture.md``).
    """
    side = min(block_size, quicklook_size) + 1
    part = (3 * 8 + 4) * side**2
    blocks = 2 * (outputs * block_size**2 + part)
    quicklooks = quicklook_size**2 * (QuicklookCanvas.bytes_per_pixel() + _QUICKLOOK_DRAW_BYTES)
    return int(BLOCK_CACHE_MIB * 2**20 + blocks + quicklooks)


def client_peak_bytes(scenes_in_flight: int, per_scene: int) -> int:
    """The bound on ``geoseg run``'s client memory, bytes: its base plus ``scenes_in_flight``
    times the largest ``per_scene`` budget (:func:`scene_client_bytes`)."""
    return CLIENT_BASE_BYTES + scenes_in_flight * per_scene


def _main(argv: list[str]) -> int:
    """``python -m geoseg.batch.estimate BUNDLE``: one line of JSON, the :class:`ModelSize`
    fields or ``{"error": message}`` (exit status 1)."""
    from geoseg.errors import GeoSegError

    try:
        size = _measure(argv[0])
    except GeoSegError as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(asdict(size)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
