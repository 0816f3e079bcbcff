"""Matching a STAC item's assets to a bundle's bands: pure functions, no I/O.

A bundle band (``B04``, ``B8A``, ``SR_B4``, ``red`` …) is matched to an item's asset in three
tiers; the first tier with a match wins, and two matches in one tier are an error naming both:

1. the asset *key* names the band (``B04``, ``B4``, or its common name ``red`` as Earth Search
   spells it), for assets holding at most one band;
2. a band of the asset's ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1) has the band's common
   name (``common_name``, ``eo:common_name``), or, where either side has none (or a generic one
   such as ``rededge``), its name; a multi-band asset gives the band's 1-based position in it;
3. the same two rules over ``visual`` assets (true-colour composites), used only when nothing
   else matches.

Names are compared case-insensitively through :func:`~geoseg.batch.discover.band_key`
(``B4`` = ``B04``) and the standard Sentinel-2 / Landsat 8-9 common-name tables
(:data:`SENTINEL2_COMMON`, :data:`LANDSAT_COMMON`). Unprefixed ``Bn`` names use the Landsat
table for Landsat items (``B5`` is ``nir08`` there, ``rededge1`` on Sentinel-2); ``SR_Bn`` and
``ST_Bn`` always do. So a bundle trained on ``B04`` matches Earth Search's ``red`` asset and
Planetary Computer's ``B04`` asset alike.

Only data rasters are candidates (:func:`is_data_asset`): thumbnails, overviews, metadata and
non-raster media types never are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from geoseg.batch.discover import band_key
from geoseg.errors import SceneError

__all__ = [
    "LANDSAT_COMMON",
    "SENTINEL2_COMMON",
    "AssetBand",
    "BandAsset",
    "StacAsset",
    "band_aliases",
    "is_data_asset",
    "match_bands",
    "parse_asset",
]

#: Sentinel-2 MSI band → STAC common name(s) (eo 1.0 names first, then eo 1.1's where new).
SENTINEL2_COMMON: dict[str, tuple[str, ...]] = {
    "b1": ("coastal",), "b2": ("blue",), "b3": ("green",), "b4": ("red",),
    "b5": ("rededge1", "rededge071"), "b6": ("rededge2", "rededge075"),
    "b7": ("rededge3", "rededge078"), "b8": ("nir",), "b8a": ("nir08",), "b9": ("nir09",),
    "b10": ("cirrus",), "b11": ("swir16",), "b12": ("swir22",),
}
#: Landsat 8/9 OLI/TIRS band → STAC common name(s) (``SR_B4``, ``ST_B10`` and plain ``B4``).
LANDSAT_COMMON: dict[str, tuple[str, ...]] = {
    "b1": ("coastal",), "b2": ("blue",), "b3": ("green",), "b4": ("red",), "b5": ("nir08",),
    "b6": ("swir16",), "b7": ("swir22",), "b8": ("pan",), "b9": ("cirrus",),
    "b10": ("lwir11",), "b11": ("lwir12",),
}
#: Every common name of the tables, and eo 1.0's generic ones.
_COMMON_NAMES = frozenset({c for t in (SENTINEL2_COMMON, LANDSAT_COMMON) for cs in t.values()
                           for c in cs} | {"rededge", "lwir", "yellow"})
#: Common names shared by several bands (eo 1.0 ``rededge`` is B05, B06 and B07): they
#: identify no band, so such a band is matched by its name.
_GENERIC_COMMON = frozenset({"rededge", "lwir"})
_LANDSAT_PRODUCT = re.compile(r"(?:sr|st)_(b\d+)")
#: Media types of rasters GDAL reads (a substring test, lower case).
_RASTER_MEDIA = ("tif", "jp2", "geotiff")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
_NOT_DATA_ROLES = frozenset({"thumbnail", "overview", "metadata"})
_DATA_ROLES = frozenset({"data", "reflectance"})


@dataclass(frozen=True)
class AssetBand:
    """One band of an asset as the item describes it.

    Attributes:
        index: 1-based band index in the asset's file.
        name: ``eo:bands[].name`` / ``bands[].name`` ("" when absent).
        common_name: ``common_name`` / ``eo:common_name``, lower case ("" when absent).
        scale, offset: ``raster:bands[].scale`` / ``.offset`` (physical = DN × scale + offset;
            STAC 1.1 ``raster:scale`` / ``raster:offset``); None when not declared.
        nodata: ``raster:bands[].nodata`` / ``bands[].nodata``; None when not declared.
    """

    index: int
    name: str = ""
    common_name: str = ""
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class StacAsset:
    """A data asset of an item (:func:`parse_asset`).

    Attributes:
        key: the asset key (``red``, ``B04`` …).
        href: the absolute href, a local path or a URI kept verbatim (``s3://…``).
        bands: the bands the item lists for it (empty when it lists none).
        visual: a true-colour composite (key or role ``visual``): matched only as a last resort.
    """

    key: str
    href: str
    bands: tuple[AssetBand, ...] = ()
    visual: bool = False


@dataclass(frozen=True)
class BandAsset:
    """Where a bundle band comes from: asset ``key``, its ``href``, the 1-based ``index`` in it,
    and that band's declared encoding (``scale``, ``offset``, ``nodata``; None: not declared)."""

    key: str
    href: str
    index: int = 1
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The match as a JSON object for ``scene.json`` (undeclared encodings left out)."""
        out: dict[str, Any] = {"asset": self.key, "href": self.href, "index": self.index}
        for k in ("scale", "offset", "nodata"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


def band_aliases(name: str, landsat: bool = False) -> frozenset[str]:
    """The keys ``name`` is known by: its :func:`band_key` and its common name(s).

    ``B04`` → ``{b4, red}``; ``SR_B5`` → ``{sr_b5, b5, nir08}``; ``B5`` → ``{b5, rededge1,
    rededge071}`` (``{b5, nir08}`` when ``landsat``); ``red`` → ``{red}``.
    """
    key = band_key(name)
    product = _LANDSAT_PRODUCT.fullmatch(key)
    if product:
        plain = band_key(product.group(1))
        return frozenset({key, plain, *LANDSAT_COMMON.get(plain, ())})
    table = LANDSAT_COMMON if landsat else SENTINEL2_COMMON
    return frozenset({key, *table.get(key, ())})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def is_data_asset(key: str, fields: Mapping[str, Any]) -> bool:
    """True for an asset (its STAC dict ``fields``) that may hold a model band: a raster (media
    type or href suffix ``.tif``/``.jp2``) with role ``data``/``reflectance``/``visual``, band
    metadata, or no roles at all; never a thumbnail, overview or metadata asset."""
    media = str(fields.get("type") or "").lower()
    href = str(fields.get("href") or "").lower().split("?")[0]
    raster = any(m in media for m in _RASTER_MEDIA) if media else href.endswith(_RASTER_SUFFIXES)
    if not raster:
        return False
    roles = {str(r).lower() for r in fields.get("roles") or ()}
    has_bands = bool(fields.get("eo:bands") or fields.get("bands"))
    if roles & _NOT_DATA_ROLES and not roles & _DATA_ROLES:
        return False
    return bool(not roles or roles & _DATA_ROLES or "visual" in roles or has_bands
                or key.lower() == "visual")


def parse_asset(key: str, fields: Mapping[str, Any], href: str) -> StacAsset:
    """A :class:`StacAsset` from an asset's STAC dict ``fields`` and its absolute ``href``.

    Bands come from ``eo:bands`` (STAC 1.0) or ``bands`` (1.1), encodings from the parallel
    ``raster:bands`` list or the 1.1 band fields; an asset with ``raster:bands`` alone gets
    nameless bands. Malformed entries (not objects) count as nameless bands.
    """
    eo = fields.get("eo:bands") or fields.get("bands") or []
    raster = fields.get("raster:bands") or []
    eo = eo if isinstance(eo, list) else []
    raster = raster if isinstance(raster, list) else []
    bands = []
    for i in range(max(len(eo), len(raster))):
        e = eo[i] if i < len(eo) and isinstance(eo[i], dict) else {}
        r = raster[i] if i < len(raster) and isinstance(raster[i], dict) else {}
        common = e.get("common_name") or e.get("eo:common_name") or ""
        bands.append(AssetBand(
            index=i + 1, name=str(e.get("name") or ""), common_name=str(common).lower(),
            scale=_number(r.get("scale", e.get("raster:scale"))),
            offset=_number(r.get("offset", e.get("raster:offset"))),
            nodata=_number(r.get("nodata", e.get("nodata")))))
    roles = {str(r).lower() for r in fields.get("roles") or ()}
    visual = key.lower().startswith("visual") or ("visual" in roles and not roles & _DATA_ROLES)
    return StacAsset(key=key, href=href, bands=tuple(bands), visual=visual)


def _by_key(asset: StacAsset, wanted: frozenset[str], landsat: bool) -> BandAsset | None:
    if len(asset.bands) > 1 or not band_aliases(asset.key, landsat) & wanted:
        return None
    band = asset.bands[0] if asset.bands else AssetBand(1)
    return BandAsset(asset.key, asset.href, 1, band.scale, band.offset, band.nodata)


def _by_bands(asset: StacAsset, wanted: frozenset[str], landsat: bool) -> BandAsset | None:
    """The asset band that is ``wanted``: by common name where both sides have one (a NAIP
    band named ``b2`` with common name ``green`` is no Sentinel-2 ``B02``), else by name."""
    wanted_common = wanted & _COMMON_NAMES
    for band in asset.bands:
        common = "" if band.common_name in _GENERIC_COMMON else band.common_name
        if common and wanted_common:
            hit = common in wanted_common
        else:
            hit = bool(band.name) and bool(band_aliases(band.name, landsat) & wanted)
        if hit:
            return BandAsset(asset.key, asset.href, band.index, band.scale, band.offset,
                             band.nodata)
    return None


def _match_one(band: str, assets: Sequence[StacAsset], landsat: bool,
               where: str) -> BandAsset | None:
    wanted = band_aliases(band, landsat)
    plain = [a for a in assets if not a.visual]
    visual = [a for a in assets if a.visual]
    for group, rule in ((plain, _by_key), (plain, _by_bands), (visual, _by_key),
                        (visual, _by_bands)):
        hits = [m for m in (rule(a, wanted, landsat) for a in group) if m is not None]
        if len(hits) > 1:
            raise SceneError(
                f"{where}: band {band} matches several assets ({', '.join(h.key for h in hits)}); "
                "keep one of them in the item, or rename the bundle's band")
        if hits:
            return hits[0]
    return None


def match_bands(item: str, assets: Sequence[StacAsset], band_names: Sequence[str],
                landsat: bool = False) -> dict[str, BandAsset]:
    """Each of ``band_names`` (a bundle's, in its order) → the asset it is read from.

    Args:
        item: how to name the item in errors (its id, and where it was read).
        assets: the item's data assets (:func:`parse_asset`).
        band_names: the bands to find.
        landsat: a Landsat item (plain ``Bn`` names follow :data:`LANDSAT_COMMON`).

    Raises:
        SceneError: a band matches no asset (the message names the item, the bands and the
            item's asset keys), or several assets in one tier.
    """
    found: dict[str, BandAsset] = {}
    missing: list[str] = []
    for band in band_names:
        hit = _match_one(band, assets, landsat, item)
        if hit is None:
            missing.append(band)
        else:
            found[band] = hit
    if missing:
        keys = ", ".join(a.key for a in assets) or "none"
        raise SceneError(
            f"{item}: no asset for band(s) {', '.join(missing)} (matched by asset key, "
            f"eo:bands name or common name); its data assets: {keys}; use a bundle with this "
            "item's bands, or an item that has these")
    return found
