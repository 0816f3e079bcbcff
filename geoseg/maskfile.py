"""The mask file format: what a geoseg mask holds, and the files that travel with it.

A mask is a single-band uint8 GeoTIFF (a Cloud-Optimized GeoTIFF from ``geoseg predict`` and
``geoseg run``) on exactly the scene's grid:

- pixels: class ids ``0..254``; :data:`NODATA` (255) where there was no input;
- a colour table (photometric palette) with one entry per class. A TIFF palette always has
  2^8 = 256 entries: GDAL pads the table with opaque black and reports the nodata entry with
  alpha 0. QGIS 3.22 turns every entry into a legend class (``0 … 255``), so the style
  sidecar below lists the real classes only;
- the tag :data:`CLASSES_TAG`: a JSON list of ``{"id", "name", "color"}``, one per class.

Beside ``<base>.tif`` (see :func:`output_paths`):

- ``<base>.qml``: a QGIS style (paletted renderer, class names as labels, no entry for nodata
  or for ids that are not classes). QGIS loads ``<base>.qml`` as the layer's default style;
- ``<base>.tif.aux.xml``: GDAL PAM with the band's category names (``gdalinfo`` lists them;
  QGIS 3.22 takes them as palette labels when no style is given). A GeoTIFF cannot hold
  category names or a raster attribute table itself (GDAL keeps both in PAM), and opening the
  COG for update to set them would rewrite its layout: the sidecar is written next to the
  finished COG, whose bytes stay untouched;
- ``<base>.confidence.tif`` and ``<base>.probabilities.tif`` (optional): uint8 percentages,
  nodata :data:`NODATA`.

This module is the one home of those rules; it depends only on the bundle's class type,
:mod:`geoseg.errors`, numpy and (lazily) rasterio.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from pydantic import ValidationError

from geoseg.errors import SceneError
from geoseg.models.bundle import ClassSpec

__all__ = [
    "CLASSES_TAG",
    "NODATA",
    "RASTER_SIDECAR_SUFFIXES",
    "aux_path",
    "category_names_xml",
    "class_colormap",
    "classes_from_colormap",
    "classes_tag",
    "confidence_path",
    "output_paths",
    "paletted_qml",
    "parse_classes",
    "probabilities_path",
    "read_classes",
    "style_path",
    "write_mask",
    "write_sidecars",
    "xml_text",
]

#: Value of nodata pixels in a mask and in its uint8 sidecars (class ids are 0..254,
#: percentages 0..100).
NODATA = 255

#: GeoTIFF metadata tag holding the classes (JSON list of ``{id, name, color}``) in every mask.
CLASSES_TAG = "GEOSEG_CLASSES"

#: Suffixes of the raster sidecars written beside ``<base>.tif`` (outputs, never inputs).
RASTER_SIDECAR_SUFFIXES = (".confidence.tif", ".probabilities.tif")

#: Characters XML 1.0 cannot hold, even escaped (C0 controls other than tab, LF and CR).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _base(mask: Path) -> str:
    return mask.name[: -len(mask.suffix)] if mask.suffix else mask.name


def confidence_path(mask: str | os.PathLike[str]) -> Path:
    """``<base>.confidence.tif`` beside ``mask`` (``<base>.tif``)."""
    mask = Path(mask)
    return mask.with_name(_base(mask) + RASTER_SIDECAR_SUFFIXES[0])


def probabilities_path(mask: str | os.PathLike[str]) -> Path:
    """``<base>.probabilities.tif`` beside ``mask`` (``<base>.tif``)."""
    mask = Path(mask)
    return mask.with_name(_base(mask) + RASTER_SIDECAR_SUFFIXES[1])


def style_path(mask: str | os.PathLike[str]) -> Path:
    """``<base>.qml`` beside ``mask``: the name QGIS loads as the layer's default style."""
    mask = Path(mask)
    return mask.with_name(_base(mask) + ".qml")


