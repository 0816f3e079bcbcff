"""Ring tracing: the polygons of every region of a label raster, noded, in numpy.

GDAL's polygonizer (``rasterio.features.shapes``) keeps only the vertices where a ring turns, so
where a third region meets an edge shared by two others (a T-junction) one of the rings runs
straight through without a vertex, and a layer of such polygons is not a valid coverage
(``shapely.coverage_is_valid`` rejects the edge). :func:`trace` builds the rings from *runs*:
maximal stretches of a pixel boundary line along which the labels on both sides stay the same.
Each run is one ring edge, so a ring has a vertex wherever it turns and wherever the region on
its other side changes: every pixel corner where three or more regions (nodata and the outside
counting as one) meet is a vertex of every ring that touches it, by construction.

Rings have their region on the left (a positive signed area for shells in pixel coordinates,
x right and y down; negative for holes). At a vertex where a region touches itself diagonally the
ring turns towards the outside, so a hole touching its shell stays a ring of its own: the rings
of a 4-connected region are one shell and its holes, a valid Polygon. An 8-connected region is
traced as its 4-connected parts, which become the polygons of one MultiPolygon (they touch only
at vertices), as GEOS ``make_valid`` would split it.

Vertices are pixel corners: ``(x, y)`` = (column, row) of the block plus ``offset``.
"""

from __future__ import annotations

import numpy as np

from geoseg.vectorize.rings import assemble, cycles

__all__ = ["trace"]

#: neighbours of a vertex, as (row, column) steps of the padded label raster from the pixel
#: above-left of it: above-left, above-right, below-right, below-left
_QUADRANTS = np.array([(0, 0), (0, 1), (1, 1), (1, 0)])


def trace(labels: np.ndarray, n: int, offset: tuple[int, int] = (0, 0), connectivity: int = 4
          ) -> np.ndarray:
    """Polygons of the regions of a label raster.

    Args:
        labels: int ``(H, W)``, region ids ``1..n``, 0 = no polygon (nodata). Each region is
            connected with ``connectivity`` (4 or 8).
        n: number of regions.
        offset: ``(x, y)`` added to every vertex, pixels (the block's column and row).
        connectivity: 8 splits regions into their 4-connected parts (a MultiPolygon).

    Returns:
        object ``(n + 1,)``: a Polygon (MultiPolygon for an 8-connected region of several
        parts) per region id, None at 0; integer pixel-corner vertices, with a vertex at every
        corner where a ring turns or where the set of regions touching it changes.
    """
    labels = np.asarray(labels)
    if n == 0:
        return np.empty(1, dtype=object)
    parent = None
    if connectivity == 8:
        labels, parent = _four_connected(labels, n)
    h, w = labels.shape
    pad = np.pad(labels.astype(np.int32, copy=False), 1)
    # runs along rows (horizontal edges, line y) and along columns (vertical edges, line x)
    hy, hs, he, above, below = _runs(pad[:-1, 1:-1], pad[1:, 1:-1], along=1)
    vx, vs, ve, left, right = _runs(pad[1:-1, :-1], pad[1:-1, 1:], along=0)
    # directed edges, region on the left: 0 = +x, 1 = +y, 2 = -x, 3 = -y, each direction in
    # increasing order of its start key (line, position along it)
    parts = [(below > 0, hs, hy, he, hy, below), (left > 0, vx, vs, vx, ve, left),
             (above > 0, he, hy, hs, hy, above), (right > 0, vx, ve, vx, vs, right)]
    ax, ay, bx, by, g, d = (np.concatenate(c) for c in zip(*(
        (x0[m], y0[m], x1[m], y1[m], lab[m], np.full(int(m.sum()), k, np.int8))
        for k, (m, x0, y0, x1, y1, lab) in enumerate(parts)), strict=True))
    del hy, hs, he, above, below, vx, vs, ve, left, right, parts
    span = (h + 1) * (w + 1)
    start = _key(d, ax, ay, h, w, span)
    # the edge after each edge: leaving its end where the pixels around that vertex lead
    flat = pad.ravel()
    at = by.astype(np.int64) * (w + 2) + bx
    steps = _QUADRANTS[:, 0] * (w + 2) + _QUADRANTS[:, 1]
    ahead_in = flat[at + steps[(d + 2) % 4]] == g  # pixel ahead on the region's side
    ahead_out = flat[at + steps[(d + 1) % 4]] == g  # pixel ahead on the other side
    # straight on, or turn: outwards where the region goes on ahead on the other side (also
    # where it touches itself diagonally), else inwards
    nd = np.where(ahead_in & ~ahead_out, d, np.where(ahead_out, (d + 3) % 4, (d + 1) % 4))
    want = _key(nd, bx, by, h, w, span)
    succ = np.searchsorted(start, want)
    del at, ahead_in, ahead_out, nd, bx, by
    if len(succ) and (succ.max() >= len(start) or (start[succ] != want).any()):
        raise ValueError("ring tracing found no next edge: labels are not connected regions")
    ring, order = cycles(succ)
    pts = np.stack([ax[order], ay[order]], 1).astype(np.int64)
    rgroup = g[order[np.r_[0, np.flatnonzero(np.diff(ring)) + 1]]].astype(np.int64)
    del ax, ay, d, start, want, succ, order
    m = len(parent) - 1 if parent is not None else n
    geoms, shells = assemble(pts, ring, rgroup, m + 1, offset=offset)
    if (shells[1:] != 1).any():
        raise ValueError("ring tracing found a region without exactly one outer ring")
    if parent is None:
        return geoms
    out = geoms[: n + 1].copy()  # a region's first part has the region's id
    several = np.flatnonzero(np.bincount(parent, minlength=n + 1) > 1)
    if len(several):
        import shapely

        sub = np.flatnonzero(np.isin(parent, several))
        sub = sub[np.argsort(parent[sub], kind="stable")]
        out[several] = shapely.multipolygons(geoms[sub], indices=np.searchsorted(
            several, parent[sub]), out_size=len(several))
    return out


