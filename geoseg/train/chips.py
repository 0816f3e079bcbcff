"""Training chips: where they lie (pure window math), the spatial validation split, and reading.

Chips sit on a lattice (``chip_size`` windows every ``stride`` pixels, the last one flush with
the scene edge). The validation split is by area: the scene is cut into square blocks of
``val_block`` pixels, a seeded fraction of the labelled blocks is held out, and a chip belongs
to validation when every block it touches is held out, to training when none is; chips that
straddle the two are dropped, so no training pixel is ever a validation pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.labels import IGNORE, LabelSource
from geoseg.scene import BandRef, read_window
from geoseg.tiling import Window

__all__ = [
    "ChipSet",
    "chip_windows",
    "read_chips",
    "split_chips",
    "touched_blocks",
]


def _axis_starts(extent: int, size: int, stride: int) -> list[int]:
    if extent <= size:
        return [0]
    starts = list(range(0, extent - size + 1, stride))
    if starts[-1] != extent - size:
        starts.append(extent - size)
    return starts


def chip_windows(height: int, width: int, size: int, stride: int) -> list[Window]:
    """``size x size`` windows every ``stride`` px covering a ``height x width`` scene.

    The last row and column of chips are flush with the scene edge; a scene smaller than a
    chip gets one chip at the origin that reaches past its edges (read as nodata).
    """
    return [Window(r, c, size, size) for r in _axis_starts(height, size, stride)
            for c in _axis_starts(width, size, stride)]


def touched_blocks(window: Window, block: int) -> frozenset[tuple[int, int]]:
    """``(i, j)`` indices of the ``block``-px squares that ``window`` overlaps."""
    r0, c0 = max(window.row, 0) // block, max(window.col, 0) // block
    r1, c1 = (max(window.row_stop, 1) - 1) // block, (max(window.col_stop, 1) - 1) // block
    return frozenset((i, j) for i in range(r0, r1 + 1) for j in range(c0, c1 + 1))


def split_chips(
    windows: Sequence[Window], block: int, fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Split chips by area into ``(train, validation)`` indices into ``windows``.

    The held-out blocks are a seeded random ``fraction`` (at least one when ``fraction > 0``
    and there are two or more labelled blocks) of the blocks holding a chip's centre.
    """
    homes = sorted({((w.row + w.height // 2) // block, (w.col + w.width // 2) // block)
                    for w in windows})
    n_val = 0
    if fraction > 0 and len(homes) >= 2:
        n_val = min(len(homes) - 1, max(1, round(fraction * len(homes))))
    order = rng.permutation(len(homes))
    held = {homes[k] for k in order[:n_val]}
    train, val = [], []
    for k, window in enumerate(windows):
        blocks = touched_blocks(window, block)
        if blocks <= held:
            val.append(k)
        elif not blocks & held:
            train.append(k)
    return train, val


@dataclass
class ChipSet:
    """Chips held in memory, raw (normalized per batch exactly as prediction does).

    Attributes:
        raw: ``(N, C, S, S)`` pixels in the scene's dtype.
        valid: ``(N, S, S)`` bool, False where any band is nodata or outside the scene.
        labels: ``(N, S, S)`` uint8 class ids, :data:`~geoseg.labels.IGNORE` where unlabelled
            (always where not valid).
        origin: one ``(scene index, window)`` per chip.
    """

    raw: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    origin: list[tuple[int, Window]]

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def subset(self, index: Sequence[int]) -> ChipSet:
        """The chips at ``index`` (copies)."""
        idx = np.asarray(index, dtype=np.int64)
        return ChipSet(self.raw[idx], self.valid[idx], self.labels[idx],
                       [self.origin[int(k)] for k in idx])

    @staticmethod
    def concat(parts: Sequence[ChipSet]) -> ChipSet:
        """All chips of ``parts``, in order."""
        return ChipSet(np.concatenate([p.raw for p in parts]),
                       np.concatenate([p.valid for p in parts]),
                       np.concatenate([p.labels for p in parts]),
                       [o for p in parts for o in p.origin])


def read_chips(
    scene_index: int,
    bands: Sequence[BandRef],
    height: int,
    width: int,
    labels: LabelSource,
    windows: Sequence[Window],
    min_labelled: float,
    progress: Callable[[int, int], None] | None = None,
) -> ChipSet:
    """Read the chips among ``windows`` with at least ``min_labelled`` labelled valid pixels.

    Labels are read first (cheap); the scene only where a chip is kept.
    """
    raws, valids, labs, origin = [], [], [], []
    for k, window in enumerate(windows):
        lab = labels.read(window)
        need = max(1, int(np.ceil(min_labelled * window.area)))
        if int((lab != IGNORE).sum()) >= need:
            raw, valid = read_window(bands, window, height, width)
            lab[~valid] = IGNORE
            if int((lab != IGNORE).sum()) >= need:
                raws.append(raw)
                valids.append(valid)
                labs.append(lab)
                origin.append((scene_index, window))
        if progress is not None:
            progress(k + 1, len(windows))
    if not raws:
        return ChipSet(np.zeros((0, len(bands), 1, 1), np.uint8), np.zeros((0, 1, 1), bool),
                       np.zeros((0, 1, 1), np.uint8), [])
    return ChipSet(np.stack(raws), np.stack(valids), np.stack(labs), origin)
