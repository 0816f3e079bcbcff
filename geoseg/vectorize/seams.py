"""Client side of vectorizing: regions joined across block seams (union-find), exact sieve, and
the nodes on seams.

Block results carry their regions' labels along the four block edges. Concatenated along every
inner seam (full scene width/height, so 8-connected diagonals across block corners are seen),
they give the pairs of regions that touch across a border; connected components of that graph
are the scene's regions, independent of the block size.

The same edge labels give the *seam nodes* (:func:`straight_nodes`): pixel corners on a seam
where three regions meet and one of them runs straight through, so no block alone knows its
ring needs a vertex there (inside a block the ring tracer makes nodes by construction). The
dissolve keeps them; :func:`unseam` gives a GEOS union the same seam vertices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from geoseg.vectorize.blocks import BlockTask, run_blocks, sieve_stats_task
from geoseg.vectorize.rings import close, kept_vertices, ragged

__all__ = ["Seams", "components", "sieve_plan", "straight_nodes", "unseam"]

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
        e = [edges for edges in self.edges if edges is not None]
        if len(e) != len(self.edges):
            raise ValueError("Seams.pairs needs the seam edges of every block")
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


def straight_nodes(quads: Sequence[tuple[np.ndarray, Any]], x: np.ndarray, y: np.ndarray
                   ) -> np.ndarray:
    """Seam nodes among pixel corners ``(x, y)`` (scene pixels), given the local labels and
    blocks (with ``cls`` and ``base``, see :class:`~geoseg.vectorize.join.BorderJoin`) of the
    four pixels around each, clockwise from above-left: corners where exactly three classes meet
    (nodata counting as one) and two pixels side by side are of one region, whose ring therefore
    runs straight through. ``(k, 3)`` int64: that region's global id, x, y.
    """
    labels = [np.asarray(lab, np.int64) for lab, _ in quads]
    tl, tr, br, bl = (blk.cls[lab].astype(np.int16) for lab, (_, blk) in zip(labels, quads,
                                                                             strict=True))
    distinct = 1 + (tr != tl) + ((br != tl) & (br != tr)) + ((bl != tl) & (bl != tr) & (bl != br))
    side = np.select([tl == tr, tr == br, br == bl, bl == tl], [0, 1, 2, 3], -1)
    ok = (distinct == 3) & (side >= 0)
    side = side[ok]
    lab = np.choose(side, [lab[ok] for lab in labels])
    gid = lab + np.choose(side, [blk.base for _, blk in quads])
    keep = lab > 0  # nodata has no ring
    return np.stack([gid[keep], x[ok][keep], y[ok][keep]], 1).astype(np.int64)


def unseam(geoms: np.ndarray, block_size: int, nodes: np.ndarray | None = None) -> np.ndarray:
    """Pixel (multi)polygons (a GEOS union of pieces) with the vertices on seam lines that
    :func:`~geoseg.vectorize.rings.dissolve` would give them: where a ring turns, and at
    ``nodes`` (added where a ring runs straight through one). Object ``(n,)``, MultiPolygons."""
    import shapely

    parts, idx = shapely.get_parts(np.asarray(geoms, dtype=object), return_index=True)
    xy, (ring_off, poly_off) = ragged(parts)
    n_rings = len(ring_off) - 1
    is_open = np.ones(len(xy), bool)
    is_open[ring_off[1:] - 1] = False  # drop each ring's closing vertex
    pts = xy[is_open].astype(np.int64)
    ring = np.repeat(np.arange(n_rings), np.diff(ring_off) - 1)
    # unit steps along the edges lying on seam lines, so that any node on them is a vertex
    step = np.diff(xy, axis=0)[is_open[:-1]].astype(np.int64)
    on_seam = np.where(step[:, 0] == 0, pts[:, 0], pts[:, 1]) % block_size == 0
    reps = np.where(on_seam, np.abs(step).sum(1), 1)
    k = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    pts = np.repeat(pts, reps, 0) + np.repeat(np.sign(step), reps, 0) * k[:, None]
    ring = np.repeat(ring, reps)
    kcount = np.bincount(ring, minlength=n_rings)
    kstart = np.r_[0, np.cumsum(kcount)[:-1]]
    prev, nxt = np.roll(pts, 1, 0), np.roll(pts, -1, 0)
    prev[kstart] = pts[kstart + kcount - 1]
    nxt[kstart + kcount - 1] = pts[kstart]
    u, v = pts - prev, nxt - pts
    keep = (u[:, 0] * v[:, 1] != u[:, 1] * v[:, 0]) | kept_vertices(pts, block_size, nodes)
    xy_c, roff = close(pts[keep].astype(np.float64), ring[keep], n_rings)
    polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy_c, (roff, poly_off))
    return shapely.multipolygons(polys, indices=idx, out_size=len(geoms))
