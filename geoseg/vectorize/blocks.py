"""Worker side of vectorizing: one task per block window of the mask.

Each task reads its own window, labels the connected regions of each class and either returns
sieve statistics (first pass) or polygons in *pixel* coordinates (integer vertices, so seam
edges are bit-identical between neighbouring blocks), mapped to the CRS only when finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from geoseg.gpkg import multipolygon_wkb
from geoseg.maskfile import NODATA
from geoseg.tasks import TaskPolicy, map_as_finished
from geoseg.tiling import Window
from geoseg.vectorize.maskinfo import MaskInfo
from geoseg.vectorize.rings import pinched
from geoseg.vectorize.trace import trace

__all__ = ["BlockTask", "block_windows", "label_regions", "polygonize_task", "run_blocks",
           "sieve_stats_task", "to_crs"]



@dataclass(frozen=True)
class BlockTask:
    """One block's work order (picklable; the task opens the files itself)."""

    index: int
    window: Window
    info: MaskInfo
    connectivity: int
    sieve_pixels: float = 0.0
    remap: tuple[np.ndarray, np.ndarray] | None = None  # local labels → new class


def _read(path: str, w: Window) -> np.ndarray:
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(path) as src:
        return src.read(1, window=RioWindow(w.col, w.row, w.width, w.height))


