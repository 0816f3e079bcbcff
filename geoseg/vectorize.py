"""Mask COG → GeoPackage polygons, block by block, seamless across block borders.

Every block (a window of the mask, ``block_size`` pixels square) is one task: it reads its own
window, labels the connected regions of each class (``scipy.ndimage.label``, 4- or 8-connected,
nodata never labelled), polygonizes the *label* raster with ``rasterio.features.shapes`` and
computes per-region statistics (pixels, area, confidence sum) from the same pixels. Regions that
do not touch an inner block border are finished features and stream to the writer; pieces that
touch one are sent back to the client, joined across seams with union-find over the seam pixel
rows/columns (full scene width/height, so 8-connected diagonals across block corners are seen),
and unioned (``shapely.coverage_union_all``). The layer thus has exactly one (multi)polygon per
connected region of a class, as if the whole mask had been polygonized at once.

Geometries are built in *pixel* coordinates (each block's window offset as its transform), where
every vertex is an integer and seam edges are bit-identical between neighbours, and mapped to the
CRS with the scene's affine transform only when finished: the result does not depend on the
block size, down to the last bit of every coordinate.

Sieve (``min_area_m2``) — exact, global, block-bounded
------------------------------------------------------
GDAL's sieve (``rasterio.features.sieve``) replaces a region smaller than the threshold by its
*largest* neighbouring region, following a chain through small neighbours until a large one is
reached. Whether a neighbour is "largest" depends on its whole size, which can reach far beyond
any halo, so a per-block sieve with a halo cannot be exact. geoseg does it globally: a first pass
over the blocks returns only per-region sizes, first-pixel positions, seam rows and the
adjacencies of small pieces; the client joins regions across seams, decides every small region's
target class, and the second pass applies the per-block remap before polygonizing. Memory is one
block per task plus O(number of regions) on the client. Same semantics as GDAL (nodata is never
a neighbour and never changes) except ties between equally large neighbours, which geoseg breaks
by the neighbour's first pixel in raster order so that the result never depends on the blocks.

Simplification (``simplify_m``) holds the whole layer (vectors only, no pixels): GDAL's polygons
share edges without sharing every vertex, so the layer is first noded with
``shapely.coverage_clean`` (areas unchanged), then ``shapely.coverage_simplify`` simplifies every
shared edge once — no gaps or overlaps. Without simplification features stream to the file; they
then tile the plane without gaps or overlaps but are not vertex-matched (as GDAL's own output).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import ConfigError, SceneError
from geoseg.gpkg import ClassStyle, GpkgWriter
from geoseg.tiling import Window

__all__ = ["MaskInfo", "VectorizeResult", "read_mask_info", "vectorize_mask"]

log = logging.getLogger(__name__)

#: Called after every finished block with ``(blocks done, blocks total)``.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class VectorizeResult:
    """What :func:`vectorize_mask` wrote.

    Attributes:
        path: the GeoPackage. layer: its layer name. n_features: polygons written.
        class_features: class id → polygons. class_area_m2: class id → area, m².
        seconds: wall-clock time. blocks: number of blocks.
    """

    path: Path
    layer: str
    n_features: int
    class_features: dict[int, int]
    class_area_m2: dict[int, float]
    seconds: float
    blocks: int = 0


@dataclass(frozen=True)
class MaskInfo:
    """A mask's grid and classes.

    ``transform`` is the rasterio affine ``(a, b, c, d, e, f)`` (pixel → CRS); ``pixel_area_m2``
    is ``|det(transform)|`` (CRS units², NaN when geographic); ``row_area_m2`` (geographic CRS
    only) is the geodesic area of one pixel in each row, m², ``(height,)``.
    """

    path: str
    confidence: str | None
    height: int
    width: int
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str
    nodata: int
    classes: tuple[ClassStyle, ...]
    pixel_area_m2: float
    row_area_m2: tuple[float, ...] | None = None


def read_mask_info(path: str | os.PathLike[str]) -> MaskInfo:
    """Open a mask COG and read its grid, classes (tag, else colour table) and pixel areas."""
    import rasterio
    from pyproj import CRS

    p = Path(path)
    try:
        src = rasterio.open(p)
    except rasterio.errors.RasterioIOError as exc:
        raise SceneError(f"{p}: cannot open the mask ({exc}); give a geoseg mask GeoTIFF") from exc
    with src:
        if src.count != 1 or src.dtypes[0] != "uint8":
            raise SceneError(f"{p}: a mask is one uint8 band, found {src.count} × {src.dtypes[0]}"
                             "; give the mask written by 'geoseg predict'")
        if src.crs is None:
            raise SceneError(f"{p}: the mask has no CRS; assign one (gdal_edit.py -a_srs)")
        nodata = 255 if src.nodata is None else int(src.nodata)
        classes = _read_classes(src, p)
        t = src.transform
        crs = CRS.from_wkt(src.crs.to_wkt())
        info = MaskInfo(str(p), None, src.height, src.width, (t.a, t.b, t.c, t.d, t.e, t.f),
                        src.crs.to_wkt(), nodata, classes, abs(t.determinant))
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    conf = p.with_name(f"{stem}.confidence.tif")
    if conf.exists():
        info = replace(info, confidence=str(conf))
    if crs.is_geographic:
        if t.b or t.d:
            raise SceneError(f"{p}: rotated geographic grids are not supported; warp it north-up")
        geod = crs.get_geod()
        rows = np.arange(info.height + 1)
        lat = t.f + rows * t.e
        lon0, lon1 = t.c, t.c + t.a
        areas = [abs(geod.polygon_area_perimeter([lon0, lon1, lon1, lon0],
                                                 [lat[i], lat[i], lat[i + 1], lat[i + 1]])[0])
                 for i in range(info.height)]
        info = replace(info, row_area_m2=tuple(areas), pixel_area_m2=float("nan"))
    return info


def _read_classes(src: Any, path: Path) -> tuple[ClassStyle, ...]:
    from geoseg.pipeline import CLASSES_TAG

    tag = src.tags().get(CLASSES_TAG)
    if tag:
        try:
            return tuple(ClassStyle(int(c["id"]), str(c["name"]), tuple(c["color"])[:3])
                         for c in json.loads(tag))
        except (ValueError, KeyError, TypeError) as exc:
            raise SceneError(f"{path}: tag {CLASSES_TAG} is not a JSON list of "
                             f"{{id, name, color}} ({exc}); rewrite it or delete it") from exc
    try:
        cmap = src.colormap(1)
    except ValueError:
        cmap = {}
    return tuple(ClassStyle(i, f"class_{i}", tuple(rgba[:3])) for i, rgba in sorted(cmap.items())
                 if i != 255 and any(rgba[:3]))


# ----------------------------------------------------------------------------- block tasks


@dataclass(frozen=True)
class BlockTask:
    """One block's work order (picklable; the task opens the files itself)."""

    index: int
    window: Window
    info: MaskInfo
    connectivity: int
    sieve_pixels: float = 0.0
    remap: tuple[np.ndarray, np.ndarray] | None = None  # local labels → new class


