"""VECTORIZE stage: real GeoTIFF masks → GeoPackage layers, checked against whole-mask truth."""

from __future__ import annotations

import itertools
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

from geoseg.errors import ConfigError, OutputExistsError, SceneError
from geoseg.pipeline import CLASSES_TAG
from geoseg.vectorize import vectorize_mask

#: The mask the tests vectorize: the invariants hold at any size; 520x700 px still puts the
#: nodata hole inside and gives 5x6 blocks of 128 px, 2x3 of 300 and one of 1024.
H, W = 520, 700
CLASSES = [
    {"id": 0, "name": "water", "color": [31, 120, 180]},
    {"id": 1, "name": "forest", "color": [51, 160, 44]},
    {"id": 2, "name": "crop", "color": [255, 215, 0]},
    {"id": 3, "name": "urban", "color": [227, 26, 28]},
    {"id": 4, "name": "bare", "color": [166, 118, 29]},
]
STRUCT = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), bool)}


def coherent_mask(seed: int = 0, noise: float = 0.002,
                  shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Smoothed random field cut into 5 classes, a little salt noise, a nodata corner + hole."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 9)
    data = np.digitize(field, np.quantile(field, [0.2, 0.4, 0.6, 0.8])).astype(np.uint8)
    salt = rng.random(shape) < noise
    data[salt] = rng.integers(0, 5, salt.sum())
    data[:120, :90] = 255
    rr, cc = np.ogrid[:shape[0], :shape[1]]
    data[(rr - 400) ** 2 + (cc - 600) ** 2 < 40**2] = 255
    return data


def write_mask(path: Path, data: np.ndarray, crs: str = "EPSG:32633",
               transform=None, tag: bool = True, confidence: np.ndarray | None = None) -> Path:
    transform = transform or from_origin(500_000.0, 4_600_000.0, 10.0, 10.0)
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                   dtype="uint8", crs=crs,
                   transform=transform, nodata=255, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.write_colormap(1, {c["id"]: (*c["color"], 255) for c in CLASSES})
        if tag:
            dst.update_tags(**{CLASSES_TAG: json.dumps(CLASSES)})
    if confidence is not None:
        conf_path = path.with_name(path.stem + ".confidence.tif")
        with rasterio.open(conf_path, "w", **profile) as dst:
            dst.write(confidence, 1)
    return path


def read_layer(path: Path):
    _, _, geoms, fields = pyogrio.raw.read(path, layer="landcover")
    meta = pyogrio.read_info(path, layer="landcover")
    cols = dict(zip(meta["fields"], fields, strict=True))
    return shapely.from_wkb(geoms), cols


def rasterize(geoms, cls, transform, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    return rasterio.features.rasterize(
        zip(geoms, cls.tolist(), strict=True), out_shape=shape, transform=transform,
        fill=255, dtype="uint8")


def n_components(data: np.ndarray, connectivity: int) -> dict[int, int]:
    return {c: ndimage.label(data == c, STRUCT[connectivity])[1] for c in range(5)}


@pytest.fixture(scope="module")
def mask_path(tmp_path_factory) -> Path:
    return write_mask(tmp_path_factory.mktemp("v") / "mask.tif", coherent_mask())


@pytest.fixture(scope="module")
def layers(mask_path, tmp_path_factory):
    """``(connectivity, block_size) → (geoms, columns, result)``, each vectorized once."""
    out = tmp_path_factory.mktemp("layers")
    cache = {}
    for conn in (4, 8):
        for bs in (128, 300, 1024):
            r = vectorize_mask(mask_path, out / f"{conn}_{bs}.gpkg", connectivity=conn,
                               block_size=bs)
            cache[conn, bs] = (*read_layer(r.path), r)
    return cache


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("bs", [128, 300, 1024])
def test_rasterizing_the_layer_gives_back_the_mask(layers, conn, bs):
    geoms, cols, _ = layers[conn, bs]
    data = coherent_mask()
    back = rasterize(geoms, cols["class_id"], from_origin(500_000.0, 4_600_000.0, 10.0, 10.0))
    assert np.array_equal(back, data)


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("bs", [128, 300, 1024])
def test_one_polygon_per_connected_region(layers, conn, bs):
    geoms, cols, result = layers[conn, bs]
    expected = n_components(coherent_mask(), conn)
    got = {c: int((cols["class_id"] == c).sum()) for c in range(5)}
    assert got == expected
    assert result.class_features == {c: n for c, n in expected.items() if n}
    assert result.n_features == len(geoms) == sum(expected.values())
    assert result.blocks == (1 if bs == 1024 else -(-H // bs) * -(-W // bs))


@pytest.mark.parametrize("conn", [4, 8])
def test_layers_identical_across_block_sizes(layers, conn):
    def keyed(geoms, cols):
        bounds = shapely.bounds(geoms)
        return {(int(c), *map(float, b)): g for c, b, g in zip(cols["class_id"], bounds, geoms,
                                                               strict=True)}

    ref = keyed(*layers[conn, 1024][:2])
    assert len(ref) == len(layers[conn, 1024][0])  # keys are unique
    for bs in (128, 300):
        other = keyed(*layers[conn, bs][:2])
        assert other.keys() == ref.keys()
        assert all(shapely.equals(other[k], ref[k]) for k in ref)


@pytest.mark.parametrize("conn", [4, 8])
def test_valid_geometries_no_gaps_no_overlaps_and_areas(layers, conn):
    geoms, cols, result = layers[conn, 128]
    data = coherent_mask()
    assert shapely.is_valid(geoms).all()
    assert set(shapely.get_type_id(geoms)) <= {6}  # MultiPolygon layer
    valid_area = (data != 255).sum() * 100.0
    assert shapely.area(geoms).sum() == pytest.approx(valid_area, abs=1e-3)
    assert shapely.union_all(geoms).area == pytest.approx(valid_area, abs=1e-3)  # no overlap
    np.testing.assert_allclose(cols["area_m2"], shapely.area(geoms), atol=1e-6)
    for c in range(5):
        assert result.class_area_m2[c] == pytest.approx((data == c).sum() * 100.0)
    assert np.all(cols["class_name"] == np.array([CLASSES[c]["name"] for c in cols["class_id"]]))


@pytest.mark.parametrize("conn", [4, 8])
def test_sieve_is_block_size_independent_and_matches_gdal(mask_path, tmp_path, conn):
    px = 20
    out = {bs: vectorize_mask(mask_path, tmp_path / f"s{bs}.gpkg", min_area_m2=px * 100.0,
                              connectivity=conn, block_size=bs) for bs in (128, 1024)}
    grids = {}
    for bs, r in out.items():
        geoms, cols = read_layer(r.path)
        assert shapely.is_valid(geoms).all()
        grids[bs] = rasterize(geoms, cols["class_id"], from_origin(500_000.0, 4_600_000.0, 10, 10))
    assert np.array_equal(grids[128], grids[1024])
    data, sieved = coherent_mask(), grids[128]
    assert np.array_equal(sieved == 255, data == 255)  # nodata never changes or absorbs
    assert out[128].n_features < 0.8 * sum(n_components(data, conn).values())
    for c in range(5):  # no region below the threshold is left unless it touches only nodata
        lab, n = ndimage.label(sieved == c, STRUCT[conn])
        sizes = np.bincount(lab.ravel())[1:]
        for k in np.flatnonzero(sizes < px) + 1:
            ring = ndimage.binary_dilation(lab == k, STRUCT[conn]) & (lab != k)
            assert np.all(sieved[ring] == 255)
    gdal = rasterio.features.sieve(data, px, mask=data != 255, connectivity=conn)
    gdal = np.where(data == 255, 255, gdal)
    assert (gdal == sieved).mean() > 0.9999  # equal up to ties between equally large neighbours
    assert (sieved != data).sum() > 300  # the sieve did something


def test_simplify_keeps_a_valid_coverage(mask_path, tmp_path):
    r = vectorize_mask(mask_path, tmp_path / "simple.gpkg", simplify_m=15.0, block_size=300)
    geoms, cols = read_layer(r.path)
    assert len(geoms) == n_components_total(4)
    assert shapely.is_valid(geoms).all() and not shapely.is_empty(geoms).any()
    assert shapely.coverage_is_valid(geoms)
    assert shapely.area(geoms).sum() == pytest.approx(shapely.union_all(geoms).area, rel=1e-9)
    assert shapely.get_num_coordinates(geoms).sum() < 0.8 * sum(
        shapely.get_num_coordinates(read_layer_sizes(mask_path, tmp_path)))


def n_components_total(conn: int) -> int:
    return sum(n_components(coherent_mask(), conn).values())


def read_layer_sizes(mask_path, tmp_path):
    r = vectorize_mask(mask_path, tmp_path / "plain.gpkg", block_size=300)
    return read_layer(r.path)[0]


def test_geographic_crs_gives_geodesic_areas(tmp_path):
    from pyproj import Geod

    data = coherent_mask(seed=3)
    transform = from_origin(10.0, 60.0, 1e-4, 1e-4)
    path = write_mask(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=transform)
    r = vectorize_mask(path, tmp_path / "geo.gpkg", block_size=256)
    geoms, cols = read_layer(r.path)
    geod = Geod(ellps="WGS84")
    big = np.argsort(cols["area_m2"])[-20:]
    for i in big:
        ref = abs(geod.geometry_area_perimeter(geoms[i])[0])
        assert cols["area_m2"][i] == pytest.approx(ref, rel=2e-4)
    # a 1e-4° pixel at 60°N is about 11.1 m × 5.6 m
    assert cols["area_m2"].sum() / (data != 255).sum() == pytest.approx(62.0, rel=0.02)
    assert pyogrio.read_info(r.path, layer="landcover")["crs"] == "EPSG:4326"


def test_mean_confidence_and_colour_table_fallback(tmp_path):
    data = coherent_mask(seed=5)
    conf = np.where(data == 255, 255, 50 + 10 * data.astype(np.int64)).astype(np.uint8)
    conf[::7, ::5] = 255  # confidence nodata inside classes does not count
    path = write_mask(tmp_path / "m.tif", data, tag=False, confidence=conf)
    r = vectorize_mask(path, tmp_path / "m.gpkg", block_size=200)
    _, cols = read_layer(r.path)
    expected = 50.0 + 10.0 * cols["class_id"]
    ok = ~np.isnan(cols["mean_confidence"])
    assert ok.mean() > 0.9
    np.testing.assert_allclose(cols["mean_confidence"][ok], expected[ok])
    assert set(cols["class_name"]) == {f"class_{c}" for c in range(5)}


def test_errors_and_atomic_output(mask_path, tmp_path):
    out = tmp_path / "x.gpkg"
    with pytest.raises(ConfigError, match="connectivity"):
        vectorize_mask(mask_path, out, connectivity=6)
    vectorize_mask(mask_path, out, block_size=1024)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        vectorize_mask(mask_path, out)
    vectorize_mask(mask_path, out, block_size=1024, overwrite=True)
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="uint8") as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(SceneError, match="no CRS"):
        vectorize_mask(nocrs, tmp_path / "y.gpkg")
    with pytest.raises(SceneError, match="cannot open"):
        vectorize_mask(tmp_path / "missing.tif", tmp_path / "y.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nocrs.tif", "x.gpkg"]


def test_gpkg_is_version_1_2_with_spatial_index_and_qgis_style(layers):
    import sqlite3

    path = layers[4, 300][2].path
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        assert con.execute("PRAGMA user_version").fetchone()[0] == 10200
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = "
                           "'rtree_landcover_geom'").fetchone()[0] == 1
        name, col, default, qml = con.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles"
        ).fetchone()
    finally:
        con.close()
    assert (name, col, default) == ("landcover", "geom", 1)
    assert 'type="categorizedSymbol"' in qml and all(c["name"] in qml for c in CLASSES)


def normalized(geoms) -> list[bytes]:
    """Geometries (shapely or WKB) as sorted WKB of their normal form."""
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) and isinstance(geoms[0], bytes):
        geoms = shapely.from_wkb(geoms)
    return sorted(shapely.to_wkb(shapely.normalize(geoms)))


