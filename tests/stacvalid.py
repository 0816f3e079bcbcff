"""Offline STAC validation for tests: pystac's own validator, every schema served from disk.

:func:`validate` checks a STAC Item, Catalog or Collection dict against the STAC 1.1.0 core
schema (shipped with pystac) and against each extension it declares in ``stac_extensions``
(vendored under ``tests/stac_schemas/``, see its README). No schema is ever fetched: a URI that
is not on disk raises :class:`SchemaNotVendored`, naming it and where to put it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pystac.utils import make_absolute_href
from pystac.validation import JsonSchemaSTACValidator, validate_dict

__all__ = ["SCHEMAS", "OfflineValidator", "SchemaNotVendored", "validate", "validate_tree",
           "vendored"]

#: The folder of vendored extension schemas: ``<extension>/<version>/schema.json``.
SCHEMAS = Path(__file__).parent / "stac_schemas"
_PREFIX = "https://stac-extensions.github.io/"


class SchemaNotVendored(LookupError):
    """A STAC document refers to a schema that is neither vendored nor shipped by pystac."""


def vendored() -> dict[str, dict[str, Any]]:
    """Schema URI (as written in ``stac_extensions``) → schema, for every vendored file."""
    out = {}
    for path in sorted(SCHEMAS.glob("*/*/schema.json")):
        uri = _PREFIX + path.relative_to(SCHEMAS).as_posix()
        out[uri] = json.loads(path.read_text(encoding="utf-8"))
    return out


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator whose schema lookup never leaves the disk."""

    def __init__(self) -> None:
        super().__init__()
        self.schema_cache.update(vendored())

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        key = schema_uri.rstrip("#")
        if key not in self.schema_cache:
            where = (f"tests/stac_schemas/{key[len(_PREFIX):]}" if key.startswith(_PREFIX)
                     else "tests/stac_schemas/ (and tests/stacvalid.py)")
            raise SchemaNotVendored(
                f"schema {schema_uri} is not vendored and tests never fetch schemas: save the "
                f"published file as {where} and name its source in tests/stac_schemas/README.md")
        return self.schema_cache[key]


def validate(stac: dict[str, Any], href: str | None = None) -> list[str]:
    """Validate ``stac`` (an Item, Catalog or Collection dict) offline; return the schema URIs
    it was checked against (core first, then each extension).

    Raises:
        pystac.errors.STACValidationError: the document breaks a schema (the message names it).
        SchemaNotVendored: a schema it declares is not on disk.
    """
    return [str(u) for u in validate_dict(stac, href=href, validator=OfflineValidator())]


def _read_local(href: str) -> bytes:
    return Path(href).read_bytes()


def validate_tree(href: str, read: Callable[[str], bytes] = _read_local) -> dict[str, str]:
    """Validate the catalog (or collection) at ``href`` and everything it links (``child``
    and ``item`` links, recursively), offline; return each object's href → its ``type``.

    Args:
        href: where the catalog is: a local path, or a URI read by ``read``.
        read: href → the document's bytes (default: a local file; for an object store, e.g.
            an fsspec filesystem's ``cat``). Relative links resolve against their document.

    Raises:
        pystac.errors.STACValidationError, SchemaNotVendored: as :func:`validate`.
        ValueError: a link leads back to a document already seen (a cycle).
    """
    seen: dict[str, str] = {}
    todo = [href]
    while todo:
        where = todo.pop(0)
        if where in seen:
            raise ValueError(f"{where}: linked twice (a cycle, or an item listed twice)")
        doc = json.loads(read(where))
        validate(doc, href=where)
        seen[where] = str(doc.get("type"))
        todo += [make_absolute_href(link["href"], where) for link in doc.get("links", [])
                 if link.get("rel") in ("child", "item")]
    return seen
