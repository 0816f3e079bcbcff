"""Opening a found scene for a model: its bands matched to the model's, nothing read yet."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from geoseg.batch.discover import SceneSource, band_key
from geoseg.batch.stacin import StacItem
from geoseg.batch.stacmatch import BandAsset
from geoseg.errors import SceneError
from geoseg.remote.uri import redact
from geoseg.scene import BandRef, Scene, open_band_files, open_scene

if TYPE_CHECKING:
    from geoseg.remote.gdal_env import CloudOptions

__all__ = ["open_source"]


def open_source(source: SceneSource, band_names: Sequence[str], fill: float | None = 0,
                options: CloudOptions | None = None) -> Scene:
    """The :class:`~geoseg.scene.Scene` of ``source`` for a model needing ``band_names``.

    A raster scene is opened as it is (bands are matched when planning). Files may be URIs
    (object storage, http(s)), opened as written with ``options``
    (:func:`~geoseg.scene.call_remote`; None: the environment's).
    For band files only the model's bands are used, named as the model names them, on the grid
    :func:`~geoseg.scene.open_band_files` chooses (the finest in the CRS most of them share);
    its :attr:`~geoseg.scene.Scene.warnings` name bands that only partly overlap or were
    reprojected. A STAC item is opened from the assets :meth:`SceneSource.band_match` finds:
    single-band assets as band files (resampled per window like them), or the bands of one
    multi-band asset by their index.

    Raises:
        SceneError: unreadable files, band files missing for some of the model's bands, or
            band files that do not overlap; for a STAC item also a band no asset (or several)
            has, and bands from a multi-band asset mixed with other assets.
    """
    if source.kind == "raster":
        return dataclasses.replace(open_scene(source.path, options), name=source.name)
    if source.stac is not None:
        return _open_stac(source.name, source.stac, band_names, fill, options)
    by_key = {band_key(token): path for token, path in source.bands.items()}
    missing = [b for b in band_names if band_key(b) not in by_key]
    if missing:
        have = ", ".join(source.bands) or "none"
        raise SceneError(
            f"{redact(str(source.path))}/{source.original}_*: band file(s) for "
            f"{', '.join(missing)} not found (found {have}); add the missing file(s), named like "
            f"{source.original}_{missing[0]}.tif"
        )
    files = {b: by_key[band_key(b)] for b in band_names}
    return open_band_files(source.name, files, fill, options)


def _open_stac(name: str, item: StacItem, band_names: Sequence[str],
               fill: float | None, options: CloudOptions | None = None) -> Scene:
    """Scene ``name`` of a STAC item: its matched assets' hrefs (strings, remote ones
    verbatim)."""
    match = item.match(band_names)
    try:
        scene = _open_assets(name, match, {a.key: len(a.bands) for a in item.assets}, fill,
                             options)
    except SceneError as exc:
        raise SceneError(f"{item.label}: {exc}") from exc
    return dataclasses.replace(scene, bands=tuple(_with_encoding(b, match[b.name])
                                                  for b in scene.bands))


def _with_encoding(band: BandRef, asset: BandAsset) -> BandRef:
    """``band`` with the encoding its asset declares (``raster:bands`` scale/offset; an
    undeclared half is 1 or 0), which the item knows better than the file; unchanged (the
    file's own) when the asset declares neither."""
    if asset.scale is None and asset.offset is None:
        return band
    scale = 1.0 if asset.scale is None else asset.scale
    offset = 0.0 if asset.offset is None else asset.offset
    return dataclasses.replace(band, encoding=(scale, offset))


def _open_assets(name: str, match: dict[str, BandAsset], sizes: dict[str, int],
                 fill: float | None, options: CloudOptions | None = None) -> Scene:
    """The scene of matched assets: single-band ones as band files, or one multi-band asset
    (``sizes``: asset key → the number of bands the item lists for it)."""
    multi = sorted({m.key for m in match.values() if sizes.get(m.key, 0) > 1})
    if not multi:
        return open_band_files(name, {b: m.href for b, m in match.items()}, fill, options)
    if len({m.key for m in match.values()}) > 1:
        raise SceneError(
            f"bands from multi-band asset(s) {', '.join(multi)} and from other assets "
            f"({', '.join(f'{b}: {m.key}' for b, m in match.items())}) cannot be combined "
            "yet; give an item whose bands are all single-band assets, or all in one asset")
    scene = open_scene(next(iter(match.values())).href, options)
    count = len(scene.bands)
    for band, m in match.items():
        if m.index > count:
            raise SceneError(f"asset {m.key} ({m.href}) lists band {band} as band "
                             f"{m.index} but the file has {count} band(s)")
    bands = tuple(dataclasses.replace(scene.bands[m.index - 1], name=band)
                  for band, m in match.items())
    return dataclasses.replace(scene, name=name, bands=bands)