@pytest.mark.slow
def test_distributed_local_cluster_gives_the_same_layer(tmp_path, monkeypatch):
    """Blocks on two worker processes; every border piece kept on its worker (the threshold
    lowered to 0 bytes), so every region cut by a block border is dissolved by a worker: the
    same polygons."""
    from distributed import Client, LocalCluster, get_task_stream

    from geoseg.vectorize import join

    data = coherent_mask(seed=7, shape=(777, 1001))  # 4x4 blocks of 256 px
    path = write_mask(tmp_path / "d.tif", data)
    local = vectorize_mask(path, tmp_path / "local.gpkg", block_size=256, min_area_m2=1000)
    monkeypatch.setattr(join, "REMOTE_DISSOLVE_BYTES", 2**40)  # never for their size alone
    monkeypatch.setattr(join, "KEEP_PIECE_BYTES", 0)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client, \
            get_task_stream(client) as tasks:
        dist = vectorize_mask(path, tmp_path / "dist.gpkg", block_size=256, min_area_m2=1000,
                              client=client)
    assert dist.n_features == local.n_features and dist.blocks == 16
    assert sum("_dissolve_task" in t["key"] for t in tasks.data) > 10
    assert sum("split_border" in t["key"] for t in tasks.data) == 16
    (g1, c1), (g2, c2) = read_layer(local.path), read_layer(dist.path)
    assert normalized(g1) == normalized(g2)
    t = from_origin(500_000.0, 4_600_000.0, 10.0, 10.0)
    assert np.array_equal(rasterize(g1, c1["class_id"], t, data.shape),
                          rasterize(g2, c2["class_id"], t, data.shape))
    assert dist.class_area_m2 == pytest.approx(local.class_area_m2)