def _four_connected(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels of 4-connected parts int32 (H, W), region of each part (m + 1,))`` of
    8-connected regions: regions that touch themselves at a pixel corner only are split, the
    first part keeping the region's id, the others numbered from ``n + 1``."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    tl, tr, bl, br = labels[:-1, :-1], labels[:-1, 1:], labels[1:, :-1], labels[1:, 1:]
    corner = np.r_[tl[(tl == br) & (tl != tr) & (tl != bl)],
                   tr[(tr == bl) & (tr != tl) & (tr != br)]]
    corner = np.unique(corner[corner > 0])
    if not len(corner):
        return labels, np.arange(n + 1)
    # 4-connected parts of those regions: row segments linked to the segments below them
    pick = np.zeros(n + 1, bool)
    pick[corner] = True
    lab = np.where(pick[labels], labels, 0)
    first = np.ones(lab.shape, bool)
    np.not_equal(lab[:, 1:], lab[:, :-1], out=first[:, 1:])
    first &= lab > 0
    seg = (np.cumsum(first, dtype=np.int32) - 1).reshape(lab.shape)
    n_seg = int(seg[-1, -1]) + 1
    down = (lab[:-1] == lab[1:]) & (lab[:-1] > 0) & (first[:-1] | first[1:])
    link = csr_matrix((np.ones(int(down.sum()), np.int8), (seg[:-1][down], seg[1:][down])),
                      shape=(n_seg, n_seg))
    n_part, part = connected_components(link, directed=False)
    region = np.zeros(n_part, np.int64)
    region[part] = lab[first]
    order = np.argsort(region, kind="stable")
    again = np.r_[False, region[order][1:] == region[order][:-1]]  # not a region's first part
    new_id = region.copy()
    new_id[order[again]] = n + 1 + np.arange(int(again.sum()))
    out = labels.astype(np.int32, copy=True)
    inside = lab > 0
    out[inside] = new_id[part[seg[inside]]]
    return out, np.r_[np.arange(n + 1), region[order[again]]]


def _runs(before: np.ndarray, after: np.ndarray, along: int) -> tuple[np.ndarray, ...]:
    """Runs of pixel boundary between the pixels ``before`` and ``after`` each line (int
    arrays of one shape; lines are rows with ``along=1``, columns with ``along=0``):
    ``(line, start, stop, before label, after label)``, one row per maximal stretch of a line
    along which both labels stay the same and differ, ordered by line then start."""
    brk: np.ndarray = np.empty(before.shape, bool)  # a stretch of a line starts here
    head, tail = (np.s_[:, :1], np.s_[:, 1:]) if along == 1 else (np.s_[:1], np.s_[1:])
    prev = np.s_[:, :-1] if along == 1 else np.s_[:-1]
    brk[head] = True
    np.not_equal(before[tail], before[prev], out=brk[tail])
    brk[tail] |= after[tail] != after[prev]
    if along == 0:
        brk = np.ascontiguousarray(brk.T)
    size, total = brk.shape[1], brk.size
    pos = np.flatnonzero(brk)
    del brk
    line = pos // size
    stop = np.minimum(np.r_[pos[1:], total], (line + 1) * size)  # the next start, or line end
    s = pos - line * size
    b, a = (before[line, s], after[line, s]) if along == 1 else (before[s, line], after[s, line])
    keep = b != a
    line, s = line[keep], s[keep]
    return line, s, stop[keep] - line * size, b[keep], a[keep]


def _key(d: np.ndarray, x: np.ndarray, y: np.ndarray, h: int, w: int, span: int) -> np.ndarray:
    """Sort key of an edge leaving vertex ``(x, y)`` in direction ``d``: direction, then line,
    then position along the line (the order in which :func:`_runs` lists them)."""
    d64, x64, y64 = d.astype(np.int64), x.astype(np.int64), y.astype(np.int64)
    along_x = d64 % 2 == 0
    return d64 * span + np.where(along_x, y64 * (w + 1) + x64, x64 * (h + 1) + y64)