def label_regions(data: np.ndarray, nodata: int, connectivity: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The connected regions of each class of a mask, labelled in one pass.

    A region is a maximal set of pixels of one class connected through edges
    (``connectivity`` 4) or edges and corners (8). Regions are numbered class by class in
    increasing class order, and within a class in raster order of their first pixel: the
    labels of ``scipy.ndimage.label`` run once per class, without its pass over the whole
    block per class (7 times faster on a 7-class 2048² block). The rows are cut into runs of
    one value; runs of one class in adjacent rows that overlap (4) or touch (8) are linked,
    and the graph's connected components (scipy's, linear in the runs) are the regions.

    Args:
        data: uint8 ``(H, W)`` class ids.
        nodata: the class id of no region (label 0).
        connectivity: 4 or 8.

    Returns:
        ``(labels int32 (H, W), class per label uint8 (n+1,))``: labels ``1..n``, 0 at nodata;
        entry 0 of the classes is ``nodata``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = data.shape
    brk = np.empty((h, w), bool)  # a run starts here
    brk[:, 0] = True
    np.not_equal(data[:, 1:], data[:, :-1], out=brk[:, 1:])
    start = np.flatnonzero(brk)  # raster index of each run's first pixel, ordered
    del brk
    stop = np.r_[start[1:], h * w]
    value = data.ravel()[start]
    row_start = start - start % w
    # each run from row 1 on, against the runs of the row above it that overlap its columns
    # (4) or those widened by one pixel each side (8): a contiguous range of runs there
    ext = 1 if connectivity == 8 else 0
    b = np.flatnonzero((row_start > 0) & (value != nodata))
    above = row_start[b] - w
    lo = np.searchsorted(stop, above + np.maximum(start[b] - row_start[b] - ext, 0), "right")
    hi = np.searchsorted(start, above + np.minimum(stop[b] - row_start[b] + ext, w), "left")
    count = hi - lo
    bb = np.repeat(b, count)
    aa = np.arange(len(bb)) - np.repeat(np.cumsum(count) - count - lo, count)
    same = value[aa] == value[bb]
    m = len(start)
    graph = coo_matrix((np.ones(int(same.sum()), np.int8), (aa[same], bb[same])), shape=(m, m))
    del aa, bb, same
    k, component = connected_components(graph.tocsr(), directed=False)
    first = np.full(k, m, np.int64)  # each component's first run
    np.minimum.at(first, component, np.arange(m))
    cls = value[first]
    real = np.flatnonzero(cls != nodata)
    order = real[np.argsort(cls[real], kind="stable")]
    number = np.zeros(k, np.int32)
    number[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    labels = np.repeat(number[component], stop - start).reshape(h, w)
    return labels, np.r_[np.uint8(nodata), cls[order].astype(np.uint8)]


def _block_labels(task: BlockTask) -> tuple[np.ndarray, np.ndarray]:
    info = task.info
    data = _read(info.path, task.window)
    labels, cls = label_regions(data, info.nodata, task.connectivity)
    if task.remap is not None and len(task.remap[0]):
        lut = cls.copy()
        lut[task.remap[0]] = task.remap[1]
        data = np.where(labels > 0, lut[labels], data)
        labels, cls = label_regions(data, info.nodata, task.connectivity)
    return labels, cls


def _edges(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    return labels[0].copy(), labels[-1].copy(), labels[:, 0].copy(), labels[:, -1].copy()


def _first_keys(labels: np.ndarray, w: Window, width: int, n: int) -> np.ndarray:
    """Scene raster-order index of each label's first pixel (int64, ``(n+1,)``)."""
    lab, idx = np.unique(labels.ravel(), return_index=True)
    keys = np.full(n + 1, -1, np.int64)
    keys[lab] = (w.row + idx // w.width) * width + (w.col + idx % w.width)
    return keys


def _neighbour_pairs(labels: np.ndarray, connectivity: int) -> np.ndarray:
    """Unique ``(a, b)`` label pairs of adjacent pixels of different regions, ``(k, 2)``."""
    shifts = [(labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])]
    if connectivity == 8:
        shifts += [(labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])]
    masks = [(a, b, (a != b) & (a > 0) & (b > 0)) for a, b in shifts]
    out = [np.stack([a[m], b[m]], 1) for a, b, m in masks if m.any()]
    return np.unique(np.concatenate(out), axis=0) if out else np.empty((0, 2), np.int32)


def sieve_stats_task(task: BlockTask) -> dict[str, Any]:
    """First sieve pass on one block: region classes, sizes, first pixels, seams, adjacencies."""
    labels, cls = _block_labels(task)
    n = len(cls) - 1
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    pairs = _neighbour_pairs(labels, task.connectivity)
    small = counts < task.sieve_pixels
    pairs = pairs[small[pairs[:, 0]] | small[pairs[:, 1]]] if len(pairs) else pairs
    return dict(index=task.index, cls=cls, counts=counts, pairs=pairs, edges=_edges(labels),
                keys=_first_keys(labels, task.window, task.info.width, n))


def polygonize_task(task: BlockTask) -> dict[str, Any]:
    """Polygonize one block: finished features, and the pieces touching inner block borders.

    Returns a dict: ``index``; ``n`` regions; ``cls`` uint8 ``(n+1,)`` class per local label;
    ``edges`` (local labels along top, bottom, left, right); ``done`` = finished features
    ``(classes, MultiPolygon WKB in the CRS, stats (k, 4))``; ``border`` = pieces touching an
    inner border ``(local ids, classes, pixel-space WKB, stats (k, 4), WKB sizes in bytes)``.
    Stats are pixels, area m², confidence sum, confidence count (float64).
    """
    import shapely

    info, w = task.info, task.window
    labels, cls = _block_labels(task)
    n = len(cls) - 1
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1).astype(np.float64)
    if info.row_area_m2 is not None:
        rows = np.asarray(info.row_area_m2[w.row : w.row_stop])
        area: np.ndarray = np.bincount(flat, weights=np.repeat(rows, w.width), minlength=n + 1)
    else:
        area = counts * info.pixel_area_m2
    conf_sum: np.ndarray = np.zeros(n + 1)
    conf_n: np.ndarray = conf_sum
    if info.confidence is not None:
        conf = _read(info.confidence, w).ravel()
        ok = conf != NODATA
        conf_sum = np.bincount(flat[ok], weights=conf[ok].astype(np.float64), minlength=n + 1)
        conf_n = np.bincount(flat[ok], minlength=n + 1).astype(np.float64)
    geoms = trace(labels, n, (w.col, w.row), task.connectivity)
    top, bottom, left, right = _edges(labels)
    inner = [e for e, side in ((top, w.row > 0), (bottom, w.row_stop < info.height),
                               (left, w.col > 0), (right, w.col_stop < info.width)) if side]
    border = np.zeros(n + 1, bool)
    for e in inner:
        border[e] = True
    border[0] = False
    done = np.flatnonzero(~border)[1:] if n else np.empty(0, np.int64)
    ids = np.flatnonzero(border)
    stats = np.stack([counts, area, conf_sum, conf_n], 1)
    wkb = shapely.to_wkb(geoms[ids]) if len(ids) else np.empty(0, object)
    return dict(
        index=task.index, edges=(top, bottom, left, right), n=n, cls=cls,
        done=(cls[done], multipolygon_wkb(to_crs(geoms[done], info, task.connectivity)),
              stats[done]),
        border=(ids, cls[ids], wkb, stats[ids], np.fromiter(map(len, wkb), np.int64, len(wkb))),
    )


