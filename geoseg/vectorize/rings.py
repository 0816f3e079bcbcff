"""Pixel-polygon geometry in numpy: rings to polygons, and seam dissolve without overlay.

Every polygon here is in *pixel* coordinates: integer vertices, axis-parallel edges, rings with
the interior on the left (shells of positive signed area). That structure lets expensive GEOS
steps become array arithmetic:

* :func:`assemble` builds the polygons of rings grouped by region in one ``from_ragged_array``
  call (for :func:`geoseg.vectorize.trace.trace` and :func:`dissolve`); :func:`cycles` orders
  linked edges into rings;
* :func:`dissolve` joins the pieces of regions cut by block borders. Pieces of one region only
  share edges on the block seams, so the union is: orient every ring with the interior on the
  left, split the edges lying on seam lines into unit steps, drop the unit edges that two pieces
  share (they appear once in each direction), and relink what is left into rings. Where a
  boundary touches itself at a vertex the relinking turns right, keeping each exterior corner
  whole, so a hole touching the shell stays a ring of its own (valid OGC polygons). Groups that
  do not form one shell with holes, or whose ring passes a vertex twice (both only possible
  with 8-connectivity), are handed back for a GEOS union.

A dissolved ring keeps its pieces' vertices off the seam lines (corners, and nodes: where a
third region meets its edge) and, on seam lines, those where it turns and the seam *nodes* it is
given (:func:`kept_vertices`): a region gets the same vertices whether or not a block border
cut it, and the layer is a valid coverage. :func:`polygons_from_shapes` converts
``rasterio.features.shapes`` output (GDAL's polygons: no nodes) for comparisons.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["assemble", "close", "cycles", "dissolve", "kept_vertices", "pinched",
           "polygons_from_shapes", "ragged"]


def polygons_from_shapes(shapes: Iterable[tuple[dict[str, Any], float]], chunk: int = 20_000
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(values float64 (n,), polygons object (n,))`` from ``rasterio.features.shapes`` output,
    converted ``chunk`` polygons at a time (GeoJSON-like coordinates are ~100 bytes a vertex as
    Python objects, so a salt-and-pepper block is never held whole in that form)."""
    import shapely

    values: list[np.ndarray] = []
    polys: list[np.ndarray] = []
    it = iter(shapes)
    while batch := list(itertools.islice(it, chunk)):
        rings = [ring for geom, _ in batch for ring in geom["coordinates"]]
        per_poly = [len(geom["coordinates"]) for geom, _ in batch]
        lens = np.fromiter(map(len, rings), np.int64, len(rings))
        xy = np.array(list(itertools.chain.from_iterable(rings)), np.float64).reshape(-1, 2)
        offsets = (np.r_[0, np.cumsum(lens)], np.r_[0, np.cumsum(per_poly)])
        polys.append(shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, offsets))
        values.append(np.array([v for _, v in batch], np.float64))
        del batch, rings, xy
    if not values:
        return np.empty(0), np.empty(0, dtype=object)
    return np.concatenate(values), np.concatenate(polys)


