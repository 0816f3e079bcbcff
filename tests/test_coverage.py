"""Polygon layers are valid coverages (issue 16): every pixel corner where three or more regions
meet (nodata and the outside counting as one) is a vertex of every ring through it, at every
block size, 4- and 8-connected, with and without simplification, so that
``shapely.coverage_is_valid`` holds; the polygons are otherwise GDAL's, vertex for vertex."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from geoseg.pipeline import CLASSES_TAG
from geoseg.vectorize import vectorize_mask
from geoseg.vectorize.rings import polygons_from_shapes
from geoseg.vectorize.trace import trace

TRANSFORM = from_origin(500_000.0, 4_600_000.0, 10.0, 10.0)
CLASSES = [{"id": c, "name": f"class {c}", "color": [40 * c, 200 - 30 * c, 90]} for c in range(6)]
STRUCT = {4: None, 8: np.ones((3, 3), bool)}
BLOCKS = (16, 37, 64, 1024)  # seams cutting regions everywhere, ..., the whole mask in one


def coherent(seed: int = 1, shape: tuple[int, int] = (120, 140)) -> np.ndarray:
    """Smooth 5-class field with salt (single pixels of any class: T-junctions everywhere),
    a nodata corner and nodata specks."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    data = np.digitize(field, np.quantile(field, [0.2, 0.4, 0.6, 0.8])).astype(np.uint8)
    salt = rng.random(shape) < 0.03
    data[salt] = rng.integers(0, 6, int(salt.sum()))
    data[:20, :30] = 255
    data[rng.random(shape) < 0.01] = 255
    return data


def noise(seed: int = 2, shape: tuple[int, int] = (50, 60)) -> np.ndarray:
    """Salt and pepper of 4 classes and nodata: the worst case for nodes."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4, shape).astype(np.uint8)
    data[rng.random(shape) < 0.1] = 255
    return data


MASKS = {"coherent": coherent, "noise": noise}


def write_mask(path: Path, data: np.ndarray) -> Path:
    h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=TRANSFORM, nodata=255) as dst:
        dst.write(data, 1)
        dst.update_tags(**{CLASSES_TAG: json.dumps(CLASSES)})
    return path


def read_layer(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _, _, geoms, fields = pyogrio.raw.read(path, layer="landcover")
    names = pyogrio.read_info(path, layer="landcover")["fields"].tolist()
    return shapely.from_wkb(geoms), fields[names.index("class_id")]


def to_pixels(geoms: np.ndarray) -> np.ndarray:
    """Layer geometries in pixel coordinates (column, row), exactly (10 m pixels)."""
    return shapely.transform(geoms, lambda xy: np.round(
        (xy - [500_000.0, 4_600_000.0]) / [10.0, -10.0]) + 0.0)  # no -0.0


def normalized(geoms: np.ndarray) -> list[bytes]:
    return sorted(shapely.to_wkb(shapely.normalize(geoms)))


def nodes(data: np.ndarray) -> np.ndarray:
    """Pixel corners ``(k, 2)`` (x, y) where at least three values meet, the outside counting
    as nodata."""
    pad = np.pad(data.astype(np.int16), 1, constant_values=255)
    tl, tr, bl, br = pad[:-1, :-1], pad[:-1, 1:], pad[1:, :-1], pad[1:, 1:]
    distinct = 1 + (tr != tl) + ((bl != tl) & (bl != tr)) + ((br != tl) & (br != tr) & (br != bl))
    y, x = np.nonzero(distinct >= 3)
    return np.stack([x, y], 1)


def missing_nodes(pixel_geoms: np.ndarray, data: np.ndarray) -> int:
    """How many (polygon, node) pairs have the node on the polygon's boundary but not among
    its vertices."""
    pts = shapely.points(nodes(data))
    tree = shapely.STRtree(shapely.boundary(pixel_geoms))
    node_i, geom_i = tree.query(pts, predicate="intersects")
    missing = 0
    for g in np.unique(geom_i):
        verts = {tuple(v) for v in shapely.get_coordinates(pixel_geoms[g]).astype(int).tolist()}
        missing += sum(tuple(p) not in verts for p in shapely.get_coordinates(
            pts[node_i[geom_i == g]]).astype(int).tolist())
    return missing


def regions(data: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    labels = np.zeros(data.shape, np.int32)
    n = 0
    for c in np.unique(data[data != 255]):
        lab, k = ndimage.label(data == c, STRUCT[connectivity])
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    return labels, n


def gdal_polygons(data: np.ndarray, connectivity: int) -> np.ndarray:
    """GDAL's polygon of every region (pixel coordinates), made valid as geoseg did before."""
    labels, n = regions(data, connectivity)
    values, polys = polygons_from_shapes(rasterio.features.shapes(
        labels, mask=labels > 0, connectivity=connectivity))
    values = values.astype(np.int64)
    out = np.array([shapely.union_all(polys[values == k]) for k in range(1, n + 1)], object)
    bad = ~shapely.is_valid(out)
    out[bad] = shapely.make_valid(out[bad])
    return out


