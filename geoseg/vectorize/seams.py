"""Client side of vectorizing: regions joined across block seams (union-find), exact sieve.

Block results carry their regions' labels along the four block edges. Concatenated along every
inner seam (full scene width/height, so 8-connected diagonals across block corners are seen),
they give the pairs of regions that touch across a border; connected components of that graph
are the scene's regions, independent of the block size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from geoseg.vectorize.blocks import BlockTask, run_blocks, sieve_stats_task

__all__ = ["Seams", "components", "sieve_plan"]

log = logging.getLogger(__name__)


class Seams:
    """Global region ids and the seam rows/columns between blocks (union-find input)."""

    def __init__(self, n_blocks: int, ncols: int):
        self.ncols = ncols
        self.edges: list[tuple[np.ndarray, ...] | None] = [None] * n_blocks
        self.base = np.zeros(n_blocks, np.int64)
        self.total = 0  # global ids 1..total

    def add(self, index: int, n: int, edges: tuple[np.ndarray, ...]) -> int:
        base = self.total
        self.base[index], self.total = base, base + n
        self.edges[index] = tuple(np.where(e > 0, e.astype(np.int64) + base, 0) for e in edges)
        return base

    def pairs(self, connectivity: int) -> np.ndarray:
        """``(k, 2)`` global ids of pixels adjacent across inner block borders."""
        nrows = len(self.edges) // self.ncols
        e = self.edges
        lines = [
            (np.concatenate([e[(i - 1) * self.ncols + j][1] for j in range(self.ncols)]),
             np.concatenate([e[i * self.ncols + j][0] for j in range(self.ncols)]))
            for i in range(1, nrows)
        ] + [
            (np.concatenate([e[i * self.ncols + j - 1][3] for i in range(nrows)]),
             np.concatenate([e[i * self.ncols + j][2] for i in range(nrows)]))
            for j in range(1, self.ncols)
        ]
        out = []
        for a, b in lines:
            out.append(np.stack([a, b], 1))
            if connectivity == 8:
                out += [np.stack([a[:-1], b[1:]], 1), np.stack([a[1:], b[:-1]], 1)]
        p = np.concatenate(out) if out else np.empty((0, 2), np.int64)
        return p[(p[:, 0] > 0) & (p[:, 1] > 0)]


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected component of every id ``0..n`` given undirected ``pairs`` (union-find)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n + 1,) * 2)
    return connected_components(g, directed=False)[1]


def sieve_plan(tasks: list[BlockTask], ncols: int, threshold: float, connectivity: int,
                client: Any, progress: Callable[[], None], policy: Any = None) -> list[BlockTask]:
    """First pass of the exact global sieve: the tasks again, each with its class remap."""
    seams = Seams(len(tasks), ncols)
    parts: dict[int, dict[str, Any]] = {}
    tasks = [replace(t, sieve_pixels=threshold) for t in tasks]
    for r in run_blocks(sieve_stats_task, tasks, client, policy):
        parts[r["index"]] = r
        progress()
    order = range(len(tasks))
    for i in order:  # global ids in block order, whatever order the results came in
        seams.add(i, len(parts[i]["cls"]) - 1, parts[i]["edges"])
    cls = np.concatenate([[0]] + [parts[i]["cls"][1:] for i in order])
    size = np.concatenate([[0]] + [parts[i]["counts"][1:] for i in order]).astype(np.float64)
    key = np.concatenate([[-1]] + [parts[i]["keys"][1:] for i in order])
    owner = np.concatenate([[-1]] + [np.full(len(parts[i]["cls"]) - 1, i) for i in order])
    seam = seams.pairs(connectivity)
    same = cls[seam[:, 0]] == cls[seam[:, 1]]
    comp = components(seams.total, seam[same])
    nc = comp.max() + 1
    csize = np.bincount(comp, weights=size, minlength=nc)
    ckey = np.full(nc, np.iinfo(np.int64).max)
    np.minimum.at(ckey, comp, key)
    ccls = np.zeros(nc, np.uint8)
    ccls[comp] = cls
    inner = [parts[i]["pairs"].astype(np.int64) + seams.base[i] for i in order]
    nb = comp[np.concatenate([seam[~same], *inner])]
    nb = nb[nb[:, 0] != nb[:, 1]]
    nb = np.unique(np.concatenate([nb, nb[:, ::-1]]), axis=0)
    small = csize < threshold
    small[comp[0]] = False
    nb = nb[small[nb[:, 0]]]
    ptr = np.arange(nc)
    if len(nb):  # largest neighbour; ties → earliest first pixel (raster order)
        nb = nb[np.lexsort((ckey[nb[:, 1]], -csize[nb[:, 1]], nb[:, 0]))]
        first = np.r_[True, nb[1:, 0] != nb[:-1, 0]]
        ptr[nb[first, 0]] = nb[first, 1]
    for _ in range(64):  # pointer jumping along the chains of small regions
        ptr = ptr[ptr]
    target = np.where(small & ~small[ptr], ccls[ptr], ccls)
    changed = np.flatnonzero(target[comp] != cls)
    changed = changed[changed > 0]
    log.info("sieve: %d of %d regions below %.0f px, %d pieces change class",
             int(small.sum()), nc - 1, threshold, len(changed))
    out = []
    for t in tasks:
        g = changed[owner[changed] == t.index]
        remap = ((g - seams.base[t.index]).astype(np.int64), target[comp[g]].astype(np.uint8))
        out.append(replace(t, remap=remap))
    return out
