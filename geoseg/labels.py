"""Class labels aligned onto a raster grid: from a raster of class ids or from OGR polygons.

Training (labels onto a scene's grid) and evaluation (a reference onto a mask's grid) both need
the same thing: for any window of a target grid, the class id of every pixel, with
:data:`IGNORE` where there is no label. A raster is warped onto the grid on the fly (nearest
neighbour, through a GDAL warped VRT when its CRS or grid differs); polygons are reprojected to
the grid's CRS once and burnt window by window. Nothing ever holds a whole label raster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from geoseg.errors import ConfigError, SceneError
from geoseg.maskfile import NODATA
from geoseg.tiling import Window

if TYPE_CHECKING:
    import geopandas

__all__ = [
    "IGNORE",
    "Grid",
    "LabelSource",
    "PolygonLabels",
    "RasterLabels",
    "open_labels",
]

log = logging.getLogger(__name__)

#: Label value meaning "no label here" (ignored by losses and metrics).
IGNORE = NODATA

_RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png"}


@dataclass(frozen=True)
class Grid:
    """A target pixel grid: CRS (WKT), affine ``transform`` (6-tuple, CRS units), size in px."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units."""
        from rasterio.transform import Affine, array_bounds

        return tuple(array_bounds(self.height, self.width, Affine(*self.transform)))  # type: ignore[return-value]

    def window_transform(self, window: Window) -> Any:
        """The affine transform of ``window`` (a rasterio ``Affine``)."""
        from rasterio.transform import Affine

        a, b, c, d, e, f = self.transform
        return Affine(a, b, c + window.col * a + window.row * b, d, e,
                      f + window.col * d + window.row * e)


class LabelSource(Protocol):
    """Labels readable window by window on one :class:`Grid`."""

    path: Path

    def read(self, window: Window) -> np.ndarray:
        """``(h, w)`` uint8 class ids of ``window`` (may reach past the grid), :data:`IGNORE`
        where unlabelled."""
        ...

    def overlaps(self) -> bool:
        """Whether the labels' extent intersects the grid at all."""
        ...

    def close(self) -> None:
        """Release open files."""
        ...