def multi(geoms: np.ndarray) -> np.ndarray:
    parts, idx = shapely.get_parts(geoms, return_index=True)
    return shapely.multipolygons(parts, indices=idx, out_size=len(geoms))


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """``(mask, connectivity, block size) → (pixel geometries, classes)``, vectorized once."""
    tmp = tmp_path_factory.mktemp("coverage")
    out = {}
    for name, make in MASKS.items():
        path = write_mask(tmp / f"{name}.tif", make())
        for conn in (4, 8):
            for bs in BLOCKS:
                r = vectorize_mask(path, tmp / f"{name}_{conn}_{bs}.gpkg", block_size=bs,
                                   connectivity=conn)
                geoms, cls = read_layer(r.path)
                out[name, conn, bs] = (to_pixels(geoms), cls)
    return out


@pytest.mark.parametrize("bs", BLOCKS)
@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("name", list(MASKS))
def test_layer_is_a_valid_coverage(layers, name, conn, bs):
    geoms, cls = layers[name, conn, bs]
    data = MASKS[name]()
    assert shapely.is_valid(geoms).all()
    assert shapely.coverage_is_valid(geoms)
    assert shapely.is_empty(shapely.coverage_invalid_edges(geoms)).all()
    assert missing_nodes(geoms, data) == 0
    back = rasterio.features.rasterize(zip(geoms, cls.tolist(), strict=True),
                                       out_shape=data.shape, fill=255, dtype="uint8")
    assert np.array_equal(back, data)  # still exactly the mask


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("name", list(MASKS))
def test_same_vertices_at_every_block_size(layers, name, conn):
    """Nodes on seams are found by the join, nodes inside blocks by the tracer: the same."""
    whole = normalized(layers[name, conn, 1024][0])
    for bs in BLOCKS[:-1]:
        assert normalized(layers[name, conn, bs][0]) == whole


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("name", list(MASKS))
def test_gdal_polygons_but_for_the_added_nodes(layers, name, conn):
    """Without its collinear vertices (the nodes) every polygon is GDAL's, vertex for vertex;
    GDAL's layer itself is no valid coverage on these masks."""
    data = MASKS[name]()
    geoms = layers[name, conn, 37][0]
    gdal = gdal_polygons(data, conn)
    assert not shapely.coverage_is_valid(gdal)  # T-junctions: the test has teeth
    assert missing_nodes(gdal, data) > 0
    assert normalized(multi(shapely.simplify(geoms, 0.0))) == \
        normalized(multi(shapely.simplify(gdal, 0.0)))
    assert shapely.get_num_coordinates(geoms).sum() > shapely.get_num_coordinates(gdal).sum()


@pytest.mark.parametrize("conn", [4, 8])
def test_simplified_layer_is_a_valid_coverage(tmp_path, conn):
    path = write_mask(tmp_path / "m.tif", coherent())
    plain = read_layer(vectorize_mask(path, tmp_path / "p.gpkg", block_size=37,
                                      connectivity=conn).path)[0]
    for tol in (15.0, 40.0):
        r = vectorize_mask(path, tmp_path / f"s{tol}.gpkg", block_size=37, connectivity=conn,
                           simplify_m=tol)
        geoms, _ = read_layer(r.path)
        assert len(geoms) == len(plain)
        assert shapely.is_valid(geoms).all() and not shapely.is_empty(geoms).any()
        assert shapely.coverage_is_valid(geoms)
        area = shapely.area(geoms).sum()
        assert shapely.union_all(geoms).area == pytest.approx(area, rel=1e-9)  # no overlaps
        assert area == pytest.approx(shapely.area(plain).sum(), rel=0.02)
        assert shapely.get_num_coordinates(geoms).sum() < shapely.get_num_coordinates(
            plain).sum()


@pytest.mark.parametrize("conn", [4, 8])
def test_sieved_layer_is_a_valid_coverage(tmp_path, conn):
    path = write_mask(tmp_path / "m.tif", coherent(seed=4))
    out = {bs: read_layer(vectorize_mask(path, tmp_path / f"{bs}.gpkg", block_size=bs,
                                         connectivity=conn, min_area_m2=600.0).path)[0]
           for bs in (16, 1024)}
    assert shapely.coverage_is_valid(out[16])
    assert normalized(out[16]) == normalized(out[1024])