@pytest.fixture(scope="module")
def corner_mask_path(tmp_path_factory) -> Path:
    """The left 401 columns of a 777x1001 mask (its nodata corner; 8 rows of 100-px blocks, the
    last column of them 1 px wide): the join's rules hold at any width, and it costs less."""
    return write_mask(tmp_path_factory.mktemp("corner") / "corner.tif",
                      coherent_mask(shape=(777, 1001))[:, :401])


def _label_each_class(data: np.ndarray, nodata: int, conn: int) -> tuple[np.ndarray, list[int]]:
    """The reference: ``scipy.ndimage.label`` once per class, numbered class after class."""
    labels, classes, n = np.zeros(data.shape, np.int32), [nodata], 0
    for c in sorted(set(np.unique(data).tolist()) - {nodata}):
        lab, k = ndimage.label(data == c, STRUCT[conn])
        labels[lab > 0] = lab[lab > 0] + n
        classes += [c] * k
        n += k
    return labels, classes


@pytest.mark.parametrize("conn", [4, 8])
def test_regions_labelled_in_one_pass_match_scipy_per_class(conn) -> None:
    """:func:`label_regions` numbers the regions as ``ndimage.label`` run on each class in
    turn would: on a coherent mask, salt-and-pepper noise (a region per pixel, diagonal
    touches everywhere), nodata other than 255, one row, one column, one pixel, all nodata."""
    from geoseg.vectorize.blocks import label_regions

    rng = np.random.default_rng(3)
    noisy = rng.integers(0, 4, (97, 131)).astype(np.uint8)
    noisy[rng.random(noisy.shape) < 0.1] = 255
    cases = [(coherent_mask(seed=5), 255), (noisy, 255), (noisy, 2),
             (rng.integers(0, 3, (1, 50)).astype(np.uint8), 255),
             (rng.integers(0, 3, (50, 1)).astype(np.uint8), 0),
             (np.full((1, 1), 4, np.uint8), 255), (np.full((8, 9), 255, np.uint8), 255)]
    for data, nodata in cases:
        labels, classes = label_regions(data, nodata, conn)
        want, want_classes = _label_each_class(data, nodata, conn)
        assert labels.dtype == np.int32 and classes.dtype == np.uint8
        np.testing.assert_array_equal(labels, want)
        assert classes.tolist() == want_classes


