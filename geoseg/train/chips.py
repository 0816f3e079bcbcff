"""Training chips: where they lie (pure window math), the spatial validation split, and reading.

The validation split is by area. The scenes are cut into square *validation blocks* of
``val_block`` pixels, aligned to the scene origin; when the labelled area spans too few blocks
for a split, the block side is halved (down to :data:`MIN_VAL_BLOCK`) until it spans enough
(:func:`choose_val_block`). A seeded share of the labelled blocks is held out.

- Validation chips tile the held-out blocks (:func:`validation_windows`): fixed windows, read
  once, never augmented, so every epoch is scored on the same pixels.
- Training chips are drawn anew for every batch at random positions inside the *training
  areas* (:class:`TrainAreas`): the labelled parts of each scene, read once, with the held-out
  blocks blanked (nodata, unlabelled), so no validation pixel, label or input, is ever seen in
  training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.labels import IGNORE, LabelSource
from geoseg.scene import BandRef, read_window
from geoseg.tiling import Window

__all__ = [
    "CELL",
    "MIN_VAL_BLOCK",
    "ChipSet",
    "TrainAreas",
    "block_counts",
    "choose_val_block",
    "chip_windows",
    "labelled_cells",
    "read_chips",
    "split_blocks",
    "split_chips",
    "touched_blocks",
    "validation_windows",
]

#: Side of the cells in which labelled pixels are counted once per scene, px; validation
#: blocks are multiples of it.
CELL = 16
#: The smallest validation block :func:`choose_val_block` shrinks to, px.
MIN_VAL_BLOCK = 64
#: Side of the windows in which training areas are read (labelled parts only), px.
AREA = 2048


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
    and there are two or more labelled blocks) of the blocks holding a chip's centre; chips
    touching both kinds of block are dropped.
    """
    homes = sorted({((w.row + w.height // 2) // block, (w.col + w.width // 2) // block)
                    for w in windows})
    held = set(split_blocks(homes, fraction, rng))
    train, val = [], []
    for k, window in enumerate(windows):
        blocks = touched_blocks(window, block)
        if blocks <= held:
            val.append(k)
        elif not blocks & held:
            train.append(k)
    return train, val


def split_blocks(blocks: Sequence[tuple[int, ...]], fraction: float,
                 rng: np.random.Generator) -> list[tuple[int, ...]]:
    """The held-out blocks: a seeded ``fraction`` of ``blocks`` (sorted first), at least one
    when ``fraction > 0`` and there are two or more, never all of them."""
    blocks = sorted(blocks)
    n_val = 0
    if fraction > 0 and len(blocks) >= 2:
        n_val = min(len(blocks) - 1, max(1, round(fraction * len(blocks))))
    order = rng.permutation(len(blocks))
    return [blocks[k] for k in sorted(order[:n_val])]


def labelled_cells(labels: LabelSource, height: int, width: int, read: int = AREA) -> np.ndarray:
    """Labelled pixels per :data:`CELL`-px cell, ``(ceil(H/CELL), ceil(W/CELL))`` int64,
    reading the labels ``read`` px at a time."""
    rows, cols = -(-height // CELL), -(-width // CELL)
    counts = np.zeros((rows, cols), dtype=np.int64)
    read = max(read // CELL, 1) * CELL
    for r in range(0, rows * CELL, read):
        for c in range(0, cols * CELL, read):
            h, w = min(read, rows * CELL - r), min(read, cols * CELL - c)
            lab = labels.read(Window(r, c, h, w)) != IGNORE
            counts[r // CELL:(r + h) // CELL, c // CELL:(c + w) // CELL] = (
                lab.reshape(h // CELL, CELL, w // CELL, CELL).sum(axis=(1, 3)))
    return counts


def block_counts(cells: np.ndarray, block: int) -> np.ndarray:
    """Labelled pixels per ``block``-px block (a multiple of :data:`CELL`) from
    :func:`labelled_cells`."""
    k = block // CELL
    rows, cols = -(-cells.shape[0] // k), -(-cells.shape[1] // k)
    padded = np.zeros((rows * k, cols * k), dtype=np.int64)
    padded[:cells.shape[0], :cells.shape[1]] = cells
    return padded.reshape(rows, k, cols, k).sum(axis=(1, 3))


def _labelled_blocks(cells: Sequence[np.ndarray], block: int, least: float) -> int:
    need = max(1, int(least * block * block))
    return sum(int((block_counts(c, block) >= need).sum()) for c in cells)


def choose_val_block(cells: Sequence[np.ndarray], largest: int, fraction: float,
                     least: float) -> tuple[int, int]:
    """``(block side px, labelled blocks)`` for the validation split.

    Starts from ``largest`` (rounded down to a multiple of :data:`CELL`) and halves it, down
    to :data:`MIN_VAL_BLOCK`, until the labelled area spans enough blocks that holding out
    ``fraction`` of them keeps at least one block on each side: ``max(2, ceil(1/fraction))``.
    A block counts as labelled when at least ``least`` of its area is labelled.
    """
    block = max(CELL, largest // CELL * CELL)
    wanted = max(2, int(np.ceil(1 / fraction))) if fraction > 0 else 0
    count = _labelled_blocks(cells, block, least)
    while count < wanted and block > MIN_VAL_BLOCK:
        block = max(MIN_VAL_BLOCK, block // 2 // CELL * CELL)
        count = _labelled_blocks(cells, block, least)
    return block, count


def validation_windows(held: Sequence[tuple[int, int]], block: int, chip: int,
                       stride: int) -> list[Window]:
    """Chips tiling the held-out ``block``-px blocks: the block itself when ``block <= chip``,
    else ``chip``-px windows every ``stride`` px, flush with the block's far edges."""
    if block <= chip:
        return [Window(i * block, j * block, block, block) for i, j in held]
    return [Window(i * block + w.row, j * block + w.col, chip, chip) for i, j in held
            for w in chip_windows(block, block, chip, stride)]


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


@dataclass
class _Area:
    scene: int
    window: Window
    raw: np.ndarray  # (C, h, w)
    valid: np.ndarray  # (h, w)
    labels: np.ndarray  # (h, w), IGNORE in held-out blocks and where not valid
    labelled: int


class TrainAreas:
    """The labelled parts of the training scenes, held in memory, from which training chips
    are drawn at random positions (:meth:`draw`).

    Held-out validation blocks are blanked: not valid (the model sees 0, the band mean, as at
    nodata) and unlabelled.
    """

    def __init__(self, areas: Sequence[_Area]) -> None:
        self.areas = [a for a in areas if a.labelled > 0]
        weights = np.array([a.labelled for a in self.areas], dtype=np.float64)
        self._p = weights / weights.sum() if len(weights) else weights

    @property
    def labelled(self) -> int:
        """Labelled training pixels."""
        return sum(a.labelled for a in self.areas)

    @property
    def pixels(self) -> int:
        """Pixels held (area sizes)."""
        return sum(a.window.area for a in self.areas)

    def class_counts(self, n_classes: int) -> np.ndarray:
        """Labelled training pixels per class, ``(n_classes,)`` int64."""
        out = np.zeros(n_classes, dtype=np.int64)
        for a in self.areas:
            lab = a.labels[a.labels != IGNORE]
            out += np.bincount(lab.ravel(), minlength=n_classes)[:n_classes]
        return out

    def draw(self, rng: np.random.Generator, n: int, size: int, min_labelled: float,
             tries: int = 10) -> ChipSet:
        """``n`` chips of ``size`` px at random positions: an area drawn in proportion to its
        labelled pixels, then a uniform position in it (areas smaller than a chip are padded
        as nodata); a chip with fewer than ``min_labelled`` labelled pixels is drawn again, up
        to ``tries`` times, keeping the best."""
        need = max(1, int(np.ceil(min_labelled * size * size)))
        raws, valids, labs, origin = [], [], [], []
        for _ in range(n):
            best: tuple[int, int, int, int] | None = None
            for _ in range(tries):
                k = int(rng.choice(len(self.areas), p=self._p))
                a = self.areas[k]
                h, w = a.labels.shape
                r = int(rng.integers(min(0, h - size), max(0, h - size) + 1))
                c = int(rng.integers(min(0, w - size), max(0, w - size) + 1))
                count = int((_crop(a.labels, r, c, size, IGNORE) != IGNORE).sum())
                if best is None or count > best[3]:
                    best = (k, r, c, count)
                if count >= need:
                    break
            assert best is not None
            k, r, c, _ = best
            a = self.areas[k]
            raws.append(_crop(a.raw, r, c, size, 0))
            valids.append(_crop(a.valid, r, c, size, False))
            labs.append(_crop(a.labels, r, c, size, IGNORE))
            origin.append((a.scene, Window(a.window.row + r, a.window.col + c, size, size)))
        return ChipSet(np.stack(raws), np.stack(valids), np.stack(labs), origin)


def _crop(array: np.ndarray, row: int, col: int, size: int, fill: object) -> np.ndarray:
    """``array[..., row:row+size, col:col+size]``, padded with ``fill`` past its edges."""
    h, w = array.shape[-2:]
    if row >= 0 and col >= 0 and row + size <= h and col + size <= w:
        return array[..., row:row + size, col:col + size].copy()
    out = np.full((*array.shape[:-2], size, size), fill, dtype=array.dtype)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + size, h), min(col + size, w)
    if r1 > r0 and c1 > c0:
        out[..., r0 - row:r1 - row, c0 - col:c1 - col] = array[..., r0:r1, c0:c1]
    return out


def read_train_areas(
    scene_index: int,
    bands: Sequence[BandRef],
    height: int,
    width: int,
    labels: LabelSource,
    cells: np.ndarray,
    block: int,
    held: Sequence[tuple[int, int]],
    margin: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[_Area]:
    """Read the labelled parts of one scene, :data:`AREA` px at a time: in each area window
    holding training labels, the bounding box of its labelled cells widened by ``margin`` px
    (context for chips at the edge of the labels), with the ``held`` blocks blanked."""
    held_set = set(held)
    train_cells = cells.copy()
    k = block // CELL
    for i, j in held_set:
        train_cells[i * k:(i + 1) * k, j * k:(j + 1) * k] = 0
    step = AREA // CELL
    out: list[_Area] = []
    grid = [(r, c) for r in range(0, cells.shape[0], step) for c in range(0, cells.shape[1], step)]
    for n, (r, c) in enumerate(grid, start=1):
        part = train_cells[r:r + step, c:c + step]
        rows, cols = np.nonzero(part)
        if rows.size:
            top = max((r + int(rows.min())) * CELL - margin, 0)
            left = max((c + int(cols.min())) * CELL - margin, 0)
            bottom = min((r + int(rows.max()) + 1) * CELL + margin, height)
            right = min((c + int(cols.max()) + 1) * CELL + margin, width)
            window = Window(top, left, bottom - top, right - left)
            raw, valid = read_window(bands, window, height, width)
            lab = labels.read(window)
            for i, j in touched_blocks(window, block) & held_set:
                valid[max(i * block - top, 0):max((i + 1) * block - top, 0),
                      max(j * block - left, 0):max((j + 1) * block - left, 0)] = False
            lab[~valid] = IGNORE
            out.append(_Area(scene_index, window, raw, valid, lab, int((lab != IGNORE).sum())))
        if progress is not None:
            progress(n, len(grid))
    return out