def _structure(connectivity: int) -> np.ndarray:
    return np.ones((3, 3), bool) if connectivity == 8 else np.array(
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def _read(path: str, w: Window) -> np.ndarray:
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(path) as src:
        return src.read(1, window=RioWindow(w.col, w.row, w.width, w.height))


def _label(data: np.ndarray, nodata: int, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int32 (H, W), class per label uint8 (n+1,))``: regions per class, 0 = none."""
    from scipy import ndimage

    labels = np.zeros(data.shape, np.int32)
    classes = [np.uint8(nodata)]
    n = 0
    for c in np.unique(data):
        if c == nodata:
            continue
        lab, k = ndimage.label(data == c, _structure(connectivity))
        labels += np.where(lab > 0, lab + n, 0).astype(np.int32)
        classes += [c] * k
        n += k
    return labels, np.array(classes, np.uint8)


def _block_labels(task: BlockTask) -> tuple[np.ndarray, np.ndarray]:
    info = task.info
    data = _read(info.path, task.window)
    labels, cls = _label(data, info.nodata, task.connectivity)
    if task.remap is not None and len(task.remap[0]):
        lut = cls.copy()
        lut[task.remap[0]] = task.remap[1]
        data = np.where(labels > 0, lut[labels], data)
        labels, cls = _label(data, info.nodata, task.connectivity)
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
    """Polygonize one block: finished features, and the pieces touching inner block borders."""
    import rasterio.features
    import shapely
    from rasterio.transform import Affine

    info, w = task.info, task.window
    labels, cls = _block_labels(task)
    n = len(cls) - 1
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1).astype(np.float64)
    if info.row_area_m2 is not None:
        rows = np.asarray(info.row_area_m2[w.row : w.row_stop])
        area = np.bincount(flat, weights=np.repeat(rows, w.width), minlength=n + 1)
    else:
        area = counts * info.pixel_area_m2
    conf_sum = conf_n = np.zeros(n + 1)
    if info.confidence is not None:
        conf = _read(info.confidence, w).ravel()
        ok = conf != 255
        conf_sum = np.bincount(flat[ok], weights=conf[ok].astype(np.float64), minlength=n + 1)
        conf_n = np.bincount(flat[ok], minlength=n + 1).astype(np.float64)
    geoms = np.empty(n + 1, dtype=object)
    shift = Affine.translation(w.col, w.row)
    for geom, value in rasterio.features.shapes(labels, mask=labels > 0, transform=shift,
                                                connectivity=task.connectivity):
        v = int(value)
        g = shapely.geometry.shape(geom)
        geoms[v] = g if geoms[v] is None else shapely.union(geoms[v], g)
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
    return dict(
        index=task.index, edges=(top, bottom, left, right), n=n,
        done=(cls[done], _finish(geoms[done], info), stats[done]),
        border=(ids, cls[ids], shapely.to_wkb(geoms[ids]) if len(ids) else [], stats[ids]),
    )


def _finish(pixel_geoms: np.ndarray, info: MaskInfo) -> np.ndarray:
    """Make pixel-space geometries valid and map them to the CRS with the scene transform."""
    import shapely

    g = np.asarray(pixel_geoms, dtype=object)
    if len(g) == 0:
        return g
    bad = ~shapely.is_valid(g)
    if bad.any():  # 8-connected rings touching themselves at a vertex
        g[bad] = [_polygonal(x) for x in shapely.make_valid(g[bad])]
    a, b, c, d, e, f = info.transform
    return shapely.transform(g, lambda xy: np.stack(
        [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f], 1))


def _polygonal(geom: Any) -> Any:
    import shapely

    parts = shapely.get_parts(geom)
    polys = parts[np.isin(shapely.get_type_id(parts), [3, 6])]
    return shapely.union_all(polys)


# ----------------------------------------------------------------------------- client side


def _windows(height: int, width: int, size: int) -> tuple[list[Window], int]:
    """Row-major block windows of ``size`` pixels and the number of block columns."""
    rows, cols = range(0, height, size), range(0, width, size)
    wins = [Window(r, c, min(size, height - r), min(size, width - c)) for r in rows for c in cols]
    return wins, len(cols)


def _run(fn: Callable[[BlockTask], dict[str, Any]], tasks: list[BlockTask],
         client: Any) -> Iterator[dict[str, Any]]:
    """Results of ``fn`` over ``tasks`` as they finish: Dask tasks with a client, else here."""
    if client is None:
        yield from map(fn, tasks)
        return
    from distributed import as_completed

    futures = [client.submit(fn, t, pure=False) for t in tasks]
    for fut in as_completed(futures):
        yield fut.result()
        fut.release()


class _Seams:
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


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected component of every id ``0..n`` given undirected ``pairs`` (union-find)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n + 1,) * 2)
    return connected_components(g, directed=False)[1]


def _sieve_plan(tasks: list[BlockTask], ncols: int, threshold: float, connectivity: int,
                client: Any, progress: Callable[[], None]) -> list[BlockTask]:
    """First pass of the exact global sieve: the tasks again, each with its class remap."""
    seams = _Seams(len(tasks), ncols)
    parts: dict[int, dict[str, Any]] = {}
    tasks = [replace(t, sieve_pixels=threshold) for t in tasks]
    for r in _run(sieve_stats_task, tasks, client):
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
    comp = _components(seams.total, seam[same])
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


def _features(cls: np.ndarray, geoms: np.ndarray, stats: np.ndarray,
              names: dict[int, str], with_conf: bool) -> dict[str, Any]:
    cols: dict[str, Any] = dict(
        geometry=geoms, class_id=cls.astype(np.int32),
        class_name=np.array([names.get(int(c), f"class_{int(c)}") for c in cls], dtype=object),
        area_m2=stats[:, 1])
    if with_conf:
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["mean_confidence"] = stats[:, 2] / stats[:, 3]
    return cols


def _merge(border: list[tuple[np.ndarray, ...]], seams: _Seams, connectivity: int,
           info: MaskInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join the pieces of regions cut by block borders: ``(class, geometry, stats)``."""
    import shapely

    gid = np.concatenate([b[0] for b in border])
    if len(gid) == 0:
        return np.empty(0, np.uint8), np.empty(0, object), np.empty((0, 4))
    cls = np.concatenate([b[1] for b in border])
    wkb = np.concatenate([np.asarray(b[2], dtype=object) for b in border])
    stats = np.concatenate([b[3] for b in border])
    gcls = np.zeros(seams.total + 1, np.int16)
    gcls[gid] = cls
    seam = seams.pairs(connectivity)
    comp = _components(seams.total, seam[gcls[seam[:, 0]] == gcls[seam[:, 1]]])[gid]
    order = np.argsort(comp, kind="stable")
    starts = np.flatnonzero(np.r_[True, comp[order][1:] != comp[order][:-1]])
    groups = np.split(order, starts[1:])
    pieces = shapely.from_wkb(wkb)
    merged = np.empty(len(groups), dtype=object)
    for k, grp in enumerate(groups):
        merged[k] = pieces[grp[0]] if len(grp) == 1 else shapely.union_all(pieces[grp])
    merged = shapely.simplify(merged, 0.0)  # drop the collinear vertices left on seams
    gstats = np.add.reduceat(stats[order], starts, axis=0)
    return cls[order[starts]], _finish(merged, info), gstats


def vectorize_mask(
    mask_path: str | os.PathLike[str],
    out_gpkg: str | os.PathLike[str],
    *,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    connectivity: int = 4,
    layer: str = "landcover",
    block_size: int = 2048,
    client: Any = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> VectorizeResult:
    """Polygonize a geoseg mask COG into a GeoPackage layer, one polygon per region.

    Args:
        mask_path: single-band uint8 mask (class ids, nodata 255, ``GEOSEG_CLASSES`` tag).
        out_gpkg: GeoPackage to write (atomically; QGIS style included).
        min_area_m2: sieve regions smaller than this (m²; CRS units² when projected), merging
            them into their largest neighbour; 0 disables. Exact, see the module docstring.
        simplify_m: coverage-preserving simplification tolerance, metres (CRS units when
            projected; ≈ m / 111 320 degrees when geographic); 0 disables.
        connectivity: 4 or 8, for regions, sieve and polygons alike.
        layer: layer name. block_size: block side, pixels.
        client: a ``distributed.Client`` to run blocks on, or None for this process.
        overwrite: replace ``out_gpkg``. progress: called with ``(done, total)`` block steps.

    Fields: ``class_id`` int32, ``class_name`` str, ``area_m2`` float64 (geodesic for a
    geographic CRS), ``mean_confidence`` float64 percent (only with a ``.confidence.tif``).

    Raises:
        ConfigError: bad option. SceneError: unusable mask. OutputExistsError: no overwrite.
    """
    import shapely

    start = time.perf_counter()
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    if block_size < 16 or min_area_m2 < 0 or simplify_m < 0:
        raise ConfigError(f"block size must be ≥ 16 px (got {block_size}); min area and "
                          f"simplify ≥ 0 (got {min_area_m2}, {simplify_m})")
    info = read_mask_info(mask_path)
    wins, ncols = _windows(info.height, info.width, block_size)
    tasks = [BlockTask(i, w, info, connectivity) for i, w in enumerate(wins)]
    steps = [0, len(tasks) * (2 if min_area_m2 > 0 else 1)]

    def tick() -> None:
        steps[0] += 1
        if progress is not None:
            progress(steps[0], steps[1])

    names = {c.id: c.name for c in info.classes}
    with_conf = info.confidence is not None
    fields = [("class_id", "int32"), ("class_name", "object"), ("area_m2", "float64")]
    fields += [("mean_confidence", "float64")] if with_conf else []
    counts: dict[int, int] = {}
    areas: dict[int, float] = {}
    held: list[dict[str, Any]] = []

    with GpkgWriter(out_gpkg, layer, info.crs_wkt, info.classes, fields, overwrite) as writer:
        def emit(cols: dict[str, Any]) -> None:
            for c, a in zip(cols["class_id"], cols["area_m2"], strict=True):
                counts[int(c)] = counts.get(int(c), 0) + 1
                areas[int(c)] = areas.get(int(c), 0.0) + float(a)
            if simplify_m > 0:
                held.append(cols)
            else:
                writer.write(**cols)

        if min_area_m2 > 0:
            pixel = info.pixel_area_m2
            if info.row_area_m2 is not None:
                pixel = float(np.mean(info.row_area_m2))
                log.warning("geographic CRS: sieve threshold uses the mean pixel area %.1f m²",
                            pixel)
            tasks = _sieve_plan(tasks, ncols, min_area_m2 / pixel, connectivity, client, tick)
        seams = _Seams(len(tasks), ncols)
        border = []
        for r in _run(polygonize_task, tasks, client):
            seams.add(r["index"], r["n"], r["edges"])
            ids, bcls, wkb, bstats = r["border"]
            border.append((ids + seams.base[r["index"]], bcls, wkb, bstats))
            emit(_features(*r["done"], names, with_conf))
            tick()
        emit(_features(*_merge(border, seams, connectivity, info), names, with_conf))
        if held:
            cols = {k: np.concatenate([h[k] for h in held]) for k in held[0]}
            tol = simplify_m if info.row_area_m2 is None else simplify_m / 111_320.0
            # pieces from GDAL are not vertex-matched along shared edges: clean (node) first
            cleaned = shapely.coverage_clean(cols["geometry"])
            cols["geometry"] = shapely.coverage_simplify(cleaned, tol)
            writer.write(**cols)
        writer.commit()
    n = sum(counts.values())
    log.info("%s: %d polygons in %d blocks", out_gpkg, n, len(tasks))
    return VectorizeResult(Path(out_gpkg), layer, n, counts, areas,
                           time.perf_counter() - start, len(tasks))
