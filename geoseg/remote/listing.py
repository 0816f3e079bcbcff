"""Listing objects: a prefix like a directory, and globs, through fsspec (s3fs, gcsfs, adlfs).

fsspec is the file-system layer Dask itself uses (``dask.array.from_zarr``, ``read_parquet``
take the same ``storage_options``), so one credentials convention serves listing, Dask and
writing; see docs/cloud.md. fsspec and its back-ends are imported when a listing is made, never
at ``import geoseg``. Credentials come from the environment (``AWS_*``, ``AWS_ENDPOINT_URL``…)
or ``storage_options``; they never reach the URIs returned.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from typing import Any

from geoseg.errors import SceneError
from geoseg.remote.gdal_env import gcs_emulator_host
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
    and ``AWS_NO_SIGN_REQUEST=YES`` (which botocore ignores) becomes ``anon=True``. For
    ``gs://`` gcsfs honours ``STORAGE_EMULATOR_HOST`` itself; with it (an emulator) or with
    ``GS_NO_SIGN_REQUEST=YES`` (a public bucket) requests go unauthenticated (``token="anon"``),
    as GDAL's do (:func:`~geoseg.remote.gdal_env.emulator_options`), instead of gcsfs searching
    for credentials (the metadata server of a cloud VM among them). ``az://`` and ``abfs://``:
    adlfs reads ``AZURE_STORAGE_CONNECTION_STRING`` (or ``AZURE_STORAGE_ACCOUNT`` and a key or
    SAS token) itself.

    One file system is kept per scheme, options and store environment (a digest of the
    ``AWS_*``/``GOOGLE_*``/``AZURE_*`` variables: after a change of endpoint or keys a new one is
    made); ``storage_options={"skip_instance_cache": True}`` makes a fresh one, kept nowhere.

    Raises:
        SceneError: the back-end package is not installed (names the pip extra).
    """
    import fsspec

    scheme = split(uri)[0]
    options = dict(storage_options or {})
    if scheme == "s3" and "anon" not in options \
            and os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        options["anon"] = True
    unsigned = os.environ.get("GS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1")
    if _PROTOCOL[scheme] == "gcs" and "token" not in options and (gcs_emulator_host() or unsigned):
        options["token"] = "anon"  # an emulator, a public bucket: unauthenticated, as GDAL
    if options.pop("skip_instance_cache", False):
        key = None
    else:
        given = hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()
        key = (_PROTOCOL[scheme], given, _environment_digest())
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
    try:
        if _PROTOCOL[scheme] == "gcs" and gcs_emulator_host():
            # gcsfs ≥ 2025.10's default class first asks Google's gRPC Storage Control API for
            # the bucket's type, which emulators lack: 60 s of timeouts per call (seen with
            # gcp-storage-emulator). The JSON-API class is what an emulator serves.
            from gcsfs.core import GCSFileSystem

            fs = GCSFileSystem(skip_instance_cache=True, **options)
        else:
            fs = fsspec.filesystem(_PROTOCOL[scheme], skip_instance_cache=True, **options)
    except ImportError as exc:
        raise SceneError(f"{redact(uri)}: listing {scheme}:// needs fsspec's back-end "
                         f"({exc.name or exc}); pip install 'geoseg[cloud]'") from None
    if key is not None:
        with _LOCK:
            fs = _CACHE.setdefault(key, fs)
    return fs


#: File systems made by :func:`filesystem`, by protocol, options digest and environment digest.
_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()
#: Environment variables a store client reads its endpoint and credentials from.
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "GS_", "AZURE_", "FSSPEC_", "STORAGE_EMULATOR_HOST")


def _environment_digest() -> str:
    """SHA-256 of the store-related environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``…): a
    file system is reused only while the endpoint and credentials it was made with are the
    environment's (fsspec's own instance cache ignores the environment, so a process whose
    ``AWS_ENDPOINT_URL`` or keys changed kept talking to the old store). Only the digest is
    kept, never the values."""
    items = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    return hashlib.sha256(repr(items).encode()).hexdigest()


def _uri(scheme: str, path: str, netloc: str = "") -> str:
    """The URI of fsspec's ``path`` (``bucket/key``) in ``scheme``; ``netloc`` (the listed URI's
    ``container@account.dfs.core.windows.net`` of ``abfs://``) replaces the bucket it names,
    so listed objects keep the account the user wrote."""
    path = path.lstrip("/")
    bucket, sep, rest = path.partition("/")
    if netloc and netloc.split("@", 1)[0] == bucket:
        path = netloc + sep + rest
    return f"{scheme}://{path}"


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
    netloc = root.split("/", 1)[0]
    out = sorted(_uri(scheme, e["name"], netloc) for e in entries
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
    netloc = uri[len(scheme) + 3:].split("/", 1)[0]
    out = sorted(_uri(scheme, p, netloc) for p in found)
    if not out:
        raise SceneError(f"{redact(uri)}: no object matches this pattern")
    return out
