"""GeoPackage layer writer: one process, batched, atomic, QGIS-styled.

The layer is written with pyogrio in batches into a temporary file in the destination folder
(``.<name>.<token>.partial.gpkg``); :meth:`GpkgWriter.commit` adds a QGIS categorized style to the
``layer_styles`` table and ``os.replace``-s the file into place, so a partial file never appears
under the final name. The file is GeoPackage 1.2 (``VERSION=1.2`` dataset creation option) so that
QGIS 3.22 (Debian bookworm, many field installs) reads it fully; the layer has an R-tree spatial
index and the mask's CRS.

``layer_styles`` has the schema QGIS itself creates when it saves a style into a GeoPackage
(``id, f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, styleQML,
styleSLD, useAsDefault, description, owner, ui, update_time``), registered in ``gpkg_contents`` as
an attributes table; the row has ``useAsDefault = 1`` so QGIS applies it when the layer is opened.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from geoseg.maskfile import xml_text
from geoseg.writers import check_writable

__all__ = ["GEOMETRY_COLUMN", "ClassStyle", "GpkgWriter", "categorized_qml", "multipolygon_wkb"]

log = logging.getLogger(__name__)

#: Name of the geometry column (GDAL's default for GeoPackage).
GEOMETRY_COLUMN = "geom"


@dataclass(frozen=True)
class ClassStyle:
    """One class of the mask: id (uint8 value), display name and RGB colour (0–255 each)."""

    id: int
    name: str
    color: tuple[int, int, int]


def categorized_qml(field: str, classes: Sequence[ClassStyle]) -> str:
    """A QGIS style document (QML) with a categorized fill renderer on integer ``field``.

    Symbol properties are written both as ``<Option>`` maps (QGIS ≥ 3.10) and ``<prop>`` elements
    (older readers), as QGIS 3.22 itself does.
    """
    cats, syms = [], []
    for i, c in enumerate(classes):
        r, g, b = (int(v) for v in c.color)
        cats.append(
            f'      <category render="true" value="{int(c.id)}" '
            f'label={quoteattr(xml_text(c.name))} symbol="{i}"/>'
        )
        props = {
            "color": f"{r},{g},{b},255",
            "outline_color": f"{max(r - 60, 0)},{max(g - 60, 0)},{max(b - 60, 0)},255",
            "outline_style": "solid",
            "outline_width": "0.1",
            "outline_width_unit": "MM",
            "style": "solid",
            "joinstyle": "bevel",
        }
        options = "".join(
            f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items()
        )
        prop_tags = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
        syms.append(
            f'      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleFill" enabled="1" locked="0" pass="0">'
            f'<Option type="Map">{options}</Option>{prop_tags}</layer></symbol>'
        )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        f'  <renderer-v2 type="categorizedSymbol" attr="{field}" symbollevels="0" '
        'enableorderby="0" forceraster="0">\n'
        "    <categories>\n" + "\n".join(cats) + "\n    </categories>\n"
        "    <symbols>\n" + "\n".join(syms) + "\n    </symbols>\n"
        "  </renderer-v2>\n</qgis>\n"
    )


_LAYER_STYLES_SQL = """
CREATE TABLE IF NOT EXISTS "layer_styles" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  "f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256),
  "f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT,
  "useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30),
  "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""


def _add_style(path: Path, layer: str, qml: str) -> None:
    """Create ``layer_styles`` (QGIS's schema), register it, and insert the default style."""
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(_LAYER_STYLES_SQL)
            con.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
                "last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', "
                "strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
            )
            con.execute(
                'INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, '
                'f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, '
                'owner, ui) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)',
                ("", "", layer, GEOMETRY_COLUMN, layer, qml, "",
                 "geoseg land-cover classes", "", None),
            )
    finally:
        con.close()


