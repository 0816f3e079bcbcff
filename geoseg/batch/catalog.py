"""The run's STAC Catalog: ``catalog.json`` at the output root, linking every finished scene's
Item (``<scene>/stac.json``).

A Catalog rather than a Collection: a Collection needs the run's extent (the union of the
Items' bboxes and datetimes), which the report entries do not hold; computing it would read
every Item again after every scene (or keep a cache that a split job, writing the same
catalog, could not share). A Catalog is complete from the report entries alone, and Items keep
no ``collection`` field that would have to change with it.

Two layouts, told apart by the output root as given:

- a local folder (a path): a *self-contained* catalog, every link relative (``./<scene>/
  stac.json``, ``../catalog.json``), so the folder can be moved, copied or served as a whole;
  no ``self`` links (a reader knows where it opened the file);
- an object-store prefix (a URI string such as ``s3://bucket/maps/``): an *absolute published*
  catalog, every link an absolute URI under that prefix, ``self`` included.

A URI is only recognised in a ``str``: ``Path("s3://b/k")`` has already lost a ``/`` and is
refused. Only scenes that finished (``ok`` or ``skipped``) and have an Item are linked; a
failed or pending scene never is. The functions here are pure, except :func:`write_catalog`,
which writes the local file (atomically) and leaves the upload of a remote one to its caller.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CATALOG_JSON",
    "FINISHED",
    "catalog_dict",
    "catalog_json",
    "item_links",
    "linked_entries",
    "root_uri",
    "with_item_links",
    "write_catalog",
]

#: The catalog's file name, at the output root.
CATALOG_JSON = "catalog.json"
#: Statuses of the scenes the catalog links (their Item is final).
FINISHED = ("ok", "skipped")
STAC_VERSION = "1.1.0"
_JSON = "application/json"
_GEOJSON = "application/geo+json"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: A URI that went through ``pathlib.Path``: ``s3://b/k`` → ``s3:/b/k``.
_COLLAPSED = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")


def root_uri(out: str | os.PathLike[str]) -> str | None:
    """The output root as a URI prefix ending in ``/`` when ``out`` is a URI string
    (``s3://bucket/maps`` → ``s3://bucket/maps/``; any ``scheme://``); None when it is a local
    folder (a path, or a string without a scheme).

    Raises:
        ValueError: ``out`` is a URI that went through ``pathlib.Path`` (``s3:/bucket``), or a
            URI with nothing after the scheme.
    """
    if isinstance(out, str) and _SCHEME.match(out):
        if not out.split("://", 1)[1].strip("/"):
            raise ValueError(f"output root {out!r}: give a bucket or host after the scheme "
                             "(e.g. s3://bucket/maps/)")
        return out if out.endswith("/") else out + "/"
    text = os.fspath(out)
    if _COLLAPSED.match(text):  # a scheme of 2+ letters: not a drive letter (C:/…)
        raise ValueError(f"output root {text!r} looks like a URI that lost a '/' in "
                         "pathlib.Path: pass the URI as a string (e.g. 's3://bucket/maps/')")
    return None


def _name_ok(segment: str) -> bool:
    """True for a path segment made of letters, digits and marks of any script, ``-``, ``_``
    and inner ``.`` (what :func:`~geoseg.batch.discover.safe_name` and geoseg's output file
    names are made of): safe in a relative href and an object key without escaping."""
    return (segment not in ("", ".", "..") and not segment.startswith(".")
            and all(ch in "-_." or unicodedata.category(ch)[0] in "LNM" for ch in segment))


def _item_path(entry: Mapping[str, Any]) -> str | None:
    """The Item of a finished report entry, relative to the output root (``<scene>/stac.json``),
    or None when the scene is not finished or has no Item (``run.stac: false``).

    Raises:
        ValueError: the entry's scene name or Item path is not one geoseg writes, or the
            path is relative to the scene folder (an entry not from the report).
    """
    if entry.get("status") not in FINISHED:
        return None
    rel = (entry.get("outputs") or {}).get("stac")
    if rel is None:
        return None
    scene = str(entry.get("scene", ""))
    parts = str(rel).split("/")
    if not _name_ok(scene) or len(parts) < 2 or parts[0] != scene \
            or not all(_name_ok(p) for p in parts):
        raise ValueError(
            f"scene {scene!r}: its Item path {rel!r} is not <scene>/<file> made of safe names; "
            "give report entries (build_report's 'scenes', outputs relative to the output "
            "root)")
    return str(rel)


def linked_entries(entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(scene, item path relative to the output root)`` of each entry the catalog links, in
    the entries' order: finished (``ok``/``skipped``) scenes with an Item, each once."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in entries:
        rel = _item_path(entry)
        if rel is not None and rel not in seen:
            seen.add(rel)
            out.append((str(entry["scene"]), rel))
    return out


def _describe(header: Mapping[str, Any] | None) -> tuple[str, str]:
    """Title and description of the catalog, from the report header (geoseg version, bundle)."""
    from geoseg.batch.discover import readable

    header = header or {}
    bundle = header.get("bundle") or {}
    model = readable(str(bundle.get("file") or "a geoseg model"))
    version = readable(str(header.get("geoseg_version") or "")).strip()
    made = f"geoseg {version}" if version else "geoseg"
    return (f"geoseg run: {model}",
            f"Land-cover masks made by {made} with the model {model}: one STAC Item per "
            "finished scene (mask COG, polygons, quick-looks).")


def catalog_dict(
    entries: Iterable[Mapping[str, Any]],
    root: str | None = None,
    *,
    header: Mapping[str, Any] | None = None,
    catalog_id: str = "geoseg-run",
) -> dict[str, Any]:
    """The run's STAC Catalog (a STAC 1.1.0 ``Catalog`` dict).

    Args:
        entries: the report's scene entries (``build_report(...)["scenes"]``: ``status``,
            ``scene`` and ``outputs`` with paths relative to the output root).
        root: :func:`root_uri` of the output root: None for a local folder (relative links),
            else the URI prefix ending in ``/`` (absolute links, ``self`` included).
        header: the report header (``geoseg_version``, ``bundle.file``) for title and text.
        catalog_id: the catalog's id.

    Raises:
        ValueError: an entry's scene or Item path is not one geoseg writes.
    """
    base = "./" if root is None else root
    title, description = _describe(header)
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": base + CATALOG_JSON, "type": _JSON, "title": title}]
    if root is not None:
        links.append({"rel": "self", "href": root + CATALOG_JSON, "type": _JSON})
    links += [{"rel": "item", "href": base + rel, "type": _GEOJSON, "title": scene}
              for scene, rel in linked_entries(entries)]
    return {"type": "Catalog", "stac_version": STAC_VERSION, "id": catalog_id,
            "title": title, "description": description, "links": links}


def item_links(scene: str, root: str | None = None, item_file: str = "stac.json"
               ) -> list[dict[str, Any]]:
    """The links an Item at ``<scene>/<item_file>`` needs to belong to the run's catalog:
    ``root`` and ``parent`` (both the catalog), plus ``self`` when the output is remote.

    No ``collection`` link: the run is a Catalog, not a Collection.

    Raises:
        ValueError: ``scene`` or ``item_file`` is not a safe name.
    """
    if not (_name_ok(scene) and _name_ok(item_file)):
        raise ValueError(f"scene {scene!r} / Item {item_file!r}: not a safe name")
    cat = "../" + CATALOG_JSON if root is None else root + CATALOG_JSON
    links = [{"rel": "root", "href": cat, "type": _JSON},
             {"rel": "parent", "href": cat, "type": _JSON}]
    if root is not None:
        links.insert(0, {"rel": "self", "href": f"{root}{scene}/{item_file}", "type": _GEOJSON})
    return links


def with_item_links(item: Mapping[str, Any], scene: str, root: str | None = None,
                    item_file: str = "stac.json") -> dict[str, Any]:
    """A copy of the Item dict ``item`` whose ``self``/``root``/``parent`` links are
    :func:`item_links`'s (any it had are replaced; other links are kept)."""
    ours = item_links(scene, root, item_file)
    rels = {link["rel"] for link in ours} | {"self"}
    kept = [link for link in item.get("links", []) if link.get("rel") not in rels]
    return {**item, "links": ours + kept}


