"""Client side of vectorizing: pieces of regions cut by block borders, joined as blocks finish.

A block result lists the pieces of its regions that touch an inner block border, and the labels
along its four edges. Pieces are held only until every neighbouring block they may continue into
is done: then their whole region (the connected component of "same class, adjacent across a
seam" over the held pieces) is known, is dissolved into one polygon and leaves memory. With
blocks finishing roughly in submission (row-major) order, what is held is about two block rows
of border pieces, whatever the scene size. Regions are the same as a whole-scene labelling:
the seam pairs are those of :class:`geoseg.vectorize.seams.Seams`, found block pair by block
pair (and across block corners with 8-connectivity).

On a cluster the client holds only the small pieces: a piece over :data:`KEEP_PIECE_BYTES`
stays on the worker that made it (:func:`split_border`; the client keeps a Dask future of it),
and its region is dissolved by a worker that fetches it from there (:func:`dissolve_kept`).
What a region spanning the whole scene costs the client is then its finished polygon on its
way to the GeoPackage, not its pieces as well, nor copies of them sent to a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.gpkg import multipolygon_wkb
from geoseg.vectorize.blocks import to_crs
from geoseg.vectorize.maskinfo import MaskInfo
from geoseg.vectorize.rings import dissolve
from geoseg.vectorize.seams import components, straight_nodes, unseam

__all__ = ["KEEP_PIECE_BYTES", "REMOTE_DISSOLVE_BYTES", "BorderJoin", "FarRegion", "FetchKept",
           "RemoteDissolve", "dissolve_kept", "dissolve_region", "gather_pieces",
           "split_border"]

log = logging.getLogger(__name__)

#: A region whose pieces add up to more WKB than this (bytes; 16 bytes a vertex) is dissolved
#: by a worker when :class:`BorderJoin` has a ``remote``: the dissolve's transient arrays
#: (~100 bytes a vertex) then never land in the client. A region spanning a whole 16384²
#: scene had 2.4 M vertices (38 MB of WKB) and added 326 MB to the client's peak.
REMOTE_DISSOLVE_BYTES = 4 * 2**20

#: On a cluster, a border piece over this many bytes of WKB stays on the worker that made it
#: (:func:`split_border`) and only its size comes to the client; its region is then dissolved
#: by a worker, which fetches it from there. What the client holds of a region spanning the
#: scene is then its small pieces, not its outline.
KEEP_PIECE_BYTES = 64 * 2**10

#: A region to dissolve elsewhere: ``(its pieces' WKB held here, [(handle, local ids)] of its
#: pieces kept elsewhere)``.
FarRegion = tuple[list[bytes], list[tuple[Any, list[int]]]]

#: ``remote(regions)`` dissolves them elsewhere (Dask workers), all at once, and yields
#: ``(index in regions, MultiPolygon WKB in the CRS, GEOS fallback used)`` as each finishes.
RemoteDissolve = Callable[[list[FarRegion]], Iterator[tuple[int, bytes, bool]]]

#: ``fetch(handle) -> {local id: WKB}``: a block's kept pieces, brought to this process.
FetchKept = Callable[[Any], dict[int, bytes]]

#: neighbour directions (row step, column step), bit i of a piece's ``need`` mask
_DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass
class _Block:
    base: int  # global id = base + local label
    cls: np.ndarray  # uint8 (n+1,): class of each local label
    edges: tuple[np.ndarray, ...]  # local labels along top, bottom, left, right


class BorderJoin:
    """Holds border pieces until their regions are complete, then dissolves them.

    Args:
        nrows, ncols: block lattice. connectivity: 4 or 8. info: the mask.
        block_size: block side, pixels (seams lie on its multiples).
        remote: dissolves one region elsewhere (a Dask worker; see :func:`dissolve_region`);
            used for regions over :data:`REMOTE_DISSOLVE_BYTES` of pieces, and for every
            region with a piece kept elsewhere (see :meth:`add`).
        fetch: brings kept pieces here, when ``remote`` fails.
    """

    def __init__(self, nrows: int, ncols: int, connectivity: int, info: MaskInfo,
                 block_size: int, remote: RemoteDissolve | None = None,
                 fetch: FetchKept | None = None):
        self.nrows, self.ncols = nrows, ncols
        self.connectivity, self.info, self.block_size = connectivity, info, block_size
        self.remote, self.fetch = remote, fetch
        self.kept: dict[int, Any] = {}  # block index -> handle of its kept pieces
        self.remote_regions = 0  # regions dissolved by ``remote``
        self.done = np.zeros((nrows, ncols), bool)
        self.blocks: dict[int, _Block] = {}
        self.total = 0
        self.pairs: list[np.ndarray] = []  # (k, 2) global ids, same class, across a seam
        self.nodes: list[np.ndarray] = []  # (k, 3): global id, x, y of seam nodes (_seam_nodes)
        self.held: list[dict[str, np.ndarray]] = []
        self.fallbacks = 0  # regions GEOS had to union (only expected with 8-connectivity)

    def add(self, index: int, n: int, cls: np.ndarray, edges: tuple[np.ndarray, ...],
            border: tuple[np.ndarray, ...], kept: Any = None) -> None:
        """Take one block's result: ``n`` local regions of classes ``cls`` (uint8 ``(n+1,)``),
        its edge labels, and its border pieces ``(local ids, classes, WKB, stats (k, 4), WKB
        sizes)`` as :func:`geoseg.vectorize.blocks.polygonize_task` returns them. A piece whose
        WKB is None is kept elsewhere (:func:`split_border`), under ``kept``: a handle that
        ``remote`` and ``fetch`` understand, dropped once no held piece needs it."""
        r, c = divmod(index, self.ncols)
        blk = _Block(self.total, np.asarray(cls), edges)
        self.total += n
        self.blocks[index] = blk
        self.done[r, c] = True
        for dr, dc in _DIRS[: 4 if self.connectivity == 4 else 8]:
            if 0 <= r + dr < self.nrows and 0 <= c + dc < self.ncols and self.done[r + dr, c + dc]:
                self.pairs.append(self._seam_pairs(index, (r + dr) * self.ncols + c + dc))
                if dr == 0 or dc == 0:
                    self.nodes.append(self._seam_nodes(index, (r + dr) * self.ncols + c + dc))
        for dr, dc in _DIRS[4:]:  # block corners, once the four blocks around are done
            rr, cc = min(r, r + dr), min(c, c + dc)
            if 0 <= rr < self.nrows - 1 and 0 <= cc < self.ncols - 1 \
                    and self.done[rr : rr + 2, cc : cc + 2].all():
                self.nodes.append(self._corner_nodes(rr, cc))
        for dr in (-1, 0, 1):  # forget the edges of blocks whose neighbours are all done
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                k = rr * self.ncols + cc
                if 0 <= rr < self.nrows and 0 <= cc < self.ncols and k in self.blocks \
                        and self._surrounded(rr, cc):
                    del self.blocks[k]
        ids, bcls, wkb, stats, nbytes = border
        wkb = np.asarray(wkb, dtype=object)
        away = np.array([w is None for w in wkb], dtype=bool)
        if away.any():
            if kept is None or self.remote is None:
                raise ValueError(f"block {index}: pieces kept elsewhere need a handle and remote")
            self.kept[index] = kept
        if len(ids):
            self.held.append(dict(gid=ids.astype(np.int64) + blk.base, lid=ids, cls=bcls,
                                  wkb=wkb, stats=stats, nbytes=np.asarray(nbytes, np.int64),
                                  away=away, block=np.full(len(ids), index),
                                  row=np.full(len(ids), r), col=np.full(len(ids), c),
                                  need=self._needs(ids, edges)))

    def _surrounded(self, r: int, c: int) -> bool:
        return bool(self.done[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].all())

    def _needs(self, ids: np.ndarray, edges: tuple[np.ndarray, ...]) -> np.ndarray:
        """Bit mask per piece of the neighbours (``_DIRS`` order) it may continue into."""
        top, bottom, left, right = edges
        need = np.zeros(len(ids), np.int64)
        for bit, edge in enumerate((top, bottom, left, right)):
            need |= np.isin(ids, edge).astype(np.int64) << bit
        if self.connectivity == 8:
            for bit, pixel in zip(range(4, 8), (top[0], top[-1], bottom[0], bottom[-1]),
                                  strict=True):
                need |= (ids == pixel).astype(np.int64) << bit
        return need

    def _seam_pairs(self, a: int, b: int) -> np.ndarray:
        """Same-class global id pairs of pixels adjacent across the border of blocks a, b."""
        (ra, ca), (rb, cb) = divmod(a, self.ncols), divmod(b, self.ncols)
        if (ra, ca) > (rb, cb):
            a, b, ra, ca, rb, cb = b, a, rb, cb, ra, ca
        A, B = self.blocks[a], self.blocks[b]
        if ra == rb:  # a left of b
            x, y = A.edges[3], B.edges[2]
        elif ca == cb:  # a above b
            x, y = A.edges[1], B.edges[0]
        elif cb == ca + 1:  # b below-right: corner pixels
            x, y = A.edges[1][-1:], B.edges[0][:1]
        else:  # b below-left
            x, y = A.edges[1][:1], B.edges[0][-1:]
        pairs = [np.stack([x, y], 1)]
        if self.connectivity == 8 and len(x) > 1:
            pairs += [np.stack([x[:-1], y[1:]], 1), np.stack([x[1:], y[:-1]], 1)]
        p = np.concatenate(pairs).astype(np.int64)
        p = p[(p[:, 0] > 0) & (p[:, 1] > 0)]
        p = p[A.cls[p[:, 0]] == B.cls[p[:, 1]]]
        return np.unique(p + [A.base, B.base], axis=0)

    def _seam_nodes(self, a: int, b: int) -> np.ndarray:
        """Seam nodes between blocks a and b (4-neighbours), inside their common border."""
        (ra, ca), (rb, cb) = divmod(a, self.ncols), divmod(b, self.ncols)
        if (ra, ca) > (rb, cb):
            a, b, ra, ca, rb, cb = b, a, rb, cb, ra, ca
        A, B = self.blocks[a], self.blocks[b]
        bs = self.block_size
        if ra == rb:  # a left of b: corners down the vertical seam
            p, q = A.edges[3], B.edges[2]
            quads = ((p[:-1], A), (q[:-1], B), (q[1:], B), (p[1:], A))
            at = np.arange(1, len(p))
            x, y = np.full(len(at), cb * bs), ra * bs + at
        else:  # a above b: corners along the horizontal seam
            p, q = A.edges[1], B.edges[0]
            quads = ((p[:-1], A), (p[1:], A), (q[1:], B), (q[:-1], B))
            at = np.arange(1, len(p))
            x, y = ca * bs + at, np.full(len(at), rb * bs)
        return straight_nodes(quads, x, y)

    def _corner_nodes(self, r: int, c: int) -> np.ndarray:
        """The seam node (0 or 1) at the corner shared by blocks (r, c) to (r + 1, c + 1)."""
        k = r * self.ncols + c
        ul, ur, lr, ll = (self.blocks[i] for i in (k, k + 1, k + self.ncols + 1, k + self.ncols))
        quads = ((ul.edges[1][-1:], ul), (ur.edges[1][:1], ur), (lr.edges[0][:1], lr),
                 (ll.edges[0][-1:], ll))
        bs = self.block_size
        return straight_nodes(quads, np.array([(c + 1) * bs]), np.array([(r + 1) * bs]))

    def ready(self, final: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dissolve the regions whose pieces can no longer grow: ``(class, geometry, stats)``
        with geometries as MultiPolygon WKB in the CRS (what :class:`geoseg.gpkg.GpkgWriter`
        takes); everything that is left when ``final``."""
        empty = (np.empty(0, np.uint8), np.empty(0, object), np.empty((0, 4)))
        if not self.held:
            return empty
        h = {k: np.concatenate([p[k] for p in self.held]) for k in self.held[0]}
        order = np.argsort(h["gid"])
        h = {k: v[order] for k, v in h.items()}
        pairs = np.concatenate(self.pairs) if self.pairs else np.empty((0, 2), np.int64)
        nodes = np.concatenate(self.nodes) if self.nodes else np.empty((0, 3), np.int64)
        pos = np.searchsorted(h["gid"], pairs)
        inside = np.asarray((pos < len(h["gid"])).all(axis=1), dtype=bool)
        inside[inside] = (h["gid"][pos[inside]] == pairs[inside]).all(1)
        comp = components(len(h["gid"]) - 1, pos[inside])
        if final:
            fin = np.ones(len(comp), bool)
        else:
            open_ = np.zeros(len(comp), bool)
            padded = np.pad(self.done, 1, constant_values=True)  # no neighbour = done
            for bit, (dr, dc) in enumerate(_DIRS):
                waiting = ~padded[h["row"] + 1 + dr, h["col"] + 1 + dc]
                open_ |= ((h["need"] >> bit) & 1).astype(bool) & waiting
            blocked = np.zeros(comp.max() + 1, bool)
            blocked[comp[open_]] = True
            fin = ~blocked[comp]
        if not fin.any():
            return empty
        keep = ~fin
        self.held = [{k: v[keep] for k, v in h.items()}] if keep.any() else []
        gone = h["gid"][fin]
        self.pairs = [pairs[~np.isin(pairs[:, 0], gone)]] if len(pairs) else []
        used = np.isin(nodes[:, 0], gone)
        self.nodes = [nodes[~used]] if not used.all() else []
        node_comp = comp[np.searchsorted(h["gid"], nodes[used, 0])]
        out = self._dissolve(comp[fin], {k: v[fin] for k, v in h.items()},
                             (node_comp, nodes[used, 1:]))
        still = set(h["block"][keep & h["away"]].tolist())
        self.kept = {b: k for b, k in self.kept.items() if b in still}
        return out

    def _dissolve(self, comp: np.ndarray, h: dict[str, np.ndarray],
                  nodes: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dissolve the pieces ``h`` by component ``comp``; ``nodes`` = (component, x y) of
        the seam nodes of their outlines."""
        import shapely

        order = np.argsort(comp, kind="stable")
        starts = np.flatnonzero(np.r_[True, comp[order][1:] != comp[order][:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        group = np.repeat(np.arange(len(starts)), sizes)
        node_group = np.searchsorted(comp[order][starts], nodes[0])
        node_xy = nodes[1]
        h = {k: v[order] for k, v in h.items()}
        cls, wkb, stats = h["cls"], h["wkb"], h["stats"]
        far = np.zeros(len(starts), bool)
        if self.remote is not None:
            nbytes = np.bincount(group, weights=h["nbytes"].astype(np.float64),
                                 minlength=len(starts))
            far = (nbytes > REMOTE_DISSOLVE_BYTES) & (sizes > 1)
            far[group[h["away"]]] = True
        near = ~far[group]
        pieces = np.empty(len(wkb), dtype=object)
        pieces[near] = shapely.from_wkb(wkb[near])
        merged = np.empty(len(starts), dtype=object)
        # a piece alone is finished, unless a seam node must be added to its outline
        single = (sizes == 1) & (np.bincount(node_group, minlength=len(starts)) == 0)
        merged[single] = pieces[starts[single]]
        multi = np.flatnonzero(~single & ~far)
        if len(multi):
            members = np.isin(group, multi)
            which = np.searchsorted(multi, group[members])
            joined, fallback = dissolve(pieces[members], which, len(multi), self.block_size,
                                        node_xy[np.isin(node_group, multi)])
            self.fallbacks += int(fallback.sum())
            for j in np.flatnonzero(fallback):  # several shells (8-connectivity): GEOS union
                g = pieces[group == multi[j]]
                joined[j] = unseam(np.array([shapely.union_all(g)]), self.block_size,
                                   node_xy[node_group == multi[j]])[0]
            merged[multi] = joined
        del pieces
        out = np.empty(len(starts), dtype=object)
        if (~far).any():
            out[~far] = multipolygon_wkb(to_crs(merged[~far], self.info, self.connectivity))
        del merged
        if far.any():
            self._dissolve_far(np.flatnonzero(far), group, h, out, (node_group, node_xy))
        gstats = np.add.reduceat(stats, starts, axis=0)
        return cls[starts], out, gstats

    def _dissolve_far(self, far: np.ndarray, group: np.ndarray, h: dict[str, np.ndarray],
                      out: np.ndarray, nodes: tuple[np.ndarray, np.ndarray]) -> None:
        """Dissolve regions ``far`` (group numbers of ``h``'s pieces) with ``remote`` into
        ``out``; those it fails are fetched and dissolved here. A region's seam nodes (``nodes``
        = group, x y) travel with its pieces as one MultiPoint."""
        import shapely

        regions: list[FarRegion] = []
        for j in far:
            mine = group == j
            away = mine & h["away"]
            refs = [(self.kept[b], h["lid"][away & (h["block"] == b)].tolist())
                    for b in np.unique(h["block"][away]).tolist()]
            local = list(h["wkb"][mine & ~h["away"]])
            xy = nodes[1][nodes[0] == j]
            if len(xy):
                local.append(shapely.to_wkb(shapely.multipoints(xy.astype(np.float64))))
            regions.append((local, refs))
        todo = set(range(len(regions)))
        try:
            for i, geom, fell_back in self.remote(regions):  # type: ignore[misc]
                out[far[i]] = geom
                self.fallbacks += int(fell_back)
                self.remote_regions += 1
                todo.discard(i)
        except Exception as exc:  # noqa: BLE001 - the cluster failed them: do them here
            log.warning("dissolving %d regions on workers failed (%s); dissolving them in this "
                        "process", len(todo), exc)
        for i in sorted(todo):
            local, refs = regions[i]
            fetched = [self.fetch(handle) for handle, _ in refs]  # type: ignore[misc]
            pieces = gather_pieces(local, fetched, [ids for _, ids in refs])
            out[far[i]], fell_back = dissolve_region(pieces, self.block_size, self.info,
                                                     self.connectivity)
            self.fallbacks += int(fell_back)


def split_border(result: dict[str, Any], max_bytes: int = KEEP_PIECE_BYTES
                 ) -> tuple[dict[str, Any], dict[int, bytes]]:
    """Split a :func:`~geoseg.vectorize.blocks.polygonize_task` result into what goes to the
    client (border pieces over ``max_bytes`` of WKB replaced by None; their sizes stay) and
    what stays on the worker (``{local id: WKB}`` of those pieces)."""
    ids, cls, wkb, stats, nbytes = result["border"]
    big = nbytes > max_bytes
    if not big.any():
        return result, {}
    sent = np.array(wkb, dtype=object)
    kept = dict(zip(ids[big].tolist(), sent[big], strict=True))
    sent[big] = None
    return {**result, "border": (ids, cls, sent, stats, nbytes)}, kept


def gather_pieces(local: Sequence[bytes], kept: Sequence[dict[int, bytes]],
                  ids: Sequence[Sequence[int]]) -> list[bytes]:
    """The pieces of one region: ``local`` ones and, from each block's kept pieces, ``ids``."""
    return [*local, *(k[i] for k, sel in zip(kept, ids, strict=True) for i in sel)]


def dissolve_kept(local: Sequence[bytes], kept: Sequence[dict[int, bytes]],
                  ids: Sequence[Sequence[int]], block_size: int, info: MaskInfo,
                  connectivity: int) -> tuple[bytes, bool]:
    """:func:`dissolve_region` of pieces held here and kept pieces (the worker side of
    :class:`BorderJoin`'s ``remote``)."""
    return dissolve_region(gather_pieces(local, kept, ids), block_size, info, connectivity)


def dissolve_region(wkb: Sequence[bytes], block_size: int, info: MaskInfo, connectivity: int
                    ) -> tuple[bytes, bool]:
    """Dissolve the pixel-space pieces of one region (WKB) into one geometry in the CRS.

    ``wkb`` may hold one MultiPoint: the seam nodes its outline keeps (see
    :func:`geoseg.vectorize.rings.dissolve`). Returns ``(MultiPolygon WKB, fallback)``:
    ``fallback`` when the pieces needed a GEOS union (several shells, only with
    8-connectivity). Runs as a Dask task for :class:`BorderJoin`'s ``remote``.
    """
    import shapely

    geoms = shapely.from_wkb(np.asarray(wkb, dtype=object))
    point = shapely.get_type_id(geoms) == shapely.GeometryType.MULTIPOINT
    nodes = shapely.get_coordinates(geoms[point]).astype(np.int64)
    pieces = geoms[~point]
    joined, fallback = dissolve(pieces, np.zeros(len(pieces), np.int64), 1, block_size, nodes)
    geom = unseam(np.array([shapely.union_all(pieces)]), block_size, nodes)[0] if fallback[0] \
        else joined[0]
    crs_geom = to_crs(np.array([geom], dtype=object), info, connectivity)
    return multipolygon_wkb(crs_geom)[0], bool(fallback[0])

