"""Pure window math: grids, halos, edge blocks, odd sizes. No I/O."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.tiling import SceneGrid, TileLattice, Window, ceil_to, cosine_ramp

SIZES = [(777, 1001), (1, 1), (31, 33), (384, 384), (385, 1153)]
LATTICES = [TileLattice(256, 64, 32), TileLattice(208, 72, 8), TileLattice(64, 0, 32)]


def coverage(grid: SceneGrid, which: str) -> np.ndarray:
    counts = np.zeros((grid.height, grid.width), dtype=np.int32)
    for block in grid.blocks():
        if which == "block":
            counts[block.core.slices()] += 1
        else:
            for tile in block.tiles:
                counts[tile.core.slices()] += 1
    return counts


def test_window_ops() -> None:
    a, b = Window(0, 0, 10, 10), Window(5, 8, 10, 10)
    assert a.intersection(b) == Window(5, 8, 5, 2)
    assert a.intersection(Window(10, 0, 3, 3)) is None
    assert a.union(b) == Window(0, 0, 15, 18)
    assert b.relative_to(a) == Window(5, 8, 10, 10)
    assert Window(2, 3, 4, 5).slices() == (slice(2, 6), slice(3, 8))
    with pytest.raises(ValueError):
        Window(0, 0, -1, 2)
    assert ceil_to(0, 32) == 0 and ceil_to(1, 32) == 32 and ceil_to(64, 32) == 64


def test_lattice_validation() -> None:
    assert TileLattice(512, 64).stride == 384
    with pytest.raises(ValueError, match="multiple"):
        TileLattice(500, 64)
    with pytest.raises(ValueError, match="multiple"):
        TileLattice(512, 50)
    with pytest.raises(ValueError, match="no core"):
        TileLattice(128, 64)
    fitted = TileLattice.fit(500, 50, 32)
    assert (fitted.tile_size, fitted.halo) == (512, 64)


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("lattice", LATTICES)
@pytest.mark.parametrize("block_size", [1, 500, 5000])
def test_blocks_and_tile_cores_partition_the_scene(height, width, lattice, block_size) -> None:
    grid = SceneGrid.fit(height, width, lattice, block_size)
    assert grid.block_size % lattice.stride == 0
    assert sum(grid.chunks[0]) == height and sum(grid.chunks[1]) == width
    # every pixel in exactly one block and exactly one tile core: none lost, none doubled
    assert (coverage(grid, "block") == 1).all()
    assert (coverage(grid, "tile") == 1).all()


@pytest.mark.parametrize("lattice", LATTICES)
def test_tile_windows_are_aligned_trimmed_and_cover_core_plus_halo(lattice) -> None:
    height, width = 777, 1001
    grid = SceneGrid.fit(height, width, lattice, 700)
    a, h = lattice.align, lattice.halo
    for block in grid.blocks():
        read = block.tiles[0].window
        for tile in block.tiles:
            w, c = tile.window, tile.core
            read = read.union(w)
            assert w.row % a == 0 and w.col % a == 0 and w.height % a == 0 and w.width % a == 0
            assert w.height <= lattice.tile_size and w.width <= lattice.tile_size
            assert w.row >= 0 and w.col >= 0  # trimmed at the near edges
            assert w.row_stop <= ceil_to(height, a) and w.col_stop <= ceil_to(width, a)
            # the window holds the core plus the halo wherever the scene has pixels
            assert w.row <= max(c.row - h, 0) and w.col <= max(c.col - h, 0)
            assert w.row_stop >= min(c.row_stop + h, height)
            assert w.col_stop >= min(c.col_stop + h, width)
            assert tile.nominal.height == lattice.tile_size
        assert read == block.read


def test_tile_positions_do_not_depend_on_block_size() -> None:
    lattice = TileLattice(256, 64, 32)
    tiles = []
    for block_size in (1, 384, 1000, 5000):
        grid = SceneGrid.fit(777, 1001, lattice, block_size)
        tiles.append(sorted((t.window, t.core) for b in grid.blocks() for t in b.tiles))
    assert all(t == tiles[0] for t in tiles)


def test_blend_blocks_gather_every_overlapping_tile() -> None:
    lattice = TileLattice(256, 64, 32)
    grid = SceneGrid.fit(777, 1001, lattice, 384, blend=True)
    all_tiles = {t.nominal for t in SceneGrid.fit(777, 1001, lattice, 5000).block(0, 0).tiles}
    for block in grid.blocks():
        expected = {n for n in all_tiles if n.intersection(block.core) is not None}
        assert {t.nominal for t in block.tiles} == expected


def test_cosine_ramp() -> None:
    ramp = cosine_ramp(256, 64)
    assert len(ramp) == 256 and ramp[64:192] == [1.0] * 128
    assert 0 < ramp[0] < 0.01 and ramp[0] == ramp[-1]
    assert all(x < y for x, y in zip(ramp[:63], ramp[1:64], strict=True))


def test_grid_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        SceneGrid(0, 10, TileLattice(256, 64), 384)
    with pytest.raises(ValueError, match="multiple of the tile stride"):
        SceneGrid(10, 10, TileLattice(256, 64), 100)
    with pytest.raises(IndexError):
        SceneGrid.fit(10, 10, TileLattice(256, 64), 100).block(1, 0)