# Three regions meeting at a T: class 1 above, classes 2 | 3 below, the stem at column `x0`,
# the bar at row `y0`. Block size 16 puts the junction inside a block, on a horizontal seam
# (class 1 running along it), on a vertical seam (the stem on it: class 1 running across it)
# and at a block corner.
@pytest.mark.parametrize(("y0", "x0"), [(8, 8), (16, 24), (24, 16), (16, 16)])
@pytest.mark.parametrize("transpose", [False, True])
def test_t_junction_is_a_vertex_inside_blocks_and_on_seams(tmp_path, y0, x0, transpose):
    data = np.ones((40, 40), np.uint8)
    data[y0:, :x0] = 2
    data[y0:, x0:] = 3
    data[35:, 30:] = 255  # and one with nodata, on the outer border
    if transpose:
        data = np.ascontiguousarray(data.T)
    path = write_mask(tmp_path / "t.tif", data)
    for bs in (16, 1024):
        geoms, cls = read_layer(vectorize_mask(path, tmp_path / f"{bs}.gpkg", block_size=bs,
                                               overwrite=True).path)
        geoms = to_pixels(geoms)
        one = geoms[cls == 1][0]
        node = (y0, x0) if transpose else (x0, y0)
        assert node in {tuple(v) for v in shapely.get_coordinates(one).astype(int).tolist()}
        assert missing_nodes(geoms, data) == 0 and shapely.coverage_is_valid(geoms)


@pytest.mark.parametrize("seed", range(12))
def test_trace_is_gdal_with_nodes(seed):
    """The ring tracer on its own: GDAL's polygons (made valid) plus the nodes, valid, exact
    areas, a valid coverage, on random small masks of any shape."""
    rng = np.random.default_rng(seed)
    conn = (4, 8)[seed % 2]
    shape = tuple(int(s) for s in rng.integers(1, 40, 2))
    if seed % 3 == 0:
        data = rng.integers(0, 4, shape).astype(np.uint8)
    else:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(0.5, 3))
        data = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75])).astype(np.uint8)
    data[rng.random(shape) < 0.1] = 255
    labels, n = regions(data, conn)
    geoms = trace(labels, n, (3, 5), connectivity=conn)
    assert geoms[0] is None and len(geoms) == n + 1
    geoms = shapely.transform(geoms[1:], lambda xy: xy - [3, 5])
    gdal = gdal_polygons(data, conn)
    assert shapely.is_valid(geoms).all()
    assert shapely.equals(geoms, gdal).all()
    assert shapely.equals_exact(shapely.normalize(shapely.simplify(geoms, 0.0)),
                                shapely.normalize(shapely.simplify(gdal, 0.0)), 0).all()
    assert np.array_equal(shapely.area(geoms), np.bincount(labels.ravel())[1:])
    assert shapely.coverage_is_valid(geoms) and missing_nodes(geoms, data) == 0


def test_trace_of_nothing():
    assert trace(np.zeros((3, 4), np.int32), 0).tolist() == [None]


@pytest.mark.parametrize("conn", [4, 8])
def test_regions_dissolved_elsewhere_keep_their_seam_nodes(tmp_path, monkeypatch, conn):
    """Regions handed to ``remote`` (on a cluster: a worker, with every piece kept where it was
    made) take their seam nodes along: the same polygons as dissolving here."""
    from geoseg.vectorize import join as join_module
    from geoseg.vectorize.blocks import BlockTask, block_windows, polygonize_task
    from geoseg.vectorize.join import BorderJoin, dissolve_kept, split_border
    from geoseg.vectorize.maskinfo import read_mask_info

    data = noise(seed=3)
    info = read_mask_info(write_mask(tmp_path / "n.tif", data))
    wins, ncols = block_windows(*data.shape, 16)
    results = [polygonize_task(BlockTask(i, w, info, conn)) for i, w in enumerate(wins)]

    def remote(regions):
        for i, (local, refs) in enumerate(regions):
            yield i, *dissolve_kept(local, [k for k, _ in refs], [j for _, j in refs], 16, info,
                                    conn)

    def run(far):
        join = BorderJoin(len(wins) // ncols, ncols, conn, info, 16, remote if far else None,
                          fetch=lambda k: k)
        geoms = []
        for r in results:
            r, kept = split_border(r, 0) if far else (r, None)
            join.add(r["index"], r["n"], r["cls"], r["edges"], r["border"], kept or None)
            geoms += list(join.ready()[1])
        geoms += list(join.ready(final=True)[1])
        return join, to_pixels(shapely.from_wkb(np.array(geoms, dtype=object)))

    monkeypatch.setattr(join_module, "REMOTE_DISSOLVE_BYTES", 0)
    here, local = run(False)
    there, far = run(True)
    assert there.remote_regions > 20 and here.remote_regions == 0
    if conn == 8:  # regions joined at a corner only: GEOS union, then nodes put back
        assert here.fallbacks > 0 and there.fallbacks > 0
    assert normalized(far) == normalized(local)
    assert shapely.coverage_is_valid(local) and missing_nodes(local, data) == 0
