"""Provenance: a STAC Item per scene, describing its outputs (built with pystac).

Extensions: projection (grid), raster (mask band), classification (class ids, names, colours)
and processing (software, bundle and settings). Asset links are relative to the item file, so
the scene folder can be moved or served as a whole.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from geoseg.maskfile import NODATA
from geoseg.scene import Scene

__all__ = ["scene_datetime", "stac_item"]

PROCESSING_EXT = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
_MEDIA = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".gpkg": "application/geopackage+sqlite3",
    ".png": "image/png",
    ".json": "application/json",
    ".qml": "application/xml",
    ".xml": "application/xml",
}
#: asset file suffix → STAC roles (default: data).
_ROLES = {".png": ["thumbnail"], ".qml": ["style"], ".xml": ["metadata"]}
_STAMP = re.compile(r"(?<!\d)(\d{8})T(\d{6})(?!\d)")


def scene_datetime(scene: Scene) -> tuple[dt.datetime, str]:
    """Acquisition time and where it came from: the file names (``20200101T101021``), the
    GeoTIFF ``TIFFTAG_DATETIME`` tag, else the processing time (``"processing"``)."""
    import rasterio

    from geoseg.scene import call_remote, is_uri

    for f in scene.files:
        m = _STAMP.search(f.rsplit("/", 1)[-1] if isinstance(f, str) and is_uri(f)
                          else Path(f).name)  # a URI never through Path
        if m:
            stamp = dt.datetime.strptime("".join(m.groups()), "%Y%m%d%H%M%S")
            return stamp.replace(tzinfo=dt.timezone.utc), "file name"

    def datetime_tag(path: str) -> str | None:
        with rasterio.open(path) as src:
            tag: str | None = src.tags().get("TIFFTAG_DATETIME")
            return tag

    first = scene.files[0]
    # a URI is read as the scene was: in the cloud GDAL options, with retries
    tag = call_remote(first, datetime_tag) if isinstance(first, str) and is_uri(first) \
        else datetime_tag(str(first))
    if tag:
        try:
            stamp = dt.datetime.strptime(tag.strip(), "%Y:%m:%d %H:%M:%S")
            return stamp.replace(tzinfo=dt.timezone.utc), "TIFFTAG_DATETIME"
        except ValueError:
            pass
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0), "processing"


def _footprint(scene: Scene) -> dict[str, Any]:
    """The scene outline in EPSG:4326 (edges densified so curved projections stay honest)."""
    import shapely
    from rasterio.transform import Affine
    from rasterio.warp import transform_geom

    t = Affine(*scene.transform)
    corners = [t * (0, 0), t * (scene.width, 0), t * (scene.width, scene.height),
               t * (0, scene.height)]
    ring = shapely.Polygon(corners)
    step = ring.length / 4 / 16
    geom = shapely.geometry.mapping(shapely.segmentize(ring, step))
    return transform_geom(scene.crs_wkt, "EPSG:4326", geom)  # type: ignore[no-any-return]


def stac_item(
    scene: Scene,
    assets: dict[str, Path],
    folder: Path,
    classes: list[dict[str, Any]],
    class_pixels: dict[int, int],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """A STAC Item (as a dict) for one scene's outputs.

    Args:
        scene: the input scene (grid, files, name → item id).
        assets: role (``mask``, ``confidence``, ``vectors``, ``thumbnail``…) → file in ``folder``.
        folder: where the item is written; asset hrefs are relative to it.
        classes: ``[{id, name, color}]`` of the model.
        class_pixels: class id → pixel count in the mask.
        provenance: ``geoseg:*`` properties (bundle, settings, version).
    """
    import pystac
    import shapely
    from pyproj import CRS
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    geometry = _footprint(scene)
    when, source = scene_datetime(scene)
    item = pystac.Item(id=scene.name, geometry=geometry,
                       bbox=list(shapely.bounds(shapely.geometry.shape(geometry))),
                       datetime=when, properties={"geoseg:datetime_source": source})
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    crs = CRS.from_wkt(scene.crs_wkt)
    epsg = crs.to_epsg()
    a, b, c, d, e, f = scene.transform
    proj.apply(code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else crs.to_wkt(),
               shape=[scene.height, scene.width], transform=[a, b, c, d, e, f])
    total = sum(class_pixels.values()) or 1
    for role, path in assets.items():
        asset = pystac.Asset(href=f"./{path.relative_to(folder).as_posix()}",
                             media_type=_MEDIA.get(path.suffix.lower()),
                             roles=_ROLES.get(path.suffix.lower(), ["data"]),
                             title=role)
        item.add_asset(role, asset)
        if role in ("mask", "confidence"):
            RasterExtension.ext(asset, add_if_missing=True).apply(
                [RasterBand.create(nodata=NODATA, data_type=DataType.UINT8,
                                   unit="percent" if role == "confidence" else None)])
        if role == "mask":
            ClassificationExtension.ext(asset, add_if_missing=True).apply([
                Classification.create(
                    value=int(c["id"]), name=re.sub(r"[^0-9A-Za-z_-]", "_", str(c["name"])),
                    description=str(c["name"]),
                    color_hint="{:02X}{:02X}{:02X}".format(*c["color"][:3]),
                    count=int(class_pixels.get(int(c["id"]), 0)),
                    percentage=round(100.0 * class_pixels.get(int(c["id"]), 0) / total, 4))
                for c in classes])
    item.stac_extensions.append(PROCESSING_EXT)
    item.properties["processing:software"] = {"geoseg": provenance.get("geoseg:version", "")}
    item.properties.update(provenance)
    return item.to_dict(include_self_link=False)
