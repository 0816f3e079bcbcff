"""A mask COG's grid, classes and pixel areas (what vectorizing needs to know about it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import SceneError
from geoseg.gpkg import ClassStyle
from geoseg.maskfile import NODATA, classes_from_colormap, confidence_path, read_classes

__all__ = ["MaskInfo", "read_mask_info"]


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
        nodata = NODATA if src.nodata is None else int(src.nodata)
        classes = _read_classes(src, p, nodata)
        t = src.transform
        crs = CRS.from_wkt(src.crs.to_wkt())
        info = MaskInfo(str(p), None, src.height, src.width, (t.a, t.b, t.c, t.d, t.e, t.f),
                        src.crs.to_wkt(), nodata, classes, abs(t.determinant))
    conf = confidence_path(p)
    if conf.exists():
        info = replace(info, confidence=str(conf))
    if crs.is_geographic:
        if t.b or t.d:
            raise SceneError(f"{p}: rotated geographic grids are not supported; warp it north-up")
        geod = crs.get_geod()
        if geod is None:
            raise SceneError(f"{p}: its CRS has no ellipsoid to measure areas on; assign a "
                             "CRS with a datum (e.g. EPSG:4326)")
        rows = np.arange(info.height + 1)
        lat = t.f + rows * t.e
        lon0, lon1 = t.c, t.c + t.a
        areas = [abs(geod.polygon_area_perimeter([lon0, lon1, lon1, lon0],
                                                 [lat[i], lat[i], lat[i + 1], lat[i + 1]])[0])
                 for i in range(info.height)]
        info = replace(info, row_area_m2=tuple(areas), pixel_area_m2=float("nan"))
    return info


def _read_classes(src: Any, path: Path, nodata: int) -> tuple[ClassStyle, ...]:
    """The mask's classes from its tag, else its colour table (``class_<id>``)."""
    classes = read_classes(src, path)
    if classes is None:
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = {}
        classes = classes_from_colormap(cmap, nodata)
    return tuple(ClassStyle(c.id, c.name, c.color) for c in classes)