def _intersects(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class RasterLabels:
    """A single-band integer raster of class ids, warped (nearest) onto ``grid``.

    Pixels equal to the raster's nodata, to ``ignore_value``, or masked, read as :data:`IGNORE`.
    """

    def __init__(self, path: Path, grid: Grid, ignore_value: int | None = None) -> None:
        import rasterio
        from rasterio.crs import CRS
        from rasterio.enums import Resampling
        from rasterio.errors import RasterioIOError
        from rasterio.transform import Affine
        from rasterio.vrt import WarpedVRT

        self.path, self.grid, self.ignore_value = path, grid, ignore_value
        try:
            self._src = rasterio.open(path)
        except RasterioIOError as exc:
            raise SceneError(f"{path}: not a readable label raster ({exc})") from exc
        src = self._src
        if src.crs is None:
            src.close()
            raise SceneError(f"{path}: label raster has no CRS; assign the scene's CRS to it "
                             "(e.g. `gdal_edit.py -a_srs EPSG:32618 FILE`)")
        if np.dtype(src.dtypes[0]).kind not in "ui":
            src.close()
            raise SceneError(f"{path}: labels must be integer class ids, not {src.dtypes[0]}; "
                             "convert with `gdal_translate -ot Byte`")
        self.nodata = src.nodata
        same = (CRS.from_wkt(grid.crs_wkt) == src.crs
                and tuple(src.transform)[:6] == grid.transform
                and (src.height, src.width) == (grid.height, grid.width))
        self._reader: Any = src
        if not same:
            self._reader = WarpedVRT(
                src, crs=CRS.from_wkt(grid.crs_wkt), transform=Affine(*grid.transform),
                height=grid.height, width=grid.width, resampling=Resampling.nearest,
                nodata=IGNORE if src.nodata is None else src.nodata,
            )
            log.info("%s: warping labels onto the target grid (nearest)", path)

    def overlaps(self) -> bool:
        from rasterio.crs import CRS
        from rasterio.warp import transform_bounds

        try:
            bounds = transform_bounds(self._src.crs, CRS.from_wkt(self.grid.crs_wkt),
                                      *self._src.bounds)
        except Exception:  # noqa: BLE001  (bounds outside the projection's domain)
            return False
        return _intersects(bounds, self.grid.bounds)

    def read(self, window: Window) -> np.ndarray:
        from rasterio.windows import Window as RioWindow

        out = np.full(window.shape, IGNORE, dtype=np.uint8)
        inside = window.intersection(Window(0, 0, self.grid.height, self.grid.width))
        if inside is None:
            return out
        rio = RioWindow(inside.col, inside.row, inside.width, inside.height)  # type: ignore[call-arg]
        values = self._reader.read(1, window=rio)
        valid = self._reader.read_masks(1, window=rio) != 0
        if self.nodata is not None:
            valid &= values != self.nodata
        if self.ignore_value is not None:
            valid &= values != self.ignore_value
        bad = valid & ((values < 0) | (values >= IGNORE))
        if bad.any():
            raise SceneError(f"{self.path}: label value {int(values[bad][0])} is not a class id "
                             f"(0-254); declare it with --ignore-value or as the nodata value")
        block = np.where(valid, values, IGNORE).astype(np.uint8)
        out[inside.relative_to(window).slices()] = block
        return out

    def close(self) -> None:
        if self._reader is not self._src:
            self._reader.close()
        self._src.close()


class PolygonLabels:
    """OGR polygons (GeoPackage, shapefile, GeoJSON…) with a class field, burnt onto ``grid``.

    The class field holds class ids (integers) or class names (matched case-insensitively to
    ``class_names``). Polygons are reprojected to the grid's CRS; where they overlap, the later
    feature wins; unlabelled pixels read as :data:`IGNORE`. A pixel is labelled when its
    centre lies inside a polygon.
    """

    def __init__(self, path: Path, grid: Grid, class_field: str | None,
                 class_names: Sequence[str] | None = None, layer: str | None = None) -> None:
        self.path, self.grid = path, grid
        frame = _read_polygons(path, layer)
        field = _pick_field(path, frame, class_field)
        self.values = _class_values(path, frame[field], field, class_names)
        from pyproj import CRS as ProjCRS

        target = ProjCRS.from_wkt(grid.crs_wkt)
        if frame.crs is None:
            raise SceneError(f"{path}: polygons have no CRS; set one (e.g. `ogr2ogr -a_srs "
                             "EPSG:32618 OUT IN`)")
        if not ProjCRS(frame.crs).equals(target):
            frame = frame.to_crs(target)
            log.info("%s: polygons reprojected to the grid's CRS", path)
        self.geometries = frame.geometry.values
        self._index = frame.sindex

    def overlaps(self) -> bool:
        if len(self.geometries) == 0:
            return False
        return _intersects(_total_bounds(self.geometries), self.grid.bounds)

    def read(self, window: Window) -> np.ndarray:
        from rasterio.features import rasterize
        from shapely import box

        transform = self.grid.window_transform(window)
        left, top = transform.c, transform.f
        right = left + transform.a * window.width
        bottom = top + transform.e * window.height
        hits = self._index.query(box(min(left, right), min(top, bottom), max(left, right),
                                     max(top, bottom)))
        if len(hits) == 0:
            return np.full(window.shape, IGNORE, dtype=np.uint8)
        hits = np.sort(hits)  # keep file order: later features win
        shapes = zip(self.geometries[hits], self.values[hits].tolist(), strict=True)
        out = rasterize(shapes, out_shape=window.shape, transform=transform, fill=IGNORE,
                        dtype="uint8")
        inside = window.intersection(Window(0, 0, self.grid.height, self.grid.width))
        outside = np.ones(window.shape, dtype=bool)
        if inside is not None:
            outside[inside.relative_to(window).slices()] = False
        out[outside] = IGNORE
        return out

    def close(self) -> None:
        pass


def _total_bounds(geometries: Any) -> tuple[float, float, float, float]:
    import shapely

    return tuple(shapely.total_bounds(geometries))  # type: ignore[return-value]


def _read_polygons(path: Path, layer: str | None) -> geopandas.GeoDataFrame:
    import pyogrio

    try:
        frame = pyogrio.read_dataframe(path, layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError/DataLayerError and friends
        raise SceneError(f"{path}: not a readable vector layer ({exc}); give a GeoPackage, "
                         "shapefile or GeoJSON of polygons") from exc
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    kinds = set(frame.geometry.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise SceneError(f"{path}: labels must be polygons, found {', '.join(sorted(kinds))}")
    return frame


def _pick_field(path: Path, frame: geopandas.GeoDataFrame, class_field: str | None) -> str:
    fields = [c for c in frame.columns if c != frame.geometry.name]
    if class_field is None:
        for guess in ("class", "class_id", "label", "landcover"):
            if guess in fields:
                return guess
        raise ConfigError(f"{path}: say which field holds the class with --class-field "
                          f"(fields: {', '.join(fields) or 'none'})")
    if class_field not in fields:
        raise ConfigError(f"{path}: no field {class_field!r}; fields are "
                          f"{', '.join(fields) or 'none'}")
    return class_field


def _class_values(path: Path, column: Any, field: str,
                  class_names: Sequence[str] | None) -> np.ndarray:
    """Class ids (uint8) of the features, from integer ids or names."""
    values = column.to_numpy()
    whole = values.dtype.kind == "f" and bool(np.all(np.isfinite(values) & (values % 1 == 0)))
    if values.dtype.kind in "iu" or whole:
        ids = values.astype(np.int64)
    else:
        if not class_names:
            raise ConfigError(f"{path}: field {field!r} holds names; give the class names "
                              "(--classes) so they can be matched to ids")
        lookup = {n.strip().lower(): i for i, n in enumerate(class_names)}
        unknown = sorted({str(v) for v in values if str(v).strip().lower() not in lookup})
        if unknown:
            raise ConfigError(f"{path}: field {field!r} has class(es) {', '.join(unknown[:5])} "
                              f"not among {', '.join(class_names)}")
        ids = np.array([lookup[str(v).strip().lower()] for v in values], dtype=np.int64)
    bad = ids[(ids < 0) | (ids >= IGNORE)]
    if bad.size:
        raise ConfigError(f"{path}: field {field!r} has value {int(bad[0])}, not a class id 0-254")
    return ids.astype(np.uint8)


def open_labels(
    path: str | os.PathLike[str],
    grid: Grid,
    *,
    class_field: str | None = None,
    class_names: Sequence[str] | None = None,
    ignore_value: int | None = None,
    layer: str | None = None,
) -> LabelSource:
    """Open labels (raster of class ids, or polygons with a class field) aligned to ``grid``.

    A raster is recognised by GDAL opening it as one (or by its suffix); anything else is read
    with OGR.

    Raises:
        SceneError: unreadable, no CRS, non-integer raster, not polygons.
        ConfigError: missing or bad class field.
    """
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: no such label file")
    if path.suffix.lower() in _RASTER_SUFFIXES or _is_raster(path):
        return RasterLabels(path, grid, ignore_value)
    return PolygonLabels(path, grid, class_field, class_names, layer)


def _is_raster(path: Path) -> bool:
    import rasterio
    from rasterio.errors import RasterioIOError

    if path.suffix.lower() in {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml"}:
        return False
    try:
        with rasterio.open(path):
            return True
    except RasterioIOError:
        return False
