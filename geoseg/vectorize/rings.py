"""Pixel-polygon geometry in numpy: rasterio shapes to shapely, and seam dissolve without overlay.

Every polygon here is in *pixel* coordinates: integer vertices, axis-parallel edges, as GDAL's
polygonizer makes them. That structure lets two expensive GEOS steps become array arithmetic:

* :func:`polygons_from_shapes` builds the shapely polygons of ``rasterio.features.shapes`` in one
  ``from_ragged_array`` call instead of one Python object per vertex;
* :func:`dissolve` joins the pieces of regions cut by block borders. Pieces of one region only
  share edges on the block seams, so the union is: orient every ring with the interior on the
  left, split the edges lying on seam lines into unit steps, drop the unit edges that two pieces
  share (they appear once in each direction), and relink what is left into rings. Where a
  boundary touches itself at a vertex (two interior quadrants diagonal to each other, e.g. two
  pieces meeting at a corner) the relinking turns right, keeping each exterior corner whole, so
  a hole touching the shell stays a ring of its own (valid OGC polygons). Groups that do not
  form one shell with holes, or whose ring passes a vertex twice (both only possible with
  8-connectivity), are handed back for a GEOS union.

The result carries no collinear vertices, like GDAL's own polygons, so a region gets the same
vertices whether or not it was cut by a block border.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["dissolve", "pinched", "polygons_from_shapes"]


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
    xy, (ring_off, poly_off) = _ragged(polygons)
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


def _ragged(polygons: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    import shapely

    kind, xy, offsets = shapely.to_ragged_array(np.asarray(polygons, dtype=object))
    if kind != shapely.GeometryType.POLYGON:
        raise ValueError(f"expected polygons, got {kind!r}")
    return xy, (np.asarray(offsets[0], np.int64), np.asarray(offsets[1], np.int64))


def _close(xy: np.ndarray, ring: np.ndarray, n_rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Append each ring's first vertex after its last; ``xy`` sorted by ``ring``."""
    counts = np.bincount(ring, minlength=n_rings)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pos = np.arange(len(xy)) + ring  # room for one closing vertex per earlier ring
    out = np.empty((len(xy) + n_rings, 2), xy.dtype)
    out[pos] = xy
    close_at = starts + counts + np.arange(n_rings)
    out[close_at] = xy[starts]
    return out, np.r_[0, np.cumsum(counts + 1)]


def dissolve(pieces: np.ndarray, group: np.ndarray, n_groups: int, block_size: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Union the pixel polygons of each group, which touch only along block seams.

    Args:
        pieces: shapely Polygons/MultiPolygons in pixel coordinates, object ``(n,)``.
        group: group index ``0..n_groups-1`` of each piece, int ``(n,)``.
        n_groups: number of groups.
        block_size: block side, pixels; seams lie on multiples of it.

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
    xy, (ring_off, poly_off) = _ragged(shapely.orient_polygons(parts, exterior_cw=False))
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
        sub, _ = dissolve(np.asarray(pieces, dtype=object)[ok], group[ok], n_groups, block_size)
        merged[~fallback] = sub[~fallback]
        return merged, fallback
    ring_of, order = _cycles(succ)
    pts, rof, rgroup = _corners(a, b, g, ring_of, order)
    del a, b, g, succ, ring_of, order
    span = _span(pts)
    key = np.sort(_keys(rof, pts, span))  # a ring through one vertex twice: 8-connected pinch
    fallback[rgroup[key[1:][key[1:] == key[:-1]] // span**2]] = True
    del key
    pts, rof, rgroup = _with_rings(pts, rof, rgroup, *through)
    n_rings = len(rgroup)
    kcount = np.bincount(rof, minlength=n_rings)
    kstart = np.r_[0, np.cumsum(kcount)[:-1]]
    nxt = np.empty_like(pts)
    nxt[:-1] = pts[1:]
    nxt[kstart + kcount - 1] = pts[kstart]
    area2 = np.bincount(rof, weights=(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1]).astype(
        np.float64), minlength=n_rings)  # twice the signed area: > 0 shell, < 0 hole
    shells = np.bincount(rgroup, weights=area2 > 0, minlength=n_groups)
    fallback |= (np.bincount(group, minlength=n_groups) > 0) & (shells != 1)
    # one polygon per good group: shell ring first, then holes
    rorder = np.lexsort((area2 <= 0, rgroup))
    rorder = rorder[~fallback[rgroup[rorder]]]
    if len(rorder):
        sel = _ranges(kstart[rorder], kcount[rorder])
        ring_seq = np.repeat(np.arange(len(rorder)), kcount[rorder])
        xy_c, roff = _close(pts[sel].astype(np.float64), ring_seq, len(rorder))
        present, per_group = np.unique(rgroup[rorder], return_counts=True)
        merged[present] = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, xy_c, (roff, np.r_[0, np.cumsum(per_group)]))
    return merged, fallback


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


def _cycles(succ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cycles of the permutation ``succ``: ``(ring, order)``, ``order`` listing the elements
    cycle after cycle, each in successor order, ``ring`` the cycle number (0..) at each place.

    Works on runs where ``succ[e] == e + 1`` (most of every ring), so the pointer jumping that
    ranks elements along their cycle runs over few nodes.
    """
    n = len(succ)
    last = np.flatnonzero(succ != np.arange(1, n + 1))  # each run's last element
    start = np.r_[0, last[:-1] + 1]
    run_len = last - start + 1
    run_of = np.repeat(np.arange(len(last)), run_len)
    nxt = run_of[succ[last]]
    r = len(last)
    root = np.arange(r)  # smallest run of each cycle, and steps from it, by pointer jumping
    ptr, dist = nxt.copy(), np.ones(r, np.int64)
    lowest = np.minimum(root, nxt)
    for _ in range(max(1, int(np.ceil(np.log2(r + 1)))) + 1):
        lowest = np.minimum(lowest, lowest[ptr])
        ptr = ptr[ptr]
    # ranks: walk back from each run to its cycle's lowest run
    pred = np.empty(r, np.int64)
    pred[nxt] = np.arange(r)
    is_root = root == lowest
    ptr = np.where(is_root, root, pred)
    dist = (~is_root).astype(np.int64)
    while not is_root[ptr].all():
        dist = dist + dist[ptr]
        ptr = ptr[ptr]
    seq = np.lexsort((dist, lowest))
    cycle_of_seq = np.cumsum(np.r_[0, lowest[seq][1:] != lowest[seq][:-1]])
    order = _ranges(start[seq], run_len[seq])
    return np.repeat(cycle_of_seq, run_len[seq]), order


def _corners(a: np.ndarray, b: np.ndarray, g: np.ndarray, ring: np.ndarray, order: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring vertices where the direction changes: ``(points (k, 2), ring (k,), group per ring)``."""
    counts = np.bincount(ring)
    rstart = np.r_[0, np.cumsum(counts)[:-1]]
    d = np.sign(b - a)[order]
    prev = np.empty_like(d)
    prev[1:] = d[:-1]
    prev[rstart] = d[rstart + counts - 1]
    corner = (d != prev).any(1)
    return a[order][corner], ring[corner], g[order[rstart]]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for every pair, vectorized."""
    base = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts)
    return base + np.arange(int(counts.sum()))
