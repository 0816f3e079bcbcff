"""STAC documents as inputs: Items, ItemCollections and static Catalogs/Collections, read with
pystac, each item becoming one scene (:class:`StacItem`).

A document is recognised by its content (its JSON ``type``: ``Feature``, ``FeatureCollection``,
``Catalog`` or ``Collection``), never by its file name. A Catalog or Collection is walked to all
its items, each catalog entered once (a link loop ends the walk). Relative asset hrefs resolve
against the item's own location: its ``self`` link, else the document it was read from (an
ItemCollection written by ``stac-client search … --save items.json`` has no self links). Hrefs
are kept as strings, so ``s3://…`` and ``https://…`` reach the scene opener as written.

Local documents are read from disk; ``http(s)://`` documents through pystac's own
:class:`~pystac.StacIO` (the standard library's urllib); documents in object storage
(``s3://``, ``gs://``, ``az://``: a static catalog published next to its scenes) through fsspec
(:func:`geoseg.remote.listing.filesystem`, with the run's storage options), child links too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.batch.discover import SceneSource, readable
from geoseg.batch.stacmatch import BandAsset, StacAsset, is_data_asset, match_bands, parse_asset
from geoseg.errors import ConfigError

if TYPE_CHECKING:
    import pystac

__all__ = ["STAC_TYPES", "StacItem", "has_scheme", "is_stac_url", "read_stac", "stac_scenes",
           "stac_type"]

log = logging.getLogger(__name__)

#: The JSON ``type`` values of the STAC documents geoseg takes as inputs.
STAC_TYPES = frozenset({"Feature", "FeatureCollection", "Catalog", "Collection"})
#: Largest local JSON file inspected for STAC content, bytes.
MAX_JSON_BYTES = 512 * 1024 * 1024
_HTTP = ("http://", "https://")
#: Suffixes of an http(s) URL read as a raster rather than a STAC document.
_RASTERS = (".tif", ".tiff", ".jp2", ".vrt")


def has_scheme(href: str) -> bool:
    """True for an href written as a URI (``scheme://…``: s3, gs, az, http(s), but also
    ``file://`` and schemes geoseg cannot read), which is never joined to a document's folder;
    False for a path. Unlike :func:`geoseg.remote.uri.is_remote` (a scheme geoseg reads from a
    store), this decides how an href is resolved, not where it is read from."""
    head, sep, _ = href.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").isalnum() and len(head) > 1


@dataclass(frozen=True)
class StacItem:
    """One STAC item, as a scene source.

    Attributes:
        id: the item's id as written (the scene name is made from it).
        document: the STAC document it was found in (local path or URL), for messages.
        assets: its data assets (:func:`~geoseg.batch.stacmatch.is_data_asset`), hrefs absolute.
        landsat: a Landsat item (from ``platform``/``constellation``/``collection``), whose plain
            ``Bn`` names follow the Landsat common-name table.
    """

    id: str
    document: str
    assets: tuple[StacAsset, ...]
    landsat: bool = False

    @property
    def label(self) -> str:
        """How errors name the item: ``STAC item 'ID' (DOCUMENT)``, control characters
        escaped (:func:`~geoseg.batch.discover.readable`)."""
        return f"STAC item '{readable(self.id)}' ({readable(self.document)})"

    def match(self, band_names: Sequence[str]) -> dict[str, BandAsset]:
        """Each of ``band_names`` → its asset (:func:`~geoseg.batch.stacmatch.match_bands`).

        Raises:
            SceneError: a band with no asset, or with several.
        """
        return match_bands(self.label, self.assets, band_names, self.landsat)

    @property
    def files(self) -> tuple[Path | str, ...]:
        """The data assets a resume fingerprint describes: those that are existing local files
        (as paths) and every one in object storage or on http(s) (its URI as written; the
        store is asked about it, :func:`geoseg.batch.state.fingerprint`)."""
        from geoseg.remote.uri import is_remote as in_store

        return tuple(a.href if in_store(a.href) else Path(a.href) for a in self.assets
                     if in_store(a.href) or (not has_scheme(a.href) and os.path.isfile(a.href)))


def is_stac_url(text: str) -> bool:
    """True for a URI read as a STAC document: an http(s) URL that names no raster (its path
    does not end in ``.tif``/``.tiff``/``.jp2``), or any URI ending in ``.json``; False for a
    local path or a URI naming rasters (an object, a prefix or a glob in object storage)."""
    if not has_scheme(text):
        return False
    from geoseg.remote.uri import name

    leaf = name(text).lower()
    if leaf.endswith(".json"):
        return True
    return text.lower().startswith(_HTTP) and not leaf.endswith(_RASTERS) \
        and not set(leaf) & set("*?[")


def stac_type(path: Path) -> str | None:
    """The STAC ``type`` of local JSON file ``path``, or None when it is no STAC document (not
    JSON, too large, or another ``type``). Reads at most :data:`MAX_JSON_BYTES`."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None
        with path.open("rb") as f:
            head = f.read(64).lstrip()
            if not head.startswith(b"{"):
                return None
            f.seek(0)
            data = json.load(f)
    except (OSError, ValueError):
        return None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) and kind in STAC_TYPES else None


def _absolute(href: str) -> str:
    """A local document's absolute POSIX path, or a URL as it is."""
    return href if has_scheme(href) else os.path.abspath(href)