def aux_path(mask: str | os.PathLike[str]) -> Path:
    """``<name>.aux.xml`` beside ``mask``: where GDAL reads the mask's PAM (category names)."""
    mask = Path(mask)
    return mask.with_name(mask.name + ".aux.xml")


def output_paths(mask: str | os.PathLike[str], confidence: bool = False,
                 probabilities: bool = False) -> dict[str, Path]:
    """Role → path of every file a prediction writes for ``mask``, rasters in band order:
    ``mask``, ``mask-style`` (QML), ``mask-categories`` (PAM), then the optional
    ``confidence`` and ``probabilities`` rasters."""
    mask = Path(mask)
    paths = {"mask": mask, "mask-style": style_path(mask), "mask-categories": aux_path(mask)}
    if confidence:
        paths["confidence"] = confidence_path(mask)
    if probabilities:
        paths["probabilities"] = probabilities_path(mask)
    return paths


def class_colormap(classes: Iterable[ClassSpec]) -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table: class id → opaque RGBA, one entry per class and none for nodata."""
    return {c.id: (*c.color, 255) for c in classes}


def classes_tag(classes: Iterable[ClassSpec]) -> str:
    """The :data:`CLASSES_TAG` value: JSON ``[{"id", "name", "color": [r, g, b]}, …]``."""
    return json.dumps([c.model_dump() for c in classes])


def parse_classes(text: str, source: str | os.PathLike[str]) -> tuple[ClassSpec, ...]:
    """The classes of a :data:`CLASSES_TAG` value, sorted by id.

    Raises:
        SceneError: ``text`` is not a JSON list of ``{id, name, color}`` with ids 0..254, names
            and RGB colours (``source`` names the file).
    """
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise TypeError(f"a JSON {type(items).__name__}, not a list")
        classes = [ClassSpec(id=int(c["id"]), name=str(c["name"]), color=tuple(c["color"])[:3])
                   for c in items]
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        reason = " ".join(str(exc).split())
        raise SceneError(f"{source}: tag {CLASSES_TAG} is not a JSON list of {{id, name, color}}"
                         f" ({reason}); rewrite it or delete it") from None
    return tuple(sorted(classes, key=lambda c: c.id))


def read_classes(dataset: Any, source: str | os.PathLike[str] = "") -> tuple[ClassSpec, ...] | None:
    """The classes of an open rasterio dataset from its :data:`CLASSES_TAG`; None without one.

    Raises:
        SceneError: the tag is there but malformed (see :func:`parse_classes`).
    """
    text = dataset.tags().get(CLASSES_TAG)
    return parse_classes(text, source or dataset.name) if text else None


def classes_from_colormap(colormap: Mapping[int, Sequence[int]],
                          nodata: int | None = NODATA) -> tuple[ClassSpec, ...]:
    """Classes ``class_<id>`` of a mask without :data:`CLASSES_TAG`, from its colour table:
    every entry except nodata's and GDAL's padding (opaque black)."""
    return tuple(ClassSpec(id=i, name=f"class_{i}", color=tuple(rgba[:3]))  # type: ignore[arg-type]
                 for i, rgba in sorted(colormap.items())
                 if i != nodata and i <= 254 and any(rgba[:3]))


def xml_text(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold at all (most C0 controls) replaced by
    U+FFFD; escape the result for its place (``quoteattr``/``escape``) as usual."""
    return _NOT_XML.sub("\ufffd", text)