def pinched(polygons: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Pixel polygons (bool ``(n,)``) that may be invalid, cheaply: rings of pixel boundaries
    never cross, so only a vertex passed twice can break OGC validity. With 4-connected regions
    the interior is connected and only a ring passing one vertex twice is suspect; with
    8-connectivity also rings touching each other (they can cut the interior in two)."""
    out = np.zeros(len(polygons), bool)
    if len(polygons) == 0:
        return out
    xy, (ring_off, poly_off) = ragged(polygons)
    ring_poly = np.repeat(np.arange(len(poly_off) - 1), np.diff(poly_off))
    owner = np.arange(len(ring_off) - 1) if connectivity == 4 else ring_poly
    ids = np.repeat(owner, np.diff(ring_off))
    keep = np.ones(len(xy), bool)
    keep[ring_off[1:] - 1] = False  # the closing vertex repeats the first by design
    xy = xy[keep].astype(np.int64)
    xy -= xy.min(0)
    span = _span(xy)
    key = np.sort(_keys(ids[keep], xy, span))
    dup_ids = key[1:][key[1:] == key[:-1]] // span**2
    out[ring_poly[dup_ids] if connectivity == 4 else dup_ids] = True
    return out


def ragged(polygons: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    import shapely

    kind, xy, offsets = shapely.to_ragged_array(np.asarray(polygons, dtype=object))
    if kind != shapely.GeometryType.POLYGON:
        raise ValueError(f"expected polygons, got {kind!r}")
    return xy, (np.asarray(offsets[0], np.int64), np.asarray(offsets[1], np.int64))


def close(xy: np.ndarray, ring: np.ndarray, n_rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Append each ring's first vertex after its last; ``xy`` sorted by ``ring``."""
    counts = np.bincount(ring, minlength=n_rings)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pos = np.arange(len(xy)) + ring  # room for one closing vertex per earlier ring
    out = np.empty((len(xy) + n_rings, 2), xy.dtype)
    out[pos] = xy
    close_at = starts + counts + np.arange(n_rings)
    out[close_at] = xy[starts]
    return out, np.r_[0, np.cumsum(counts + 1)]


def dissolve(pieces: np.ndarray, group: np.ndarray, n_groups: int, block_size: int,
             nodes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Union the pixel polygons of each group, which touch only along block seams.

    Args:
        pieces: shapely Polygons/MultiPolygons in pixel coordinates, object ``(n,)``.
        group: group index ``0..n_groups-1`` of each piece, int ``(n,)``.
        n_groups: number of groups.
        block_size: block side, pixels; seams lie on multiples of it.
        nodes: pixel corners ``(k, 2)`` on seam lines that stay vertices where a dissolved
            ring runs straight through them (where a third region meets its edge). Other
            vertices on seam lines are kept only where the ring turns; vertices off seam lines
            are the pieces' own and always kept.

    Returns:
        ``(merged object (n_groups,), fallback bool (n_groups,))``: one polygon per group, or
        None where ``fallback`` is set because the pieces did not dissolve into a single shell
        with holes (the caller unions those with GEOS).
    """
    import shapely

    merged = np.empty(n_groups, dtype=object)
    fallback = np.zeros(n_groups, bool)
    group = np.asarray(group, np.int64)
    if len(pieces) == 0:
        return merged, fallback
    parts, part_idx = shapely.get_parts(np.asarray(pieces, dtype=object), return_index=True)
    xy, (ring_off, poly_off) = ragged(shapely.orient_polygons(parts, exterior_cw=False))
    ring_group = np.repeat(group[part_idx], np.diff(poly_off))
    # rings with no vertex on a seam line (most holes) come through unchanged
    n_vert = np.diff(ring_off)
    vert_ring = np.repeat(np.arange(len(n_vert)), n_vert)
    touches = np.bincount(vert_ring[(xy % block_size == 0).any(1)], minlength=len(n_vert)) > 0
    at_seam = touches[vert_ring]
    through = (xy[~at_seam], n_vert[~touches], ring_group[~touches])
    xy, n_vert, ring_group = xy[at_seam].astype(np.int64), n_vert[touches], ring_group[touches]
    ring_off = np.r_[0, np.cumsum(n_vert)]
    del vert_ring, at_seam
    a, b, g, seam, nat = _edges(xy, ring_off, ring_group, block_size)
    del xy
    keep = ~_shared(a, b, g, seam)
    succ, bad = _successors(a, b, g, nat, keep, block_size)
    a, b, g = a[keep], b[keep], g[keep]
    if bad.any():  # not a clean boundary: leave those groups to GEOS
        fallback[np.unique(g[bad])] = True
        ok = ~fallback[group]
        sub, _ = dissolve(np.asarray(pieces, dtype=object)[ok], group[ok], n_groups, block_size,
                          nodes)
        merged[~fallback] = sub[~fallback]
        return merged, fallback
    ring_of, order = cycles(succ)
    pts, rof, rgroup = _corners(a, b, g, ring_of, order, kept_vertices(a, block_size, nodes))
    del a, b, g, succ, ring_of, order
    span = _span(pts)
    key = np.sort(_keys(rof, pts, span))  # a ring through one vertex twice: 8-connected pinch
    fallback[rgroup[key[1:][key[1:] == key[:-1]] // span**2]] = True
    del key
    pts, rof, rgroup = _with_rings(pts, rof, rgroup, *through)
    out, shells = assemble(pts, rof, rgroup, n_groups, skip=fallback)
    fallback |= (np.bincount(group, minlength=n_groups) > 0) & (shells != 1)
    merged[~fallback] = out[~fallback]
    return merged, fallback


def assemble(pts: np.ndarray, rof: np.ndarray, rgroup: np.ndarray, n_groups: int,
             skip: np.ndarray | None = None, offset: tuple[int, int] = (0, 0)
             ) -> tuple[np.ndarray, np.ndarray]:
    """Polygons from rings grouped by region.

    Args:
        pts: open ring vertices ``(k, 2)``, pixel coordinates, ring after ring, each in order
            (shells with a positive signed area, holes negative: interior on the left).
        rof: ring of each vertex, non-decreasing ``(k,)``. rgroup: group of each ring.
        n_groups: number of groups. skip: bool ``(n_groups,)``, groups to leave out.
        offset: ``(x, y)`` added to every vertex (pixels).

    Returns:
        ``(polygons object (n_groups,), shells int (n_groups,))``: a Polygon (the shell, then
        the holes) for each group with exactly one shell that is not skipped, None elsewhere;
        and each group's number of shells.
    """
    merged = np.empty(n_groups, dtype=object)
    kstart, kcount, area2 = _ring_areas(pts, rof, len(rgroup))
    shells = np.bincount(rgroup, weights=area2 > 0, minlength=n_groups).astype(np.int64)
    ok = shells == 1
    if skip is not None:
        ok &= ~skip
    rorder = np.lexsort((area2 <= 0, rgroup))  # one polygon per group: shell, then holes
    rorder = rorder[ok[rgroup[rorder]]]
    if len(rorder):
        present, per_group = np.unique(rgroup[rorder], return_counts=True)
        merged[present] = _build(pts, kstart[rorder], kcount[rorder], per_group, offset)
    return merged, shells


def _ring_areas(pts: np.ndarray, rof: np.ndarray, n_rings: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first vertex, vertex count, twice the signed area)`` of every ring."""
    kcount = np.bincount(rof, minlength=n_rings)
    kstart = np.r_[0, np.cumsum(kcount)[:-1]]
    nxt = np.empty_like(pts)
    nxt[:-1] = pts[1:]
    nxt[kstart + kcount - 1] = pts[kstart]
    area2 = np.bincount(rof, weights=(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1]).astype(
        np.float64), minlength=n_rings)  # > 0 shell, < 0 hole
    return kstart, kcount, area2


def _build(pts: np.ndarray, kstart: np.ndarray, kcount: np.ndarray, per_poly: np.ndarray,
           offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Polygons of ``per_poly`` rings each from the open rings ``pts[kstart:kstart + kcount]``,
    closed, ``offset`` added."""
    import shapely

    sel = _ranges(kstart, kcount)
    xy = pts[sel].astype(np.float64)
    if offset != (0, 0):
        xy += offset
    xy, roff = close(xy, np.repeat(np.arange(len(kstart)), kcount), len(kstart))
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy,
                                     (roff, np.r_[0, np.cumsum(per_poly)]))


def _with_rings(pts: np.ndarray, rof: np.ndarray, rgroup: np.ndarray, xy: np.ndarray,
                n_vert: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, ...]:
    """Append closed rings (``xy`` ragged by ``n_vert``, one group each) to the open rings
    ``pts`` (ring ``rof`` per vertex, group ``rgroup`` per ring)."""
    if not len(n_vert):
        return pts, rof, rgroup
    last = np.cumsum(n_vert) - 1
    open_ = np.ones(len(xy), bool)
    open_[last] = False
    extra = np.repeat(np.arange(len(n_vert)) + len(rgroup), n_vert - 1)
    return (np.concatenate([pts, xy[open_].astype(pts.dtype)]), np.concatenate([rof, extra]),
            np.concatenate([rgroup, group]))


def _edges(xy: np.ndarray, ring_off: np.ndarray, ring_group: np.ndarray, block_size: int
           ) -> tuple[np.ndarray, ...]:
    """Directed edges of all rings in ring order, those lying on seam lines split into unit
    steps so that edges shared by two pieces match exactly.

    Returns ``(start (m, 2), end (m, 2), group (m,), on_seam bool (m,), next (m,))``, ``next``
    being the index of the following edge of the same ring.
    """
    is_last = np.zeros(len(xy), bool)
    is_last[ring_off[1:] - 1] = True
    s = np.flatnonzero(~is_last)
    a, b = xy[s], xy[s + 1]
    per_ring = np.diff(ring_off) - 1
    d = b - a
    vertical = d[:, 0] == 0
    if (vertical == (d[:, 1] == 0)).any():
        raise ValueError("pixel polygons must have axis-parallel edges and no repeated vertex")
    seam = np.flatnonzero(np.where(vertical, a[:, 0], a[:, 1]) % block_size == 0)
    length = np.abs(d[seam]).sum(1)
    reps = np.ones(len(a), np.int64)
    reps[seam] = length
    pos = np.cumsum(reps) - reps  # where each edge's first piece goes
    total = int(pos[-1] + reps[-1]) if len(a) else 0
    a2 = np.empty((total, 2), np.int64)
    b2 = np.empty((total, 2), np.int64)
    a2[pos], b2[pos] = a, b
    es = np.repeat(seam, length)
    k = np.arange(len(es)) - np.repeat(np.cumsum(length) - length, length)
    at = np.repeat(pos[seam], length) + k
    unit = np.sign(d[es])
    a2[at] = a[es] + unit * k[:, None]
    b2[at] = a2[at] + unit
    on_seam = np.zeros(total, bool)
    on_seam[at] = True
    ring_len = np.add.reduceat(reps, np.r_[0, np.cumsum(per_ring)[:-1]]) if len(per_ring) else reps
    ring_first = np.cumsum(ring_len) - ring_len
    nxt = np.arange(1, total + 1)
    nxt[ring_first + ring_len - 1] = ring_first
    g = np.repeat(np.repeat(ring_group, per_ring), reps)
    return a2, b2, g, on_seam, nxt


def _span(xy: np.ndarray) -> int:
    """Coordinate range for :func:`_keys` covering every vertex in ``xy``."""
    return int(xy.max()) + 2 if len(xy) else 2


def _keys(g: np.ndarray, xy: np.ndarray, span: int, extra: np.ndarray | None = None
          ) -> np.ndarray:
    """One int64 per ``(group, x, y[, extra bit])`` row, for vertices ``0 <= x, y < span``;
    ``key // span**2`` is the group (no extra bit). Keys compare only with the same span."""
    if len(g) and (int(g.max()) + 1) * span * span * 2 >= 2**62:
        raise ValueError("scene too large for 64-bit vertex keys")
    key = (g * span + xy[:, 1]) * span + xy[:, 0]
    return key * 2 + extra if extra is not None else key


def _shared(a: np.ndarray, b: np.ndarray, g: np.ndarray, on_seam: np.ndarray) -> np.ndarray:
    """Unit seam edges that occur twice in a group (once each way: shared by two pieces)."""
    idx = np.flatnonzero(on_seam)
    lo = np.minimum(a[idx], b[idx])
    key = _keys(g[idx], lo, _span(lo), (a[idx, 0] == b[idx, 0]).astype(np.int64))
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    out = np.zeros(len(a), bool)
    out[idx[cnt[inv] > 1]] = True
    return out


def _successors(a: np.ndarray, b: np.ndarray, g: np.ndarray, nxt: np.ndarray, keep: np.ndarray,
                block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The edge that follows each kept edge around its new ring (indices among kept edges), and
    kept edges whose end is not a clean boundary vertex (``bad``).

    An edge is followed by the next edge of its piece's ring, except where rings are relinked:
    on seam lines, and at vertices where two pieces touch. At a vertex with two ways out (two
    interior quadrants diagonal to each other) take the right turn, so each ring keeps its
    exterior corner whole and a hole touching the shell stays a ring of its own (OGC validity;
    4-connected regions always have their two exterior quadrants in different components).
    """
    new = np.cumsum(keep) - 1
    n = int(keep.sum())
    ka, kb, kg = a[keep], b[keep], g[keep]
    succ = new[nxt[keep]]
    span = max(_span(ka), _span(kb))
    ks = _keys(kg, ka, span)
    order = np.argsort(ks, kind="stable")
    sk = ks[order]
    same = sk[1:] == sk[:-1]
    two_out = np.zeros(n, bool)
    two_out[order[np.r_[same, False] | np.r_[False, same]]] = True
    # relink edges ending on a seam line (their next may be gone) or where two ways lead out
    special = np.flatnonzero(((kb % block_size) == 0).any(1) | two_out[succ])
    ke = _keys(kg[special], kb[special], span)
    lo = np.searchsorted(sk, ke, "left")
    n_out = np.searchsorted(sk, ke, "right") - lo
    first = order[np.minimum(lo, n - 1)]
    second = order[np.minimum(lo + 1, n - 1)]
    d, d1 = np.sign(kb[special] - ka[special]), np.sign(kb[first] - ka[first])
    left = d[:, 0] * d1[:, 1] - d[:, 1] * d1[:, 0] > 0
    succ[special] = np.where((n_out == 2) & left, second, first)
    bad = np.zeros(n, bool)
    bad[special[(n_out < 1) | (n_out > 2)]] = True
    hits = np.bincount(succ[~bad], minlength=n)
    return succ, bad | (hits[succ] != 1)


def cycles(succ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cycles of the permutation ``succ``: ``(ring, order)``, ``order`` listing the elements
    cycle after cycle (ordered by their smallest element, which each starts with), each in
    successor order, ``ring`` the cycle number (0..) at each place.

    Works on runs where ``succ[e] == e + 1`` (most of every ring a dissolve relinks): each cycle
    of runs is cut before its smallest run and linked to the next cycle's, and the one path that
    makes is walked with scipy's graph routines (linear time, no pointer jumping).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components, depth_first_order

    n = len(succ)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    last = np.flatnonzero(succ != np.arange(1, n + 1))  # each run's last element
    start = np.r_[0, last[:-1] + 1]
    run_len = last - start + 1
    run_of = np.repeat(np.arange(len(last)), run_len)
    nxt = run_of[succ[last]]
    r = len(last)
    k, comp = connected_components(
        csr_matrix((np.ones(r, np.int8), (np.arange(r), nxt)), shape=(r, r)),
        directed=True, connection="weak")
    first = np.full(k, r)
    np.minimum.at(first, comp, np.arange(r))
    first.sort()
    is_first = np.zeros(r, bool)
    is_first[first] = True
    ends = np.flatnonzero(is_first[nxt])  # each cycle's last run
    nth = np.searchsorted(first, nxt[ends])
    src = np.delete(ends, np.flatnonzero(nth == k - 1))  # ... but the last cycle's leads on
    src = np.r_[np.flatnonzero(~is_first[nxt]), src]
    dst = np.r_[nxt[~is_first[nxt]], first[nth[nth < k - 1] + 1]]
    seq = depth_first_order(csr_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(r, r)),
                            int(first[0]), directed=True, return_predecessors=False)
    cycle_of_seq = np.cumsum(is_first[seq]) - 1
    order = _ranges(start[seq], run_len[seq])
    return np.repeat(cycle_of_seq, run_len[seq]), order


def _corners(a: np.ndarray, b: np.ndarray, g: np.ndarray, ring: np.ndarray, order: np.ndarray,
             fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring vertices where the direction changes or the edge starts at a ``fixed`` vertex:
    ``(points (k, 2), ring (k,), group per ring)``."""
    counts = np.bincount(ring)
    rstart = np.r_[0, np.cumsum(counts)[:-1]]
    d = np.sign(b - a)[order]
    prev = np.empty_like(d)
    prev[1:] = d[:-1]
    prev[rstart] = d[rstart + counts - 1]
    corner = (d != prev).any(1) | fixed[order]
    return a[order][corner], ring[corner], g[order[rstart]]


def kept_vertices(xy: np.ndarray, block_size: int, nodes: np.ndarray | None) -> np.ndarray:
    """Vertices (bool ``(k,)``) kept even where a ring runs straight: off every seam line (a
    piece's own vertex: a corner or a node), or one of the ``nodes``."""
    out = (xy % block_size != 0).all(1)
    if nodes is not None and len(nodes):
        nodes = np.asarray(nodes, np.int64)
        span = max(_span(xy), _span(nodes))
        zero = np.zeros(1, np.int64)
        out |= np.isin(_keys(zero.repeat(len(xy)), xy, span),
                       _keys(zero.repeat(len(nodes)), nodes, span))
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for every pair, vectorized."""
    base = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts)
    return base + np.arange(int(counts.sum()))
