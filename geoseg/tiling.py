"""Pure window math: the tile lattice, the block grid and halo windows. No I/O, no numpy.

All coordinates are integer pixel offsets in the scene's own grid: ``row`` down, ``col`` right,
origin at the scene's upper-left pixel. Windows may extend beyond the scene (negative offsets or
past the last row/column); readers fill such pixels with nodata.

Why a *global* tile lattice
---------------------------
A convolutional network's output at a pixel depends on (a) the input inside its receptive field,
(b) where the tile border is (zero padding inside the network) and (c) the phase of the pixel
relative to the network's down-sampling (stride ``align``, e.g. 32 for a ResNet encoder).
geoseg therefore places tiles on one lattice anchored at the scene origin: tile ``k`` along an
axis has its *core* ``[k*stride, (k+1)*stride)`` and its input window ``core ± halo``, with
``stride = tile_size - 2*halo`` and every offset a multiple of ``align``. Each output pixel is
always predicted from the same input window, whatever the block size, and windows are only
trimmed at the scene edges, where every tiling trims them the same way. This is what makes the
mask independent of how the scene is cut into blocks (exactly) and of the tile size (once the
halo covers the receptive field the model really uses).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "Block",
    "SceneGrid",
    "Tile",
    "TileLattice",
    "Window",
    "ceil_to",
    "cosine_ramp",
]


def ceil_to(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= value`` (both in pixels, ``multiple > 0``)."""
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    return -(-value // multiple) * multiple


@dataclass(frozen=True, order=True)
class Window:
    """A rectangle of pixels: offsets and sizes in pixels; sizes are never negative."""

    row: int
    col: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise ValueError(f"window sizes must be >= 0, got {self.height}x{self.width}")

    @property
    def row_stop(self) -> int:
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        return self.col + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    @property
    def area(self) -> int:
        return self.height * self.width

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or ``None`` when they share no pixel."""
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)

    def union(self, other: Window) -> Window:
        """The smallest window holding both."""
        r0, c0 = min(self.row, other.row), min(self.col, other.col)
        r1, c1 = max(self.row_stop, other.row_stop), max(self.col_stop, other.col_stop)
        return Window(r0, c0, r1 - r0, c1 - c0)

    def relative_to(self, outer: Window) -> Window:
        """This window with offsets counted from ``outer``'s upper-left pixel."""
        return Window(self.row - outer.row, self.col - outer.col, self.height, self.width)

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing an array laid out like this window's frame."""
        return (slice(self.row, self.row_stop), slice(self.col, self.col_stop))


@dataclass(frozen=True)
class TileLattice:
    """The global lattice of model input tiles (see the module docstring).

    Attributes:
        tile_size: side of a full model input tile, pixels; a multiple of ``align``.
        halo: context pixels on each side of a tile's core, dropped after prediction; a
            multiple of ``align`` (so every tile starts on the network's stride phase).
        align: the network's size divisor (its total down-sampling, e.g. 32 or 16).
    """

    tile_size: int
    halo: int
    align: int = 32

    def __post_init__(self) -> None:
        if self.align <= 0:
            raise ValueError(f"align must be positive, got {self.align}")
        if self.tile_size <= 0 or self.tile_size % self.align:
            raise ValueError(
                f"tile_size {self.tile_size} must be a positive multiple of {self.align} "
                "(the model's down-sampling factor)"
            )
        if self.halo < 0 or self.halo % self.align:
            raise ValueError(f"halo {self.halo} must be a non-negative multiple of {self.align}")
        if self.stride <= 0:
            raise ValueError(
                f"tile_size {self.tile_size} leaves no core after a halo of {self.halo} on both "
                f"sides; use tile_size > {2 * self.halo}"
            )

    @property
    def stride(self) -> int:
        """Side of a tile's core: the step between neighbouring tiles, pixels."""
        return self.tile_size - 2 * self.halo

    @classmethod
    def fit(cls, tile_size: int, halo: int, align: int) -> TileLattice:
        """A lattice with ``tile_size`` and ``halo`` rounded up to multiples of ``align``."""
        return cls(ceil_to(max(tile_size, 1), align), ceil_to(max(halo, 0), align), align)


@dataclass(frozen=True)
class Tile:
    """One model input.

    Attributes:
        window: the input window in scene pixels (trimmed at the scene edges to a multiple of
            the lattice's ``align``; it may reach past the last row/column by less than ``align``).
        core: the pixels whose predictions this tile provides, clipped to the scene.
        nominal: the untrimmed lattice window ``core ± halo``; blending weights are defined on it.
    """

    window: Window
    core: Window
    nominal: Window


@dataclass(frozen=True)
class Block:
    """One Dask task's share of the scene.

    Attributes:
        index: ``(i, j)`` position in the block grid.
        core: the output pixels this block writes, clipped to the scene.
        read: the input window it needs: the union of its tiles' windows (core plus halo).
        tiles: the tiles it runs through the model, row-major.
    """

    index: tuple[int, int]
    core: Window
    read: Window
    tiles: tuple[Tile, ...]


def _axis_tiles(start: int, stop: int, extent: int, lattice: TileLattice, blend: bool) -> list[int]:
    """Lattice indices along one axis that a block core ``[start, stop)`` needs.

    In trim mode these are the tiles whose core meets the block core; in blend mode every tile
    whose (nominal) window meets it, because all of them contribute weighted probabilities.
    """
    s, h = lattice.stride, lattice.halo
    n_tiles = -(-extent // s)
    if blend:
        # tile k's window is [k*s - h, (k+1)*s + h): it meets [start, stop) when
        # k*s - h < stop and (k+1)*s + h > start.
        first = max(0, (start - h) // s)
        last = min(n_tiles - 1, (stop + h - 1) // s)
        ks = [k for k in range(first, last + 1) if k * s - h < stop and (k + 1) * s + h > start]
    else:
        ks = list(range(start // s, min(n_tiles, -(-stop // s))))
    return ks


def _axis_window(k: int, extent: int, lattice: TileLattice) -> tuple[int, int, int, int, int, int]:
    """``(win_start, win_stop, core_start, core_stop, nom_start, nom_stop)`` of tile ``k``."""
    s, h, a = lattice.stride, lattice.halo, lattice.align
    nom_start, nom_stop = k * s - h, k * s - h + lattice.tile_size
    win_start = max(nom_start, 0)
    win_stop = min(nom_stop, ceil_to(extent, a))
    core_start, core_stop = k * s, min((k + 1) * s, extent)
    return win_start, win_stop, core_start, core_stop, nom_start, nom_stop


@dataclass(frozen=True)
class SceneGrid:
    """The block grid of one scene over a tile lattice.

    Attributes:
        height, width: scene size, pixels.
        lattice: the tile lattice.
        block_size: side of a block's core, pixels; a multiple of ``lattice.stride`` so that
            no tile is computed by two blocks (see :meth:`fit`).
        blend: whether blocks gather every tile overlapping them (weighted blending) rather than
            the tiles whose cores they own (halo trimming).
    """

    height: int
    width: int
    lattice: TileLattice
    block_size: int
    blend: bool = False

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"scene size must be positive, got {self.height}x{self.width}")
        if self.block_size <= 0 or self.block_size % self.lattice.stride:
            raise ValueError(
                f"block_size {self.block_size} must be a positive multiple of the tile stride "
                f"{self.lattice.stride}"
            )

    @classmethod
    def fit(
        cls, height: int, width: int, lattice: TileLattice, block_size: int, blend: bool = False
    ) -> SceneGrid:
        """A grid whose block size is ``block_size`` rounded up to a multiple of the stride."""
        return cls(height, width, lattice, ceil_to(max(block_size, 1), lattice.stride), blend)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of blocks ``(rows, cols)``."""
        return (-(-self.height // self.block_size), -(-self.width // self.block_size))

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Dask-style chunk sizes of the block cores along rows and columns."""

        def axis(extent: int) -> tuple[int, ...]:
            b = self.block_size
            return tuple(min(b, extent - start) for start in range(0, extent, b))

        return (axis(self.height), axis(self.width))

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def block(self, i: int, j: int) -> Block:
        """Block ``(i, j)`` with its core, read window and tiles."""
        rows, cols = self.shape
        if not (0 <= i < rows and 0 <= j < cols):
            raise IndexError(f"block ({i}, {j}) outside a {rows}x{cols} grid")
        b = self.block_size
        core = Window(i * b, j * b, min(b, self.height - i * b), min(b, self.width - j * b))
        row_ks = _axis_tiles(core.row, core.row_stop, self.height, self.lattice, self.blend)
        col_ks = _axis_tiles(core.col, core.col_stop, self.width, self.lattice, self.blend)
        tiles = []
        for kr in row_ks:
            r = _axis_window(kr, self.height, self.lattice)
            for kc in col_ks:
                c = _axis_window(kc, self.width, self.lattice)
                tiles.append(
                    Tile(
                        window=Window(r[0], c[0], r[1] - r[0], c[1] - c[0]),
                        core=Window(r[2], c[2], r[3] - r[2], c[3] - c[2]),
                        nominal=Window(r[4], c[4], r[5] - r[4], c[5] - c[4]),
                    )
                )
        read = tiles[0].window
        for tile in tiles[1:]:
            read = read.union(tile.window)
        return Block(index=(i, j), core=core, read=read, tiles=tuple(tiles))

    def blocks(self) -> Iterator[Block]:
        """Every block, row-major."""
        rows, cols = self.shape
        for i in range(rows):
            for j in range(cols):
                yield self.block(i, j)


def cosine_ramp(length: int, halo: int) -> list[float]:
    """Blending weights along one axis of a nominal tile of ``length`` pixels.

    1 over the core, rising as ``sin²`` across each halo, never 0 (so every covered pixel keeps
    some weight). Returns ``length`` floats.
    """
    weights = [1.0] * length
    for u in range(min(halo, length)):
        w = math.sin(0.5 * math.pi * (u + 0.5) / halo) ** 2
        weights[u] = w
        weights[length - 1 - u] = w
    return weights
