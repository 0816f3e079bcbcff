"""Small pictures for the run report: a scene in natural colours beside its class mask.

A run's scene picture is summed from the blocks the prediction tasks read anyway
(:mod:`geoseg.thumb`: each block task returns its share, the client adds them up) and drawn
with :func:`planes_rgba`; nothing is read twice. :func:`scene_quicklook` reads the scene again,
for callers that have no such parts. Its reads are decimated by GDAL (overviews or resolution
levels where the files have them), so a quick-look of a huge scene costs a few MB, never the
full scene. A file without them is decoded in columns of strips, each block about once, through
a block cache of two rows of a column's blocks (:mod:`geoseg.blockcache`): memory does not grow
with the scene.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from geoseg.batch.discover import band_key
from geoseg.blockcache import bounded_block_cache
from geoseg.maskfile import NODATA
from geoseg.scene import BandRef, Scene, open_on_grid
from geoseg.thumb import QuicklookCanvas, quicklook_shape

__all__ = ["canvas_quicklook", "mask_quicklook", "pick_rgb", "planes_rgba", "quicklook_shape",
           "scene_quicklook", "write_png"]

_RGB_NAMES = (("b4", "red", "r"), ("b3", "green", "g"), ("b2", "blue", "b"))


def pick_rgb(bands: Sequence[BandRef]) -> tuple[BandRef, ...]:
    """Red, green and blue bands by name (``B04/B03/B02``, ``red``…); else the first three."""
    by_key = {band_key(b.name): b for b in bands}
    rgb = []
    for names in _RGB_NAMES:
        hit = next((by_key[n] for n in names if n in by_key), None)
        if hit is None:
            break
        rgb.append(hit)
    if len(rgb) == 3:
        return tuple(rgb)
    return tuple(bands[:3]) if len(bands) >= 3 else (bands[0],) * 3


#: Source rows decoded per read of a quick-look (about one row of a file's tiles).
_STRIP_ROWS = 512

#: Source columns decoded per read: a wide scene is read in columns of this width, so that
#: the blocks held between strips (two rows of them) do not grow with the scene's width.
_CHUNK_COLS = 4096


def _strips(height: int, out_height: int, rows: int = _STRIP_ROWS
            ) -> Iterator[tuple[float, float, int, int]]:
    """``(row0, row1, out0, out1)``: source rows ``row0:row1`` (fractional, exactly the
    footprint of picture rows ``out0:out1``) in strips of about ``rows`` rows (also used
    for columns)."""
    scale = height / out_height
    step = max(1, int(rows // scale))
    for out0 in range(0, out_height, step):
        out1 = min(out_height, out0 + step)
        yield out0 * scale, out1 * scale, out0, out1


def _column_width(block_cols: int) -> int:
    """Source columns per column of reads: :data:`_CHUNK_COLS`, or a whole block where blocks
    are wider (a striped file's blocks are whole rows: it is read full width, each block once,
    not once per column)."""
    return max(_CHUNK_COLS, block_cols)


def _read_small(scene: Scene, bands: Sequence[BandRef], shape: tuple[int, int]) -> list[np.ndarray]:
    """The bands decimated to ``shape`` (average): float32 planes, NaN where there is no data.

    A file is read in columns of about :data:`_CHUNK_COLS` source columns, each strip by strip,
    all its bands at once, through a block cache that holds two rows of a column's blocks:
    each block is decoded about once (those straddling two columns twice), and memory does
    not grow with the scene's size (a 16384² scene: 3× faster than full-width strips, too).
    """
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    planes: dict[int, np.ndarray] = {}
    groups: dict[tuple[str, bool, float | None], list[int]] = {}
    for pos, band in enumerate(bands):
        groups.setdefault((band.path, band.warp, band.fill), []).append(pos)
    for (path, warp, fill), positions in groups.items():
        indexes = sorted({bands[p].index for p in positions})
        with open_on_grid(path, warp, fill, scene.crs_wkt, scene.transform, scene.shape) as ds:
            block_rows, block_cols = ds.block_shapes[0]
            rows, cols = max(block_rows, _STRIP_ROWS), _column_width(block_cols)
            # two rows of a column's blocks, and a margin for GDAL's bookkeeping
            cache = (2.5 * rows * min(ds.width, cols + block_cols) * ds.count
                     * np.dtype(ds.dtypes[0]).itemsize)
            nodata = ds.nodata if ds.nodata is not None else fill
            data = np.empty((len(indexes), *shape), np.float32)
            bad = np.empty((len(indexes), *shape), bool)
            with bounded_block_cache(cache / 2**20):
                for col0, col1, oc0, oc1 in _strips(ds.width, shape[1], cols):
                    for row0, row1, out0, out1 in _strips(ds.height, shape[0]):
                        # fractional windows: GDAL averages the same footprints as in one read
                        win = Window(col0, row0, col1 - col0, row1 - row0)  # type: ignore[call-arg]
                        out_shape = (len(indexes), out1 - out0, oc1 - oc0)
                        raw = ds.read(indexes, window=win, out_shape=out_shape,
                                      resampling=Resampling.average)
                        masks = ds.read_masks(indexes, window=win, out_shape=out_shape)
                        part = raw.astype(np.float32)
                        nope = (masks == 0) | ~np.isfinite(part)
                        if nodata is not None:
                            nope |= raw == nodata
                        data[:, out0:out1, oc0:oc1], bad[:, out0:out1, oc0:oc1] = part, nope
        data[bad] = np.nan
        for pos in positions:
            planes[pos] = data[indexes.index(bands[pos].index)]
    return [planes[pos] for pos in range(len(bands))]


def planes_rgba(planes: Sequence[np.ndarray]) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA from three ``(h, w)`` float planes (red, green, blue; NaN where
    there is no data): a 2–98 % stretch per band, transparent where any band has no data."""
    shape = planes[0].shape
    rgba = np.zeros((*shape, 4), np.uint8)
    valid = np.ones(shape, bool)
    for k, plane in enumerate(planes):
        ok = np.isfinite(plane)
        valid &= ok
        if ok.any():
            lo, hi = np.percentile(plane[ok], [2, 98])
            scaled = (plane - lo) / max(float(hi - lo), 1e-6) * 255
            rgba[..., k] = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    return rgba


