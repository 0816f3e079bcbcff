"""A mask COG's grid, classes and pixel areas (what vectorizing needs to know about it)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import SceneError
from geoseg.gpkg import ClassStyle

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