def _stac_io(storage_options: Mapping[str, Any] | None) -> pystac.StacIO:
    """pystac's reader, which also reads documents in object storage through fsspec."""
    from pystac.stac_io import DefaultStacIO

    class StoreStacIO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if has_scheme(href) and not href.lower().startswith(_HTTP):
                from geoseg.remote.listing import filesystem
                from geoseg.remote.uri import redact

                try:
                    data: bytes = filesystem(href, storage_options).cat_file(href)
                except FileNotFoundError:
                    raise OSError("no such object") from None
                except Exception as exc:  # noqa: BLE001 - botocore's and others' own errors
                    # one line, credentials redacted: _read_json names the document
                    raise OSError(redact(f"{type(exc).__name__}: {exc}")[:200]) from None
                return data.decode("utf-8")
            return super().read_text_from_href(href)  # type: ignore[no-any-return]

    return StoreStacIO()


def _read_json(href: str, stac_io: pystac.StacIO) -> dict[str, Any]:
    try:
        data = stac_io.read_json(href)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{href}: cannot read this STAC document ({exc})") from exc
    if not isinstance(data, dict) or data.get("type") not in STAC_TYPES:
        raise ConfigError(f"{href}: not a STAC Item, ItemCollection, Catalog or Collection "
                          f"(JSON type {data.get('type') if isinstance(data, dict) else None!r})")
    return data


def _items(href: str, data: dict[str, Any],
           stac_io: pystac.StacIO) -> list[tuple[pystac.Item, str]]:
    """The document's items, each with the href its relative asset hrefs resolve against."""
    import pystac

    kind = data["type"]
    if kind == "Feature":
        item = pystac.Item.from_dict(data, href=href, migrate=True, preserve_dict=False)
        return [(item, item.get_self_href() or href)]
    if kind == "FeatureCollection":
        collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
        return [(item, item.get_self_href() or href) for item in collection]
    root = pystac.read_file(href, stac_io=stac_io)
    if not isinstance(root, pystac.Catalog):
        raise ConfigError(f"{href}: a STAC {kind} that pystac did not read as one")
    items = [(item, item.get_self_href() or href) for item in _walk(root)]
    if not items:
        log.warning("%s: a STAC %s without item links, so no scenes (an API collection? "
                    "search it, e.g. `stac-client search … --save items.json`, and give that "
                    "file)", href, kind)
    return items


def _walk(root: pystac.Catalog) -> Iterator[pystac.Item]:
    """The items of ``root`` and of its children, depth first in link order (as pystac's
    ``get_items(recursive=True)``), entering each catalog (by its href) once: a child link
    back to an ancestor ends there instead of recursing for ever."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        catalog = stack.pop()
        key = catalog.get_self_href() or str(id(catalog))
        if key in seen:
            continue
        seen.add(key)
        yield from catalog.get_items()
        stack.extend(reversed(list(catalog.get_children())))


def _landsat(item: pystac.Item) -> bool:
    props = item.properties
    text = " ".join(str(v) for v in (props.get("platform"), props.get("constellation"),
                                     item.collection_id) if v)
    return "landsat" in text.lower()


def _file_path(href: str) -> str:
    """A ``file://`` URL as the local path it names (percent-decoded); any other href as it
    is."""
    if not href.lower().startswith("file://"):
        return href
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(href).path)


def _stac_item(item: pystac.Item, base: str, document: str) -> StacItem:
    from pystac.utils import make_absolute_href

    assets = []
    for key, asset in item.assets.items():
        fields = asset.to_dict()
        if not is_data_asset(key, fields):
            continue
        href = asset.href if has_scheme(asset.href) else make_absolute_href(asset.href, base)
        assets.append(parse_asset(key, fields, _file_path(href)))
    return StacItem(id=item.id, document=document, assets=tuple(assets), landsat=_landsat(item))


def read_stac(location: str | os.PathLike[str],
              storage_options: Mapping[str, Any] | None = None) -> list[StacItem]:
    """The items of the STAC document at ``location`` (local path, http(s) URL, or object in a
    store read with ``storage_options``), in document order (a Catalog's in pystac's walk
    order).

    Raises:
        ConfigError: the document cannot be read, is no STAC document, or a Catalog's child or
            item link is broken (the message names the document and pystac's reason).
    """
    import pystac

    text = os.fspath(location)
    href = _absolute(text)
    stac_io = _stac_io(storage_options)
    data = _read_json(href, stac_io)
    try:
        items = _items(href, data, stac_io)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, pystac.STACError) as exc:
        raise ConfigError(f"{text}: not a readable STAC {data.get('type')} ({exc}); check it "
                          "with `stac validate` or pystac") from exc
    return [_stac_item(item, base, text) for item, base in items]


def stac_scenes(
    documents: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> list[tuple[str, str, str, SceneSource]]:
    """One scene per item of the STAC ``documents`` (local paths or URLs; objects in a store
    read with ``storage_options``), as ``(sort key, id, base name, source)``; an item reached
    twice (same id, same assets) once."""
    found = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for doc in dict.fromkeys(documents):
        for i, item in enumerate(read_stac(doc, storage_options)):
            key = (item.id, tuple(sorted(a.href for a in item.assets)))
            if key in seen:
                continue
            seen.add(key)
            where = doc if has_scheme(doc) else os.path.realpath(doc)
            path: Path | str = doc if has_scheme(doc) else Path(doc)
            found.append((f"{where}\0{i:09d}", item.id, item.id,
                          SceneSource(item.id, path, "stac", original=readable(item.id),
                                      stac=item)))
    return found
