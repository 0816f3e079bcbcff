"""Scenes: metadata (never pixels) at open time, and windowed reads done by the tasks themselves.

A :class:`Scene` is small and picklable: it names the files and band indexes to read and the
grid (CRS, transform, size) they share. Workers call :func:`read_window` with a window that may
reach past the scene's edges; the part outside is filled and marked not valid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geoseg.errors import SceneError
from geoseg.tiling import Window

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

__all__ = [
    "SUPPORTED_DTYPES",
    "BandRef",
    "Scene",
    "open_scene",
    "read_window",
    "select_bands",
]

#: Pixel dtypes geoseg reads.
SUPPORTED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "int16", "float32")


@dataclass(frozen=True)
class BandRef:
    """One band of a scene: ``index`` (1-based) in file ``path``, called ``name``."""

    path: str
    index: int
    name: str


@dataclass(frozen=True)
class Scene:
    """What geoseg knows about a scene before reading a pixel.

    Attributes:
        name: a short name (the file stem), used for outputs and logs.
        bands: every band available, in file order.
        crs_wkt: the coordinate reference system as WKT.
        transform: the affine geotransform ``(a, b, c, d, e, f)`` (pixel → CRS units).
        height, width: size in pixels.
        dtype: pixel dtype name, one of :data:`SUPPORTED_DTYPES`.
        nodata: the nodata value of the first band, if any (masks and alpha are honoured too).
    """

    name: str
    bands: tuple[BandRef, ...]
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int
    dtype: str
    nodata: float | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)


def open_scene(path: str | os.PathLike[str]) -> Scene:
    """Read a multi-band raster's metadata and check it can be used.

    Raises:
        SceneError: not a raster, no CRS or geotransform, empty, or an unsupported dtype.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: no such file")
    try:
        with rasterio.open(path) as src:
            return _scene_from_dataset(path, src)
    except RasterioIOError as exc:
        raise SceneError(
            f"{path}: not a readable raster ({exc}); give a GeoTIFF/COG (or any GDAL raster)"
        ) from exc


def _scene_from_dataset(path: Path, src: DatasetReader) -> Scene:
    if src.width == 0 or src.height == 0 or src.count == 0:
        raise SceneError(f"{path}: empty raster ({src.width}x{src.height}, {src.count} bands)")
    if src.crs is None:
        raise SceneError(
            f"{path}: has no CRS, so the mask could not be georeferenced; assign one "
            "(e.g. `gdal_edit.py -a_srs EPSG:32618 FILE`)"
        )
    if src.transform.is_identity:
        raise SceneError(f"{path}: has no geotransform; georeference it first")
    dtypes = set(src.dtypes)
    if len(dtypes) != 1:
        raise SceneError(f"{path}: bands have different dtypes {sorted(dtypes)}")
    dtype = src.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise SceneError(
            f"{path}: pixel dtype {dtype} is not supported; convert to one of "
            f"{', '.join(SUPPORTED_DTYPES)} (e.g. `gdal_translate -ot Float32`)"
        )
    names = []
    for i in range(1, src.count + 1):
        desc = src.descriptions[i - 1]
        names.append(desc.strip() if desc and desc.strip() else f"band{i}")
    return Scene(
        name=path.name.split(".")[0],
        bands=tuple(BandRef(str(path), i, n) for i, n in enumerate(names, start=1)),
        crs_wkt=src.crs.to_wkt(),
        transform=tuple(src.transform)[:6],  # type: ignore[arg-type]
        height=src.height,
        width=src.width,
        dtype=dtype,
        nodata=src.nodata,
    )


def select_bands(scene: Scene, wanted: Sequence[str], source: str = "") -> tuple[BandRef, ...]:
    """The scene's bands the model needs, in the model's order.

    Bands are matched by name (the file's band descriptions, case-insensitive). When the scene's
    bands carry no names and their number equals the model's, they are taken in file order.

    Raises:
        SceneError: a named band is missing, or the band count does not match.
    """
    where = source or scene.name
    by_name = {b.name.lower(): b for b in scene.bands}
    if all(w.lower() in by_name for w in wanted):
        return tuple(by_name[w.lower()] for w in wanted)
    unnamed = all(b.name == f"band{b.index}" for b in scene.bands)
    if unnamed and len(scene.bands) == len(wanted):
        return tuple(
            BandRef(b.path, b.index, w) for b, w in zip(scene.bands, wanted, strict=True)
        )
    have = ", ".join(b.name for b in scene.bands)
    if unnamed:
        raise SceneError(
            f"{where}: has {len(scene.bands)} unnamed bands but the model needs "
            f"{len(wanted)} ({', '.join(wanted)}); give a scene with exactly those bands in "
            "that order, or name its bands (band descriptions)"
        )
    missing = [w for w in wanted if w.lower() not in by_name]
    raise SceneError(
        f"{where}: missing band(s) {', '.join(missing)} needed by the model; the scene has "
        f"{have}"
    )


def read_window(
    bands: Sequence[BandRef], window: Window, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` of the given bands, filling whatever lies outside the scene.

    Args:
        bands: the bands to read, in output order; all on the same ``height x width`` grid.
        window: pixels to read, in scene coordinates; may extend past any edge.
        height, width: the scene size, pixels.

    Returns:
        ``(data, valid)``: ``data`` is ``(C, h, w)`` in the file's dtype, 0 where not read;
        ``valid`` is ``(h, w)`` bool, True where every band has data (nodata values, internal
        masks and alpha bands all count, as do NaNs in float scenes).
    """
    import rasterio
    from rasterio.windows import Window as RioWindow

    inside = window.intersection(Window(0, 0, height, width))
    valid = np.zeros(window.shape, dtype=bool)
    data: np.ndarray | None = None
    if inside is None:
        return np.zeros((len(bands), *window.shape), dtype=np.uint8), valid
    dst = inside.relative_to(window).slices()
    rio_window = RioWindow(inside.col, inside.row, inside.width, inside.height)  # type: ignore[call-arg]
    valid[dst] = True
    by_path: dict[str, list[int]] = {}
    for pos, band in enumerate(bands):
        by_path.setdefault(band.path, []).append(pos)
    for path, positions in by_path.items():
        indexes = [bands[p].index for p in positions]
        with rasterio.open(path) as src:
            pixels = src.read(indexes, window=rio_window)
            masks = src.read_masks(indexes, window=rio_window)
        if data is None:
            data = np.zeros((len(bands), *window.shape), dtype=pixels.dtype)
        for k, pos in enumerate(positions):
            data[(pos, *dst)] = pixels[k]
        valid[dst] &= np.all(masks != 0, axis=0)
        if pixels.dtype.kind == "f":
            valid[dst] &= np.all(np.isfinite(pixels), axis=0)
    assert data is not None
    return data, valid
