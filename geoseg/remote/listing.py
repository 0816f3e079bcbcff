"""Listing objects: a prefix like a directory, and globs, through fsspec (s3fs, gcsfs, adlfs).

fsspec is the file-system layer Dask itself uses (``dask.array.from_zarr``, ``read_parquet``
take the same ``storage_options``), so one credentials convention serves listing, Dask and
writing; see docs/cloud.md. fsspec and its back-ends are imported when a listing is made, never
at ``import geoseg``. Credentials come from the environment (``AWS_*``, ``AWS_ENDPOINT_URL``…)
or ``storage_options``; they never reach the URIs returned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from geoseg.errors import SceneError
from geoseg.remote.uri import is_remote, redact, split

__all__ = ["RASTER_SUFFIXES", "expand", "filesystem", "list_prefix"]

#: Object names taken from a listed prefix (case-insensitive).
RASTER_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".jp2", ".vrt")

_PROTOCOL = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "az", "abfs": "abfs",
             "abfss": "abfs", "http": "http", "https": "https"}
_GLOB = set("*?[")


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The fsspec file system for ``uri``'s scheme (``s3fs.S3FileSystem`` for ``s3://``…).

    For ``s3://`` an ``AWS_ENDPOINT_URL`` in the environment is honoured by botocore itself,
    and ``AWS_NO_SIGN_REQUEST=YES`` (which botocore ignores) becomes ``anon=True``.

    Raises:
        SceneError: the back-end package is not installed (names the pip extra).
    """
    import fsspec

    scheme = split(uri)[0]
    options = dict(storage_options or {})
    if scheme == "s3" and "anon" not in options \
            and os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        options["anon"] = True
    try:
        return fsspec.filesystem(_PROTOCOL[scheme], **options)
    except ImportError as exc:
        raise SceneError(f"{redact(uri)}: listing {scheme}:// needs fsspec's back-end "
                         f"({exc.name or exc}); pip install 'geoseg[cloud]'") from None


def _uri(scheme: str, path: str) -> str:
    return f"{scheme}://{path.lstrip('/')}"


def list_prefix(uri: str, storage_options: Mapping[str, Any] | None = None,
                suffixes: tuple[str, ...] = RASTER_SUFFIXES) -> list[str]:
    """The rasters directly under a prefix (``s3://bucket/scenes/``), as sorted URIs.

    Like a directory listing: not recursive; names not ending in one of ``suffixes``
    (case-insensitive) are left out.

    Raises:
        SceneError: the prefix is missing or empty, or cannot be listed (access, endpoint).
    """
    scheme = split(uri)[0]
    fs = filesystem(uri, storage_options)
    root = uri[len(scheme) + 3:].rstrip("/")
    try:
        entries = fs.ls(root, detail=True, refresh=True)
    except FileNotFoundError:
        raise SceneError(f"{redact(uri)}: no such prefix; check the bucket and the prefix") \
            from None
    except Exception as exc:
        raise SceneError(f"{redact(uri)}: cannot list ({redact(str(exc))[:200]})") from None
    out = sorted(_uri(scheme, e["name"]) for e in entries
                 if e.get("type") == "file" and e["name"].lower().endswith(suffixes))
    if not out:
        raise SceneError(f"{redact(uri)}: no raster ({', '.join(suffixes)}) under this prefix")
    return out


def expand(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """URIs matching a glob (``s3://bucket/**/*.tif``; ``**`` spans folders), sorted.

    A URI without ``*``, ``?`` or ``[`` is returned as is; one ending in ``/`` is listed with
    :func:`list_prefix`.

    Raises:
        SceneError: nothing matches, or the store cannot be listed.
    """
    if not is_remote(uri):
        raise SceneError(f"{redact(uri)}: not a remote URI")
    scheme, _, key = split(uri)
    if uri.endswith("/"):
        return list_prefix(uri, storage_options)
    if not (_GLOB & set(key)):
        return [uri]
    fs = filesystem(uri, storage_options)
    try:
        fs.invalidate_cache()
        found = fs.glob(uri[len(scheme) + 3:])
    except Exception as exc:
        raise SceneError(f"{redact(uri)}: cannot list ({redact(str(exc))[:200]})") from None
    out = sorted(_uri(scheme, p) for p in found)
    if not out:
        raise SceneError(f"{redact(uri)}: no object matches this pattern")
    return out