def paletted_qml(classes: Iterable[ClassSpec], band: int = 1) -> str:
    """A QGIS style document (QML) for a mask: a paletted renderer on ``band`` with one entry
    per class (value, colour, class name as label), as QGIS 3.22 saves a raster layer's
    Symbology. Nodata is left to the layer's nodata value (transparent)."""
    entries = "\n".join(
        f"        <paletteEntry label={quoteattr(xml_text(c.name))} value=\"{int(c.id)}\" "
        f"color=\"#{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}\" alpha=\"255\"/>"
        for c in classes)
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis styleCategories="Symbology" version="3.22.0">\n'
        "  <pipe-data-defined-properties>\n"
        '    <Option type="Map">\n'
        '      <Option type="QString" value="" name="name"/>\n'
        '      <Option name="properties"/>\n'
        '      <Option type="QString" value="collection" name="type"/>\n'
        "    </Option>\n"
        "  </pipe-data-defined-properties>\n"
        "  <pipe>\n"
        "    <provider>\n"
        '      <resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour" '
        'zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>\n'
        "    </provider>\n"
        f'    <rasterrenderer alphaBand="-1" band="{int(band)}" type="paletted" '
        'nodataColor="" opacity="1">\n'
        "      <minMaxOrigin>\n"
        "        <limits>None</limits>\n"
        "        <extent>WholeRaster</extent>\n"
        "        <statAccuracy>Estimated</statAccuracy>\n"
        "        <cumulativeCutLower>0.02</cumulativeCutLower>\n"
        "        <cumulativeCutUpper>0.98</cumulativeCutUpper>\n"
        "        <stdDevFactor>2</stdDevFactor>\n"
        "      </minMaxOrigin>\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        '    <brightnesscontrast contrast="0" brightness="0" gamma="1"/>\n'
        '    <huesaturation colorizeRed="255" colorizeBlue="128" invertColors="0" '
        'grayscaleMode="0" colorizeStrength="100" colorizeGreen="128" saturation="0" '
        'colorizeOn="0"/>\n'
        '    <rasterresampler maxOversampling="2"/>\n'
        "    <resamplingStage>resamplingFilter</resamplingStage>\n"
        "  </pipe>\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def category_names_xml(classes: Iterable[ClassSpec], band: int = 1) -> str:
    """GDAL PAM (``.aux.xml``) giving ``band`` its category names: entry ``k`` names pixel
    value ``k`` (empty for ids that are not classes; none past the last class or for nodata)."""
    names = {c.id: c.name for c in classes}
    cats = "\n".join(f"      <Category>{escape(xml_text(names.get(k, '')))}</Category>"
                     for k in range(max(names, default=-1) + 1))
    return (
        "<PAMDataset>\n"
        f'  <PAMRasterBand band="{int(band)}">\n'
        "    <CategoryNames>\n"
        f"{cats}\n"
        "    </CategoryNames>\n"
        "  </PAMRasterBand>\n"
        "</PAMDataset>\n"
    )


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_sidecars(mask: str | os.PathLike[str], classes: Sequence[ClassSpec]) -> dict[str, Path]:
    """Write ``mask``'s QGIS style and GDAL category names beside it, each atomically.

    Returns:
        role (``mask-style``, ``mask-categories``) → path written.
    """
    return {"mask-style": _write_text(style_path(mask), paletted_qml(classes)),
            "mask-categories": _write_text(aux_path(mask), category_names_xml(classes))}


def write_mask(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    crs: Any,
    transform: Any,
    classes: Sequence[ClassSpec],
    block: int = 256,
) -> Path:
    """Write a whole ``(H, W)`` uint8 class array as a tiled mask GeoTIFF (DEFLATE, ``block``
    px tiles, palette, :data:`CLASSES_TAG`, nodata :data:`NODATA`) and its sidecars.
    Atomic: a temporary name, then rename. For small rasters (it holds them whole); block by
    block writing is :class:`geoseg.writers.StreamingCOGWriter`'s.

    Args:
        crs, transform: the grid (rasterio CRS or anything it accepts; an ``Affine``).
    """
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    profile = dict(driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1,
                   dtype="uint8", crs=crs, transform=transform, nodata=NODATA, tiled=True,
                   blockxsize=block, blockysize=block, compress="deflate",
                   photometric="palette")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write_colormap(1, class_colormap(classes))
            dst.write(labels, 1)
            dst.update_tags(**{CLASSES_TAG: classes_tag(classes)})
        write_sidecars(path, classes)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