def to_crs(pixel_geoms: np.ndarray, info: MaskInfo, connectivity: int) -> np.ndarray:
    """Make pixel-space geometries valid and map them to the CRS with the scene transform."""
    import shapely

    g = np.asarray(pixel_geoms, dtype=object)
    if len(g) == 0:
        return g
    bad = np.flatnonzero(_maybe_invalid(g, connectivity))
    bad = bad[~shapely.is_valid(g[bad])]
    if len(bad):  # rings touching themselves at a vertex
        g[bad] = [_polygonal(x) for x in shapely.make_valid(g[bad])]
    a, b, c, d, e, f = info.transform
    return shapely.transform(g, lambda xy: np.stack(
        [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f], 1))


def _maybe_invalid(geoms: np.ndarray, connectivity: int) -> np.ndarray:
    """Pixel geometries that could be invalid: pinched polygons and every multi-part one."""
    import shapely

    single = shapely.get_type_id(geoms) == 3
    out = ~single
    out[single] = pinched(geoms[single], connectivity)
    return out


def _polygonal(geom: Any) -> Any:
    import shapely

    parts = shapely.get_parts(geom)
    polys = parts[np.isin(shapely.get_type_id(parts), [3, 6])]
    return shapely.union_all(polys)


def block_windows(height: int, width: int, size: int) -> tuple[list[Window], int]:
    """Row-major block windows of ``size`` pixels and the number of block columns."""
    rows, cols = range(0, height, size), range(0, width, size)
    wins = [Window(r, c, min(size, height - r), min(size, width - c)) for r in rows for c in cols]
    return wins, len(cols)


def run_blocks(fn: Callable[[Any], Any], tasks: list[Any], client: Any,
               policy: TaskPolicy | None = None, what: str = "vectorize block",
               split: Callable[[Any], tuple[Any, Any]] | None = None) -> Iterator[Any]:
    """Results of ``fn`` over ``tasks`` as they finish: Dask tasks with a client, else here
    (:func:`geoseg.tasks.map_as_finished`).

    On a cluster the tasks get ``policy``'s retries, stall timeout (a paused or missing
    worker fails the run instead of hanging it) and priority plus its ``cpu_priority`` (below
    every prediction where they share workers), and its ``cpu_resources`` in place of its
    resources: vectorizing needs no GPU, and on a cluster of GPU workers it goes to the
    CPU-only workers beside them.

    ``split``: ``result -> (sent, kept)``, run where ``fn`` ran; then ``(sent, kept)`` is
    yielded. On a cluster only ``sent`` comes here and ``kept`` is a future: it stays on the
    worker until the caller drops that future (a worker that dies meanwhile has it
    recomputed).
    """
    policy = policy or TaskPolicy()
    policy = replace(policy, resources=dict(policy.cpu_resources),
                     priority=policy.priority + policy.cpu_priority)
    for _, result in map_as_finished(fn, tasks, client, policy, what=what, keep=split):
        yield result
