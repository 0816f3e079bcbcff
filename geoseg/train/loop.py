"""The optimisation loop: augmented batches, weighted cross-entropy, validation mIoU, early stop.

Training length is counted in optimizer steps; every ``steps_per_epoch`` steps (an epoch) the
model is scored on the validation chips. Each batch is freshly drawn (``draw(rng, n)``, e.g.
:meth:`~geoseg.train.chips.TrainAreas.draw`: random positions in the labelled area). Batches
are normalized with :func:`geoseg.normalize.normalize`, the function prediction uses,
so the model sees exactly the input it will see at prediction time. Augmentation is the eight
symmetries of the square (flips and 90° rotations), drawn per chip.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.evaluate import accumulate_confusion, scores_from_confusion
from geoseg.labels import IGNORE
from geoseg.models.bundle import BandSpec
from geoseg.normalize import normalize
from geoseg.train.chips import ChipSet

if TYPE_CHECKING:
    import torch

__all__ = ["EpochRecord", "FitResult", "class_weights", "class_weights_from_counts", "fit",
           "make_batch"]

log = logging.getLogger(__name__)

#: Called with ``(epoch, step, steps)`` after every optimisation step (epochs count from 1;
#: ``step`` of ``steps`` within the epoch).
StepCallback = Callable[[int, int, int], None]
#: ``draw(rng, n)``: ``n`` training chips (random positions, not yet augmented).
ChipDraw = Callable[[np.random.Generator, int], ChipSet]


@dataclass(frozen=True)
class EpochRecord:
    """Metrics of one epoch (``val_*`` are None without validation chips)."""

    epoch: int
    step: int  # optimizer steps taken when the epoch ended (this run)
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    val_miou: float | None
    val_class_iou: dict[str, float | None] | None
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """What :func:`fit` did: history, the best epoch (and its step) and its weights (CPU
    tensors), the optimizer steps taken."""

    history: list[EpochRecord]
    best_epoch: int
    best_score: float | None
    best_state: dict[str, torch.Tensor]
    stopped_early: bool
    steps: int = 0
    best_step: int = 0


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Cross-entropy weights ``(K,)`` float32: ``balanced`` ∝ 1/sqrt(pixel frequency), mean 1
    over the classes present, clipped to [0.1, 10]; 0 for absent classes; ``none`` all ones."""
    counts = np.bincount(labels[labels != IGNORE].ravel(), minlength=n_classes)[:n_classes]
    return class_weights_from_counts(counts, mode)


def class_weights_from_counts(counts: np.ndarray, mode: str) -> np.ndarray:
    """:func:`class_weights` from labelled pixels per class ``(K,)``."""
    n_classes = len(counts)
    if mode == "none":
        return np.ones(n_classes, dtype=np.float32)
    weights = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = 1.0 / np.sqrt(counts[present] / counts.sum())
    weights[present] /= weights[present].mean()
    weights[present] = np.clip(weights[present], 0.1, 10.0)
    return weights.astype(np.float32)