def canvas_quicklook(canvas: QuicklookCanvas) -> np.ndarray:
    """``(qh, qw, 4)`` uint8 RGBA of a scene's quick-look summed from its blocks' parts: each
    picture pixel the mean of the valid source pixels that fall in it (:mod:`geoseg.thumb`),
    stretched as :func:`planes_rgba`."""
    return planes_rgba(list(canvas.planes()))


def scene_quicklook(scene: Scene, bands: Sequence[BandRef], size: int) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA of the scene read again, decimated by GDAL (average), at most
    ``size`` px a side; stretched as :func:`planes_rgba`. For callers without the parts of
    :func:`canvas_quicklook` (which costs no read)."""
    shape = quicklook_shape(scene.height, scene.width, size)
    return planes_rgba(_read_small(scene, pick_rgb(bands), shape))


def mask_quicklook(mask_path: Path, size: int) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA of a class mask in its colour table (nearest; nodata clear)."""
    import rasterio
    from rasterio.enums import Resampling

    with bounded_block_cache(), rasterio.open(mask_path) as src:
        shape = quicklook_shape(src.height, src.width, size)
        data = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        cmap = src.colormap(1)
        nodata = NODATA if src.nodata is None else int(src.nodata)
    lut = np.zeros((256, 4), np.uint8)
    for value, rgba in cmap.items():
        lut[value] = rgba
    lut[nodata] = 0
    return lut[data]


#: zlib level of the report's PNGs. The client encodes them, and with the scene's picture
#: summed from the blocks, encoding was most of its quick-look work: the Sentinel-2 sample's
#: 512² picture took 149 ms at zlib's default (6) for 655 kB, 53 ms at 1 for 705 kB (+7.5 %);
#: ``optimize=True`` took 0.43 s.
PNG_LEVEL = 1


def write_png(path: Path, rgba: np.ndarray) -> Path:
    """Write an ``(h, w, 4)`` uint8 array as a PNG (zlib level :data:`PNG_LEVEL`)."""
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(path, compress_level=PNG_LEVEL)
    return path