def catalog_json(catalog: Mapping[str, Any]) -> bytes:
    """``catalog`` as the bytes of ``catalog.json`` (indented UTF-8 JSON, final newline)."""
    import json

    return (json.dumps(catalog, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_catalog(
    out: str | os.PathLike[str],
    entries: Iterable[Mapping[str, Any]],
    *,
    header: Mapping[str, Any] | None = None,
    catalog_id: str = "geoseg-run",
) -> bytes:
    """Build the run's catalog for the output root ``out`` and, when it is a local folder,
    write ``out/catalog.json`` atomically (a temporary file in that folder, then
    ``os.replace``). Returns the file's bytes: for a remote root (a URI string) nothing is
    written, and the caller uploads them as ``<root>catalog.json``.

    Args:
        out: the output root: a local folder (str or path), or a URI string
            (``s3://bucket/maps/``; never through ``pathlib.Path``).
        entries, header, catalog_id: as :func:`catalog_dict`.

    Raises:
        ValueError: a bad root or entry (see :func:`root_uri`, :func:`catalog_dict`).
        OSError: the local file cannot be written.
    """
    from geoseg.batch.state import atomic_write_text

    root = root_uri(out)
    data = catalog_json(catalog_dict(entries, root, header=header, catalog_id=catalog_id))
    if root is None:
        atomic_write_text(Path(out) / CATALOG_JSON, data.decode("utf-8"))
    return data