class GpkgWriter:
    """Write one polygon layer to a GeoPackage from one process, in batches, atomically.

    Use as a context manager; leaving it with an exception removes the temporary file.

    Args:
        path: the final ``.gpkg`` path.
        layer: layer (table) name.
        crs_wkt: the layer CRS (the mask's).
        classes: classes for the QGIS style, in legend order.
        fields: attribute names and numpy dtypes, in column order.
        overwrite: replace an existing file at ``path``.
        batch_size: features buffered before each append.
        max_coords: vertices buffered before each append (bounds memory for huge polygons).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        layer: str,
        crs_wkt: str,
        classes: Sequence[ClassStyle],
        fields: Sequence[tuple[str, str]],
        overwrite: bool = False,
        batch_size: int = 50_000,
        max_coords: int = 1_000_000,
    ):
        self.path = Path(path)
        self.layer = layer
        self.crs_wkt = crs_wkt
        self.classes = list(classes)
        self.fields = list(fields)
        self.overwrite = overwrite
        self.batch_size = batch_size
        self.max_coords = max_coords
        self._coords = 0
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tmp = self.path.with_name(f".{self.path.name}.{token}.partial.gpkg")
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._created = False
        self.n_written = 0

    def __enter__(self) -> GpkgWriter:
        check_writable(self.path, self.overwrite)
        return self

    def write(self, geometry: np.ndarray, **columns: np.ndarray) -> None:
        """Queue features, one array per field. ``geometry``: shapely (multi)polygons in CRS
        units, or their MultiPolygon WKB from :func:`multipolygon_wkb` (e.g. made by a worker)."""
        if len(geometry) == 0:
            return
        wkb = np.asarray(geometry, dtype=object)
        if not isinstance(wkb[0], bytes):
            wkb = multipolygon_wkb(wkb)
        self._coords += sum(map(len, wkb)) // 16  # two float64 per vertex
        self._buffer.append({"geometry": wkb, **columns})
        self._buffered += len(geometry)
        if self._buffered >= self.batch_size or self._coords >= self.max_coords:
            self.flush()

    def flush(self) -> None:
        """Append the buffered features to the temporary file (creating it on first call)."""
        import pyogrio.raw

        if not self._buffer and self._created:
            return
        geoms = np.concatenate([b["geometry"] for b in self._buffer]) if self._buffer else (
            np.empty(0, dtype=object))
        data = []
        for name, dtype in self.fields:
            parts = [np.asarray(b[name]) for b in self._buffer]
            data.append(np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype))
        kwargs: dict[str, Any] = {}
        if not self._created:
            kwargs = dict(dataset_options={"VERSION": "1.2"},
                          layer_options={"SPATIAL_INDEX": "YES"})
        pyogrio.raw.write(
            str(self._tmp), geoms, data, [n for n, _ in self.fields],
            layer=self.layer, driver="GPKG", geometry_type="MultiPolygon", crs=self.crs_wkt,
            append=self._created, **kwargs,
        )
        self._created = True
        self.n_written += len(geoms)
        self._buffer, self._buffered, self._coords = [], 0, 0

    def commit(self) -> Path:
        """Flush, add the QGIS style and rename the file into place."""
        self.flush()
        _add_style(self._tmp, self.layer, categorized_qml("class_id", self.classes))
        os.replace(self._tmp, self.path)
        log.info("wrote %s: layer %s, %d features", self.path, self.layer, self.n_written)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        self._buffer = []
        for p in (self._tmp, Path(f"{self._tmp}-journal"), Path(f"{self._tmp}-wal")):
            p.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


def multipolygon_wkb(geoms: np.ndarray) -> np.ndarray:
    """ISO WKB (object array of bytes) of (multi)polygons, each as a MultiPolygon, the layer's
    geometry type. Cheap to pickle, so workers can hand finished features to the writer."""
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    parts = np.repeat(np.arange(len(geoms)), shapely.get_num_geometries(geoms))
    return shapely.to_wkb(shapely.multipolygons(shapely.get_parts(geoms), indices=parts))
