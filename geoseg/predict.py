"""Batched tile inference for one block: read, normalize, run tiles through the model, stitch.

This is the body of every prediction task. It runs in whatever process executes the task (a
Dask worker, or the client with the synchronous scheduler) and finds its model in that
process's cache, which :mod:`geoseg.workers` fills once per worker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geoseg.maskfile import NODATA
from geoseg.models.bundle import BandSpec
from geoseg.normalize import Conversion, band_conversions
from geoseg.scene import BandRef, read_window
from geoseg.thumb import QuicklookPart, QuicklookSpec, quicklook_part
from geoseg.tiling import Block, Tile, cosine_ramp

if TYPE_CHECKING:
    import torch

__all__ = [
    "NODATA",
    "BlockJob",
    "BlockResult",
    "ModelRef",
    "OutputSpec",
    "cache_model",
    "get_model",
    "has_model",
    "predict_block",
    "resolve_device",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ModelRef:
    """How a task finds its model, and how to run it. Hashable: the cache key.

    Attributes:
        path: bundle file (used when the worker has no copy registered yet).
        sha256: the bundle's checksum; two refs with the same checksum share weights.
        device: ``"auto"`` (CUDA when the process sees a GPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast (CUDA only).
        channels_last: run convolutions in NHWC memory format.
        threads: torch intra-op threads for this process (``None``: torch's default).
    """

    path: str
    sha256: str
    device: str = "auto"
    precision: Precision = "fp32"
    channels_last: bool = False
    threads: int | None = None


@dataclass(frozen=True)
class OutputSpec:
    """Which rasters a block produces, stacked along the first axis of its result.

    Band 0 is always the class id; then the confidence (max probability, percent) if asked;
    then one probability band per class (percent) if asked.
    """

    n_classes: int
    confidence: bool = False
    probabilities: bool = False

    @property
    def count(self) -> int:
        return 1 + int(self.confidence) + (self.n_classes if self.probabilities else 0)

    @property
    def needs_softmax(self) -> bool:
        return self.confidence or self.probabilities


@dataclass(frozen=True)
class BlockJob:
    """What every block task of one scene shares (small, picklable).

    Attributes:
        bands: the scene bands to read, in the model's order.
        height, width: the scene size, pixels.
        stats: per-band normalization, same order as ``bands``.
        model: the model to run.
        outputs: what to produce.
        batch_size: tiles per forward pass.
        blend: weighted blending of probabilities instead of halo trimming.
        halo: the lattice halo, pixels (for the blending weights).
        crs_wkt, transform: the scene grid, for bands resampled onto it on read.
        quicklook: what each block adds to the scene's quick-look from the raw pixels it
            reads (:mod:`geoseg.thumb`); None (``geoseg predict``): no quick-look parts.
        conversions: per band, from the scene band's declared encoding to the bundle's
            (:func:`geoseg.normalize.band_conversions`), worked out when the job is made:
            a job whose bands cannot be brought to the bundle's encoding is never made (the
            constructor raises :class:`~geoseg.errors.SceneError`, before any block runs).
            What a scene's record shows as its conversions.
    """

    bands: tuple[BandRef, ...]
    height: int
    width: int
    stats: tuple[BandSpec, ...]
    model: ModelRef
    outputs: OutputSpec
    batch_size: int = 4
    blend: bool = False
    halo: int = 0
    crs_wkt: str = ""
    transform: tuple[float, ...] = ()
    quicklook: QuicklookSpec | None = None
    conversions: tuple[Conversion, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "conversions",
                           band_conversions(self.bands, self.stats, self.model.path))

    @property
    def converted(self) -> dict[str, dict[str, Any]]:
        """The bands whose values are converted: band name → :meth:`Conversion.to_json`
        (empty when the scene is in the bundle's encoding), for the scene's record."""
        return {c.band: c.to_json() for c in self.conversions if c.converts}


@dataclass(frozen=True, eq=False)
class BlockResult:
    """What one block task returns.

    Attributes:
        classes: ``(job.outputs.count, h, w)`` uint8 over the block core: class ids, then the
            optional confidence and per-class probabilities in percent; :data:`NODATA` where
            the input is nodata.
        quicklook: the block's share of the scene's quick-look, from the raw pixels it read;
            None when the job asks for none, or when the block core holds no valid pixel.
    """

    classes: np.ndarray
    quicklook: QuicklookPart | None = None


@dataclass
class _Loaded:
    module: torch.nn.Module
    device: torch.device


_CACHE: dict[ModelRef, _Loaded] = {}
_LOCK = threading.Lock()
_THREAD = threading.local()  # per task thread: its CUDA streams


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_model(ref: ModelRef, module: torch.nn.Module) -> _Loaded:
    """Put an eval-mode model into this process's cache under ``ref`` (on its device)."""
    import torch

    if ref.threads:
        torch.set_num_threads(ref.threads)
    device = torch.device(resolve_device(ref.device))
    module = module.eval().to(device)
    if ref.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if device.type == "cuda":  # the weights are there before a task's own stream reads them
        torch.cuda.synchronize(device)
    loaded = _Loaded(module, device)
    with _LOCK:
        _CACHE[ref] = loaded
    log.info("model %s… ready on %s", ref.sha256[:12], device)
    return loaded


def has_model(ref: ModelRef) -> bool:
    """Whether this process has the model for ``ref`` loaded."""
    with _LOCK:
        return ref in _CACHE


def get_model(ref: ModelRef) -> _Loaded:
    """The model for ``ref`` in this process, loading the bundle from ``ref.path`` if needed.

    Also sets torch's intra-op threads to ``ref.threads`` *in the calling thread*: the OpenMP
    thread count is per thread, and Dask runs tasks in threads other than the one that loaded
    the model (its workers start with ``OMP_NUM_THREADS=1``), so setting it once at load time
    left the model on one core (measured: 0.67× of the model-only ceiling on a 2-core worker).
    """
    with _LOCK:
        loaded = _CACHE.get(ref)
    if loaded is None:
        from geoseg.models.bundle import load_bundle

        bundle = load_bundle(ref.path)
        loaded = cache_model(ref, bundle.build())
    if ref.threads:
        import torch

        if torch.get_num_threads() != ref.threads:
            torch.set_num_threads(ref.threads)
    return loaded


def _task_stream(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """This thread's own CUDA stream on ``device`` (nothing elsewhere).

    Tasks sharing a GPU (``cluster.gpu_tasks``) run in different threads; on the default stream
    one task's host-to-device copy would wait for the other's queued kernels. On their own
    streams, with pinned batches (:func:`geoseg.normalize.normalize_batch`), one task's copies
    overlap the other's compute. Results are copied back with a sync of this stream only.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    import torch

    streams = _THREAD.__dict__.setdefault("streams", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return torch.cuda.stream(streams[device])


@functools.lru_cache(maxsize=16)
def _ramp(length: int, halo: int) -> np.ndarray:
    return np.asarray(cosine_ramp(length, halo), dtype=np.float32)


def _blend_weights(tile: Tile, halo: int) -> np.ndarray:
    """``(h, w)`` float32 weights of a tile's (trimmed) window, defined on its nominal window."""
    nom, win = tile.nominal, tile.window
    rows = _ramp(nom.height, halo)[win.row - nom.row : win.row_stop - nom.row]
    cols = _ramp(nom.width, halo)[win.col - nom.col : win.col_stop - nom.col]
    return rows[:, None] * cols[None, :]


def _forward(loaded: _Loaded, job: BlockJob, raw: np.ndarray, valid: np.ndarray
             ) -> torch.Tensor:
    """Logits ``(N, K, H, W)`` float32 on the model's device for a ``(N, C, H, W)`` batch of raw
    pixels (``valid``: ``(N, H, W)`` bool), normalized on that device."""
    import torch

    from geoseg.normalize import normalize_batch

    ref = job.model
    x = normalize_batch(raw, valid, job.stats, loaded.device, job.conversions)
    if ref.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if ref.precision != "fp32" and loaded.device.type == "cuda":
            dtype = torch.bfloat16 if ref.precision == "bf16" else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                logits = loaded.module(x)
        else:
            logits = loaded.module(x)
    return logits.float()


def _encode(scores: torch.Tensor, spec: OutputSpec, are_probs: bool) -> np.ndarray:
    """``(N, count, h, w)`` uint8 outputs from ``(N, K, h, w)`` logits or probabilities.

    Runs on the scores' device and copies only the uint8 result back, once per batch (one
    device sync per batch, not per tile).
    """
    import torch

    if not spec.needs_softmax:  # cheap argmax, no softmax
        return scores.max(dim=1).indices.to(torch.uint8)[:, None].cpu().numpy()
    p = scores if are_probs else scores.softmax(dim=1)
    conf, cls = p.max(dim=1)
    parts = [cls.to(torch.uint8)[:, None]]
    if spec.confidence:
        parts.append((conf * 100.0).round_().to(torch.uint8)[:, None])
    if spec.probabilities:
        parts.append((p * 100.0).round_().to(torch.uint8))
    return torch.cat(parts, dim=1).cpu().numpy()


def _batches(tiles: list[Tile], size: int) -> list[list[Tile]]:
    """Tiles grouped by window shape (only equal shapes stack), then cut into batches."""
    groups: dict[tuple[int, int], list[Tile]] = defaultdict(list)
    for tile in tiles:
        groups[tile.window.shape].append(tile)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def predict_block(block: Block, job: BlockJob) -> BlockResult:
    """Predict one block (and, if the job asks, its share of the quick-look).

    Returns:
        the block core's classes (:class:`BlockResult`): ``(job.outputs.count, h, w)`` uint8,
        class ids, then the optional confidence and per-class probabilities in percent;
        :data:`NODATA` where the input is nodata or outside the scene. Tiles whose core holds
        no valid pixel are not run; a block with no valid pixel never touches the model.
    """
    spec = job.outputs
    out = np.full((spec.count, *block.core.shape), NODATA, dtype=np.uint8)
    raw, valid = read_window(job.bands, block.read, job.height, job.width, job.crs_wkt,
                             job.transform)
    core_in_read = block.core.relative_to(block.read).slices()
    if not valid[core_in_read].any():
        return BlockResult(out)
    part = _quicklook_part(block, job, raw[(slice(None), *core_in_read)],
                           valid[core_in_read])
    if job.blend:
        import torch

        probs = _predict_blended(block, job, raw, valid)[(slice(None), *core_in_read)]
        out[:] = _encode(torch.from_numpy(np.ascontiguousarray(probs))[None], spec, True)[0]
    else:
        _predict_trimmed(block, job, raw, valid, out)
    out[:, ~valid[core_in_read]] = NODATA
    return BlockResult(out, part)


def _quicklook_part(block: Block, job: BlockJob, raw_core: np.ndarray, valid_core: np.ndarray
                    ) -> QuicklookPart | None:
    """The block core's quick-look part from ``raw_core`` (``(C, h, w)`` over its core, as
    read: a view) and ``valid_core`` (``(h, w)`` bool); None without a spec."""
    ql = job.quicklook
    if ql is None:
        return None
    return quicklook_part(raw_core[list(ql.bands)], valid_core, (block.core.row, block.core.col),
                          (job.height, job.width), ql.shape)


def _live_tiles(block: Block, valid: np.ndarray, region: str) -> list[Tile]:
    keep = []
    for tile in block.tiles:
        win = (tile.core if region == "core" else tile.window).intersection(block.core)
        if win is not None and valid[win.relative_to(block.read).slices()].any():
            keep.append(tile)
    return keep


def _stack(a: np.ndarray, block: Block, batch: list[Tile]) -> np.ndarray:
    """The batch's tile windows cut from ``a`` (``(..., H, W)`` over the block's read window),
    stacked: ``(N, ..., h, w)``."""
    return np.stack([a[(..., *t.window.relative_to(block.read).slices())] for t in batch])


def _predict_trimmed(
    block: Block, job: BlockJob, raw: np.ndarray, valid: np.ndarray, out: np.ndarray
) -> None:
    """Halo trimming: each output pixel comes from the one tile whose core holds it."""
    loaded = get_model(job.model)
    spec = job.outputs
    with _task_stream(loaded.device):
        for batch in _batches(_live_tiles(block, valid, "core"), job.batch_size):
            logits = _forward(loaded, job, _stack(raw, block, batch),
                              _stack(valid, block, batch))
            encoded = _encode(logits, spec, False)
            for n, tile in enumerate(batch):
                src = tile.core.relative_to(tile.window).slices()
                dst = tile.core.relative_to(block.core).slices()
                out[(slice(None), *dst)] = encoded[(n, slice(None), *src)]


def _predict_blended(block: Block, job: BlockJob, raw: np.ndarray, valid: np.ndarray
                     ) -> np.ndarray:
    """Weighted blending: softmax probabilities of every overlapping tile, cosine-weighted.

    Returns ``(K, H, W)`` float32 blended probabilities over the block's read window.
    """
    import torch

    loaded = get_model(job.model)
    k = job.outputs.n_classes
    acc = np.zeros((k, *block.read.shape), dtype=np.float32)
    wsum = np.zeros(block.read.shape, dtype=np.float32)
    with _task_stream(loaded.device):
        for batch in _batches(_live_tiles(block, valid, "window"), job.batch_size):
            logits = _forward(loaded, job, _stack(raw, block, batch),
                              _stack(valid, block, batch))
            weights = np.stack([_blend_weights(tile, job.halo) for tile in batch])
            w = torch.from_numpy(weights).to(logits.device)[:, None]
            weighted = (logits.softmax(dim=1) * w).cpu().numpy()  # one copy back per batch
            for n, tile in enumerate(batch):
                dst = tile.window.relative_to(block.read).slices()
                acc[(slice(None), *dst)] += weighted[n]
                wsum[dst] += weights[n]
    np.maximum(wsum, np.float32(1e-12), out=wsum)
    acc /= wsum[None]
    return acc
