"""Quick-look parts (geoseg.thumb): the bin rule, and sums that do not depend on the blocks."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.thumb import (
    QuicklookCanvas,
    QuicklookSpec,
    picture_bins,
    quicklook_part,
    quicklook_shape,
)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 64, 100, 511, 512, 513, 1000, 2048, 4097])
def test_every_picture_pixel_gets_source_pixels_in_order(length: int) -> None:
    """For every picture size up to the source's: each picture index receives ≥ 1 source
    index, indices never decrease, and they are the float rule's ⌊(i + ½)·q / L⌋."""
    for bins in sorted({min(q, length) for q in (1, 2, 3, length // 7 or 1, length // 4 or 1,
                                                 length // 2 or 1, length - 1 or 1, length)}):
        got = picture_bins(0, length, length, bins)
        assert np.array_equal(np.bincount(got, minlength=bins) > 0, np.ones(bins, bool)), bins
        assert got.min() == 0 and got.max() == bins - 1 and np.all(np.diff(got) >= 0)
        expected = np.floor((np.arange(length) + 0.5) * bins / length).astype(np.int64)
        assert np.array_equal(got, expected), (length, bins)
        # a sub-range is the same slice of the whole axis
        assert np.array_equal(picture_bins(length // 3, length, length, bins),
                              got[length // 3:])


def test_bins_refuse_a_picture_larger_than_the_scene_or_a_range_outside() -> None:
    with pytest.raises(ValueError, match="picture"):
        picture_bins(0, 10, 10, 11)
    with pytest.raises(ValueError, match="outside"):
        picture_bins(5, 11, 10, 4)


def test_quicklook_shape_never_exceeds_the_scene() -> None:
    for h, w, size in ((2048, 2048, 512), (100, 3000, 512), (3000, 7, 64), (30, 40, 512)):
        qh, qw = quicklook_shape(h, w, size)
        assert 1 <= qh <= h and 1 <= qw <= w and max(qh, qw) <= max(size, 1)


def _scene(h: int, w: int, seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60000, size=(3, h, w)).astype(dtype)
    valid = rng.random((h, w)) > 0.2
    valid[: h // 3, : w // 4] = False  # a corner without data
    return pixels, valid


def _canvas(pixels: np.ndarray, valid: np.ndarray, picture: tuple[int, int],
            rows: list[int], cols: list[int], order: np.random.Generator | None = None
            ) -> QuicklookCanvas:
    """The canvas summed from the blocks cut at ``rows`` × ``cols`` (edges), added in the
    order ``order`` shuffles them into."""
    h, w = valid.shape
    r_edges, c_edges = [0, *rows, h], [0, *cols, w]
    cores = [(r0, r1, c0, c1) for r0, r1 in zip(r_edges, r_edges[1:], strict=False)
             for c0, c1 in zip(c_edges, c_edges[1:], strict=False)]
    if order is not None:
        order.shuffle(cores)
    canvas = QuicklookCanvas.empty(picture)
    for r0, r1, c0, c1 in cores:
        canvas.add(quicklook_part(pixels[:, r0:r1, c0:c1], valid[r0:r1, c0:c1], (r0, c0),
                                  (h, w), picture))
    return canvas


def test_parts_of_any_blocks_sum_to_the_same_canvas_as_one_block() -> None:
    """Integer samples: blocks of any size, added in any order, give the one-block canvas bit
    for bit; each picture pixel is the mean of the valid source pixels its bins hold."""
    pixels, valid = _scene(301, 457, seed=1, dtype="uint16")
    picture = quicklook_shape(301, 457, 64)
    whole = _canvas(pixels, valid, picture, [], [])
    rng = np.random.default_rng(2)
    for rows, cols in (([100, 200], [128, 256, 384]), ([1, 2, 300], [456]),
                       (list(range(37, 301, 37)), list(range(50, 457, 50)))):
        parts = _canvas(pixels, valid, picture, rows, cols, rng)
        assert np.array_equal(parts.sums, whole.sums) and np.array_equal(parts.counts,
                                                                           whole.counts)
    # against the rule applied pixel by pixel
    rb, cb = picture_bins(0, 301, 301, picture[0]), picture_bins(0, 457, 457, picture[1])
    flat = (rb[:, None] * picture[1] + cb[None, :])[valid]
    counts = np.bincount(flat, minlength=picture[0] * picture[1]).reshape(picture)
    assert np.array_equal(whole.counts, counts)
    for k in range(3):
        sums = np.bincount(flat, weights=pixels[k][valid].astype(np.float64),
                           minlength=counts.size).reshape(picture)
        assert np.array_equal(whole.sums[k], sums)
    planes = whole.planes()
    assert planes.shape == (3, *picture) and planes.dtype == np.float64
    assert np.array_equal(np.isnan(planes[0]), counts == 0) and (counts == 0).any()


def test_invalid_and_non_finite_samples_are_left_out() -> None:
    pixels = np.array([[[1.0, np.nan], [5.0, 7.0]]] * 3)
    valid = np.array([[True, True], [False, True]])
    part = quicklook_part(pixels, valid, (0, 0), (2, 2), (1, 1))
    assert part.counts.tolist() == [[2]] and part.sums[:, 0, 0].tolist() == [8.0] * 3
    canvas = QuicklookCanvas.empty((1, 1))
    canvas.add(part)
    assert canvas.planes()[:, 0, 0].tolist() == [4.0] * 3


def test_parts_refuse_mismatched_shapes_and_specs_bad_bands() -> None:
    with pytest.raises(ValueError, match=r"\(3, h, w\)"):
        quicklook_part(np.zeros((4, 2, 2)), np.ones((2, 2), bool), (0, 0), (2, 2), (1, 1))
    with pytest.raises(ValueError, match="three band positions"):
        QuicklookSpec((4, 4), (0, 1))  # type: ignore[arg-type]


def test_all_valid_blocks_and_undecimated_pictures_take_the_short_paths_to_the_same_sums() -> None:
    """A block without nodata (counts from the bin sizes) and a picture as large as the scene
    (nothing to add up: the means are the samples)."""
    pixels, _ = _scene(97, 131, seed=5, dtype="uint16")
    every = np.ones((97, 131), bool)
    for picture in ((97, 131), (20, 27), (97, 5), (3, 131)):
        part = quicklook_part(pixels, every, (0, 0), (97, 131), picture)
        rb, cb = picture_bins(0, 97, 97, picture[0]), picture_bins(0, 131, 131, picture[1])
        flat = (rb[:, None] * picture[1] + cb[None, :]).ravel()
        counts = np.bincount(flat, minlength=picture[0] * picture[1]).reshape(picture)
        assert part.counts.dtype == np.uint32 and np.array_equal(part.counts, counts), picture
        for k in range(3):
            sums = np.bincount(flat, weights=pixels[k].ravel().astype(np.float64),
                               minlength=counts.size).reshape(picture)
            assert np.array_equal(part.sums[k], sums), picture
    canvas = QuicklookCanvas.empty((97, 131))
    canvas.add(quicklook_part(pixels, every, (0, 0), (97, 131), (97, 131)))
    assert np.array_equal(canvas.planes(), pixels.astype(np.float64))