@pytest.mark.parametrize("conn", [4, 8])
def test_blocks_finishing_in_any_order_give_the_same_regions(corner_mask_path, conn,
                                                             monkeypatch):
    """The client joins border pieces as blocks arrive (a cluster returns them in any order)
    and lets go of each region as soon as no unfinished block can extend it; regions handed
    to ``remote`` (on a cluster: a worker) come back the same."""
    from geoseg.vectorize import join as join_module
    from geoseg.vectorize.blocks import BlockTask, block_windows, polygonize_task
    from geoseg.vectorize.join import BorderJoin, dissolve_kept, split_border
    from geoseg.vectorize.maskinfo import read_mask_info

    info = read_mask_info(corner_mask_path)
    wins, ncols = block_windows(info.height, info.width, 100)
    results = [polygonize_task(BlockTask(i, w, info, conn)) for i, w in enumerate(wins)]
    n_border = sum(len(r["border"][0]) for r in results)

    def joined(order):
        join, geoms, held = BorderJoin(len(wins) // ncols, ncols, conn, info, 100), [], []
        for i in order:
            r = results[i]
            join.add(r["index"], r["n"], r["cls"], r["edges"], r["border"])
            geoms += list(join.ready()[1])
            held.append(sum(len(h["gid"]) for h in join.held))
        geoms += list(join.ready(final=True)[1])
        if conn == 4:  # the array dissolve handled every region, GEOS none
            assert join.fallbacks == 0
        return normalized(geoms), held

    in_order, held = joined(range(len(wins)))
    assert max(held) < n_border / 3, (max(held), n_border)  # regions leave memory early
    for seed in (0, 1):
        shuffled, _ = joined(np.random.default_rng(seed).permutation(len(wins)))
        assert shuffled == in_order

    # handles of kept pieces are the dicts themselves here (on a cluster: Dask futures)
    def remote(regions):
        for n, (local, refs) in enumerate(regions):
            yield n, *dissolve_kept(local, [k for k, _ in refs], [i for _, i in refs], 100,
                                    info, conn)

    def lost(regions):  # one region comes back, then the cluster fails
        yield from itertools.islice(remote(regions), 1)
        raise ConnectionError("the worker went away")

    def with_remote(fn, keep_bytes):
        join = BorderJoin(len(wins) // ncols, ncols, conn, info, 100, fn, fetch=lambda k: k)
        geoms, kept = [], []
        for r in results:
            r, k = split_border(r, keep_bytes)
            join.add(r["index"], r["n"], r["cls"], r["edges"], r["border"], k)
            kept.append(len(k))
            geoms += list(join.ready()[1])
        geoms += list(join.ready(final=True)[1])
        assert not join.kept  # every handle let go once its pieces were dissolved
        return join, normalized(geoms), sum(kept)

    monkeypatch.setattr(join_module, "REMOTE_DISSOLVE_BYTES", 2000)
    for keep_bytes in (2**40, 500):  # no piece kept elsewhere, then some
        join, geoms, kept = with_remote(remote, keep_bytes)
        assert join.remote_regions > 5 and geoms == in_order and (kept > 5) == (keep_bytes == 500)
        n_remote = join.remote_regions
        join, geoms, _ = with_remote(lost, keep_bytes)  # what failed is dissolved here instead
        assert 0 < join.remote_regions < n_remote and geoms == in_order


def test_a_cluster_with_no_running_worker_fails_the_stage_instead_of_hanging(mask_path, tmp_path):
    """Vectorize tasks share the prediction's stall timeout (a paused worker once hung a run)."""
    from distributed import Client, LocalCluster

    from geoseg.errors import ClusterError
    from geoseg.tasks import TaskPolicy

    out = tmp_path / "never.gpkg"
    with LocalCluster(n_workers=0, dashboard_address=":0") as cluster, Client(cluster) as client:
        for area in (0.0, 5000.0):  # the polygonize pass, and the sieve's first pass
            with pytest.raises(ClusterError, match="no vectorize block finished in 1 s"):
                vectorize_mask(mask_path, out, client=client, min_area_m2=area,
                               policy=TaskPolicy(stall_timeout=1.0))
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