def make_batch(
    chips: ChipSet, index: Iterable[int], bands: Sequence[BandSpec],
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalized inputs ``(B, C, S, S)`` float32 and labels ``(B, S, S)`` int64.

    With ``rng``, each chip gets a random flip/rot90 (one of the 8 symmetries of the square).
    """
    xs, ys = [], []
    for k in index:
        x = normalize(chips.raw[k], chips.valid[k], bands)
        y = chips.labels[k]
        if rng is not None:
            turns = int(rng.integers(4))
            x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
            if rng.integers(2):
                x, y = x[:, :, ::-1], y[:, ::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return np.stack(xs), np.stack(ys).astype(np.int64)


def _autocast(device: torch.device, precision: str) -> Any:
    import contextlib

    import torch

    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _evaluate(model: torch.nn.Module, chips: ChipSet, bands: Sequence[BandSpec],
              loss_fn: Any, device: torch.device, precision: str, batch_size: int,
              names: list[str]) -> tuple[float, float, float, dict[str, float | None]]:
    """Validation ``(loss, accuracy, mIoU, per-class IoU)`` over ``chips``, no augmentation."""
    import torch

    model.eval()
    confusion = np.zeros((256, 256), dtype=np.int64)
    loss_sum, n_batches = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(chips), batch_size):
            idx = range(start, min(start + batch_size, len(chips)))
            x, y = make_batch(chips, idx, bands, None)
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            with _autocast(device, precision):
                logits = model(xt)
            loss_sum += float(loss_fn(logits.float(), yt))
            n_batches += 1
            pred = logits.max(dim=1).indices.to(torch.uint8).cpu().numpy()
            accumulate_confusion(y.astype(np.uint8), pred, confusion)
    k = len(names)
    scores = scores_from_confusion(confusion[:k, :k], names)
    per_class = {c.name: c.iou for c in scores.classes}
    return loss_sum / max(n_batches, 1), scores.overall_accuracy, scores.mean_iou, per_class


def fit(
    model: torch.nn.Module,
    draw: ChipDraw,
    class_counts: np.ndarray,
    val: ChipSet,
    bands: Sequence[BandSpec],
    names: list[str],
    *,
    steps: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    weighting: str,
    patience: int,
    seed: int,
    device: torch.device,
    precision: str = "fp32",
    on_step: StepCallback | None = None,
    on_epoch: Callable[[EpochRecord, bool], None] | None = None,
) -> FitResult:
    """Train ``model`` in place for ``steps`` optimizer steps (AdamW, cosine-annealed over
    them); keep the weights of the epoch with the best validation mIoU.

    Args:
        draw: gives each batch's chips (augmented here with a random flip/rot90 each).
        class_counts: labelled training pixels per class, for the loss weights.
        val: the validation chips, scored every ``steps_per_epoch`` steps and at the end.

    Without validation chips the last epoch is kept and there is no early stopping.
    ``on_epoch(record, improved)`` is called after each epoch (e.g. to save a checkpoint).
    """
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    weights = class_weights_from_counts(class_counts, weighting)
    log.info("class weights %s", dict(zip(names, weights.round(3).tolist(), strict=True)))
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(device),
                                        ignore_index=IGNORE)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")
    history: list[EpochRecord] = []
    best_score: float | None = None
    best_epoch, best_step, since_best, stopped = 0, 0, 0, False
    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    taken = 0
    epochs = math.ceil(steps / steps_per_epoch)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum, correct, counted = 0.0, 0, 0
        in_epoch = min(steps_per_epoch, steps - taken)
        for step in range(1, in_epoch + 1):
            chips = draw(rng, batch_size)
            x, y = make_batch(chips, range(len(chips)), bands, rng)
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                logits = model(xt)
            loss = loss_fn(logits.float(), yt)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            taken += 1
            loss_sum += float(loss.detach())
            with torch.no_grad():
                keep = yt != IGNORE
                correct += int((logits.detach().max(dim=1).indices == yt)[keep].sum())
                counted += int(keep.sum())
            if on_step is not None:
                on_step(epoch, step, in_epoch)
        val_loss = val_acc = val_miou = None
        per_class = None
        if len(val):
            val_loss, val_acc, val_miou, per_class = _evaluate(
                model, val, bands, loss_fn, device, precision, batch_size, names)
        record = EpochRecord(epoch, taken, loss_sum / in_epoch, correct / max(counted, 1),
                             val_loss, val_acc, val_miou, per_class,
                             float(scheduler.get_last_lr()[0]), time.perf_counter() - start)
        history.append(record)
        log.info("epoch %d (step %d): loss %.4f, acc %.3f, val mIoU %s (%.1f s)", epoch, taken,
                 record.train_loss, record.train_accuracy,
                 "-" if val_miou is None else f"{val_miou:.3f}", record.seconds)
        score = val_miou if val_miou is not None and not math.isnan(val_miou) else None
        improved = len(val) == 0 or (score is not None and (best_score is None
                                                             or score > best_score))
        if improved:
            best_score, best_epoch, best_step, since_best = score, epoch, taken, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if on_epoch is not None:
            on_epoch(record, improved)
        if len(val) and since_best >= patience and taken < steps:
            stopped = True
            log.info("early stop after epoch %d (step %d): no val mIoU gain for %d epochs",
                     epoch, taken, patience)
            break
    model.load_state_dict(best_state)
    return FitResult(history, best_epoch, best_score, best_state, stopped, taken, best_step)
