"""Pixel-polygon array geometry (geoseg.vectorize.rings) against GEOS on real polygonized masks."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
from rasterio.transform import Affine
from scipy import ndimage

from geoseg.vectorize.rings import dissolve, pinched, polygons_from_shapes


def regions(data: np.ndarray, connectivity: int) -> np.ndarray:
    """Scene-wide region ids (int32, 0 = none) of a class mask, one per connected region."""
    structure = np.ones((3, 3)) if connectivity == 8 else None
    out = np.zeros(data.shape, np.int32)
    n = 0
    for c in np.unique(data):
        lab, k = ndimage.label(data == c, structure)
        out[lab > 0] = lab[lab > 0] + n
        n += k
    return out


def block_pieces(labels: np.ndarray, block: int, connectivity: int):
    """Polygons of every region inside every block (pixel coordinates), and their region id."""
    values, pieces = [], []
    for r in range(0, labels.shape[0], block):
        for c in range(0, labels.shape[1], block):
            win = labels[r : r + block, c : c + block]
            v, p = polygons_from_shapes(rasterio.features.shapes(
                win, mask=win > 0, transform=Affine.translation(c, r), connectivity=connectivity))
            values.append(v)
            pieces.append(p)
    return np.concatenate(values).astype(np.int64), np.concatenate(pieces)


def mask(seed: int, shape=(150, 170), classes: int = 4, sigma: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    cuts = np.quantile(field, np.linspace(0, 1, classes + 1)[1:-1])
    return np.digitize(field, cuts).astype(np.uint8)


@pytest.mark.parametrize("chunk", [7, 20_000])
def test_polygons_from_shapes_matches_shapely_shape(chunk: int) -> None:
    data = mask(1)
    shapes = list(rasterio.features.shapes(data, connectivity=4))
    values, polys = polygons_from_shapes(shapes, chunk)
    expected = [shapely.geometry.shape(g) for g, _ in shapes]
    assert np.array_equal(values, [v for _, v in shapes])
    assert shapely.equals_exact(polys, np.array(expected, dtype=object), 0).all()
    assert len(polygons_from_shapes([])[1]) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block", [16, 37, 64])
def test_dissolve_equals_the_geos_union_of_the_pieces(seed: int, block: int) -> None:
    labels = regions(mask(seed), 4)
    values, pieces = block_pieces(labels, block, 4)
    ids, group = np.unique(values, return_inverse=True)
    merged, fallback = dissolve(pieces, group, len(ids), block)
    assert not fallback.any()
    assert shapely.is_valid(merged).all()
    for k in range(len(ids)):
        union = shapely.simplify(shapely.union_all(pieces[group == k]), 0.0)
        assert shapely.equals_exact(shapely.normalize(merged[k]), shapely.normalize(union), 0)


def test_dissolve_matches_polygonizing_the_whole_mask() -> None:
    """The joined pieces are vertex for vertex the polygons of the uncut mask."""
    labels = regions(mask(5, classes=3, sigma=2.0), 4)
    values, pieces = block_pieces(labels, 32, 4)
    ids, group = np.unique(values, return_inverse=True)
    merged, _ = dissolve(pieces, group, len(ids), 32)
    whole_v, whole = polygons_from_shapes(rasterio.features.shapes(labels, connectivity=4))
    whole = whole[np.argsort(whole_v)]
    assert len(whole) == len(merged)
    assert shapely.equals_exact(shapely.normalize(merged), shapely.normalize(whole), 0).all()


def test_hole_touching_the_shell_on_a_seam_stays_a_hole() -> None:
    # a ring of class 1 around a hole of class 0 whose corner touches the outside diagonally,
    # exactly on the seam at row/column 4
    data = np.ones((8, 8), np.uint8)
    data[2:4, 2:4] = 0  # hole
    data[4:, 4:] = 2  # outside touching the hole's corner at (4, 4)
    labels = regions(data, 4)
    values, pieces = block_pieces(labels, 4, 4)
    ids, group = np.unique(values, return_inverse=True)
    merged, fallback = dissolve(pieces, group, len(ids), 4)
    assert not fallback.any()
    ring_class = merged[ids.tolist().index(labels[0, 0])]
    assert shapely.is_valid(ring_class)
    assert shapely.get_num_interior_rings(ring_class) == 1
    assert ring_class.area == (data == 1).sum()


def test_eight_connected_diagonal_join_is_handed_back() -> None:
    data = np.zeros((4, 4), np.uint8)
    data[:2, :2] = data[2:, 2:] = 1  # one 8-connected region, two squares meeting at (2, 2)
    labels = regions(data, 8)
    values, pieces = block_pieces(labels, 2, 8)
    ids, group = np.unique(values, return_inverse=True)
    merged, fallback = dissolve(pieces, group, len(ids), 2)
    k = ids.tolist().index(labels[0, 0])
    assert fallback[k] and merged[k] is None


def test_pinched() -> None:
    # a ring through (1, 1) twice (invalid) and a hole touching the shell (valid)
    bow = shapely.Polygon([(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (1, 2), (1, 1), (0, 1)])
    hole = shapely.Polygon([(0, 0), (3, 0), (3, 2), (2, 2), (2, 3), (0, 3)],
                           [[(1, 1), (2, 1), (2, 2), (1, 2)]])  # touch at the notch (2, 2)
    plain = shapely.box(0, 0, 2, 2)
    geoms = np.array([bow, hole, plain], dtype=object)
    assert shapely.is_valid(geoms).tolist() == [False, True, True]
    assert pinched(geoms, 4).tolist() == [True, False, False]
    assert pinched(geoms, 8).tolist() == [True, True, False]
