"""GDAL configuration for reading scenes from object storage, and where credentials come from.

Workers enter :func:`cloud_env` around their reads (``with cloud_env(): rasterio.open(...)``).

**The secrets rule.** Credentials come from the standard environment of the process that reads
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``): GDAL and boto3 read them there
themselves, and this module never copies them. Dask workers therefore get them from *their own*
environment (Kubernetes: a Secret through ``envFrom``; Slurm: inherited from the job), never
from the client: a secret is never put into a Dask task graph, a record or a log. Only
:meth:`CloudOptions.public` (no secrets) may travel in a task. A ``storage_options`` mapping (the
fsspec/Dask convention: ``key``, ``secret``, ``token``, ``endpoint_url``, ``anon``…) may carry
secrets for the process that builds it; they stay in a field that ``repr``/``str`` redact.

**The options** (:func:`cloud_options`), each justified; measured ones name the test:

=====================================  ==========  ============================================
option                                 value       why
=====================================  ==========  ============================================
GDAL_DISABLE_READDIR_ON_OPEN           EMPTY_DIR   no LIST of the object's prefix on open
                                                   (a prefix of 10^5 scenes costs seconds and
                                                   many requests); no sidecar probing. Measured:
                                                   no listing request in the server's log,
                                                   1+ with FALSE (``test_options_measured``)
CPL_VSIL_CURL_ALLOWED_EXTENSIONS       .tif,…      only raster files are opened through curl:
                                                   no ``.aux.xml``/``.ovr``/``.msk`` probes (404
                                                   round trips). Objects without an extension
                                                   (some STAC hrefs) need ``allowed_extensions=
                                                   None``
GDAL_HTTP_MAX_RETRY                    3           GDAL retries 429/5xx range requests itself
GDAL_HTTP_RETRY_DELAY                  0.5 s       (default: never), backing off from this delay
                                                   (GDAL's default, 30 s, would stall a block);
                                                   a flaky store costs a block seconds, not a
                                                   failed scene. Measured: 503 on every 3rd
                                                   request, identical arrays
                                                   (``test_fault_proxy_gdal_retries``)
GDAL_HTTP_RETRY_CODES (GDAL ≥ 3.10)    429,500,…   the transient codes, stated, not implied
GDAL_HTTP_MERGE_CONSECUTIVE_RANGES     YES         adjacent ranges in one request where a driver
                                                   asks for several. Measured: no effect on COG
                                                   windows (GTiff merges adjacent tiles itself:
                                                   1 request for a row of 4 tiles either way);
                                                   kept for other drivers
GDAL_HTTP_MULTIRANGE                   SERIAL      runs of tiles fetched one range request
                                                   after another (S3 has no multi-range GET),
                                                   through /vsicurl's region cache. Measured,
                                                   2 x 2 tiles: 2 requests; SINGLE_GET: 17
                                                   requests and 8 x the bytes
                                                   (``test_options_measured``). YES (parallel)
                                                   bypasses that cache: a whole run refetched
                                                   the tiles neighbouring blocks' halos share,
                                                   2.1 x the bytes needed against 1.11 x with
                                                   SERIAL (``tests/test_remote_faults.py``)
VSI_CACHE / VSI_CACHE_SIZE             TRUE; 25MB  per open file: the header and the tile index
                                                   are fetched once per dataset, not per window
GDAL_CACHEMAX                          256 (MB)    decoded-block cache per worker process; GDAL's
                                                   default (5 % of RAM) times many workers
                                                   overcommits a node
GDAL_HTTP_TIMEOUT                      60 s        a stalled connection fails and is retried
GDAL_HTTP_CONNECTTIMEOUT               10 s        an unreachable endpoint fails fast
CPL_VSIL_CURL_CHUNK_SIZE               16384       GDAL's default, stated: every request is
                                                   rounded up to it; larger chunks over-fetch
                                                   small tiles. Measured: bytes fetched for a
                                                   window ≤ 1.3 × its tiles' compressed bytes
                                                   (``test_bytes_fetched_bounded``)
GDAL_INGESTED_BYTES_AT_OPEN            32768       a COG header and its tile index in one
                                                   request at open
=====================================  ==========  ============================================

S3-compatible stores: ``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in ``storage_options``) such as
``http://127.0.0.1:9000`` becomes GDAL's ``AWS_S3_ENDPOINT=127.0.0.1:9000``, ``AWS_HTTPS=NO``
and ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style requests).

GCS emulators: ``STORAGE_EMULATOR_HOST`` (the variable of Google's own client libraries and of
gcsfs, ``http://127.0.0.1:9023`` or ``127.0.0.1:9023``) becomes GDAL's
``CPL_GS_ENDPOINT=http://127.0.0.1:9023/`` and ``GS_NO_SIGN_REQUEST=YES`` (Google's libraries
talk to an emulator unauthenticated; :func:`geoseg.remote.listing.filesystem` gives gcsfs
``token="anon"`` likewise). Azure: GDAL and adlfs read ``AZURE_STORAGE_CONNECTION_STRING`` (its
``BlobEndpoint`` names Azurite or Azure Stack) or ``AZURE_STORAGE_ACCOUNT`` with a key or SAS
token from the environment themselves; nothing is mapped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from geoseg.errors import ConfigError
from geoseg.remote.uri import REDACTED, redact

__all__ = [
    "ALLOWED_EXTENSIONS",
    "CloudOptions",
    "base_options",
    "clear_cache",
    "cloud_env",
    "cloud_options",
    "emulator_options",
    "endpoint_options",
    "gcs_emulator_host",
    "gdal_version",
]

#: File extensions GDAL's curl-based file systems may open (CPL_VSIL_CURL_ALLOWED_EXTENSIONS).
ALLOWED_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".TIF", ".TIFF", ".jp2", ".JP2",
                                       ".vrt", ".VRT")

#: HTTP statuses GDAL retries (GDAL_HTTP_RETRY_CODES, GDAL ≥ 3.10).
RETRY_CODES = "429,500,502,503,504"

#: Environment variables that may hold a secret (never copied, never printed).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCESS_KEY",
              "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")

#: storage_options keys that are secrets.
_SECRET_KEYS = ("secret", "token", "session_token", "account_key", "sas_token",
                "connection_string", "password")
#: storage_options keys understood (fsspec's s3fs/gcsfs/adlfs spellings).
_KNOWN_KEYS = ("key", "secret", "token", "session_token", "endpoint_url", "anon", "region",
               "region_name", "profile", "requester_pays", "account_name", "account_key",
               "sas_token", "connection_string", "client_kwargs", "project")


def gdal_version() -> tuple[int, int, int]:
    """The version of the GDAL inside rasterio, as ``(major, minor, patch)``."""
    import rasterio

    parts = [int("".join(c for c in p if c.isdigit()) or 0)
             for p in rasterio.__gdal_version__.split(".")[:3]]
    return (parts + [0, 0, 0])[0], (parts + [0, 0])[1], (parts + [0])[2]


def base_options(
    *,
    max_retry: int = 3,
    retry_delay_s: float = 0.5,
    timeout_s: int = 60,
    connect_timeout_s: int = 10,
    allowed_extensions: tuple[str, ...] | None = ALLOWED_EXTENSIONS,
    cache_max_mb: int = 256,
    gdal: tuple[int, int, int] | None = None,
) -> dict[str, str]:
    """The GDAL options of the module table, as strings; no credentials.

    Args:
        max_retry: GDAL's own retries of a failed HTTP request (429, 5xx).
        retry_delay_s: seconds before GDAL's first retry (doubles each time).
        timeout_s, connect_timeout_s: per request, seconds.
        allowed_extensions: None to let curl open objects with any name.
        cache_max_mb: GDAL's decoded-block cache, MB per process.
        gdal: the GDAL version to target (default: rasterio's).
    """
    opts = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MAX_RETRY": str(max_retry),
        "GDAL_HTTP_RETRY_DELAY": f"{retry_delay_s:g}",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIRANGE": "SERIAL",
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(25 * 1024 * 1024),
        "GDAL_CACHEMAX": str(cache_max_mb),
        "GDAL_HTTP_TIMEOUT": str(timeout_s),
        "GDAL_HTTP_CONNECTTIMEOUT": str(connect_timeout_s),
        "CPL_VSIL_CURL_CHUNK_SIZE": "16384",
        "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    }
    if allowed_extensions:
        opts["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = ",".join(allowed_extensions)
    if (gdal or gdal_version()) >= (3, 10, 0):
        opts["GDAL_HTTP_RETRY_CODES"] = RETRY_CODES
    return opts


def endpoint_options(endpoint_url: str) -> dict[str, str]:
    """GDAL's options for an S3-compatible endpoint given as a URL (``AWS_ENDPOINT_URL``).

    ``http://127.0.0.1:9000`` → ``AWS_S3_ENDPOINT=127.0.0.1:9000``, ``AWS_HTTPS=NO``,
    ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style: the bucket in the path, as MinIO/Ceph/moto want).

    Raises:
        ConfigError: not an ``http(s)://host[:port]`` URL.
    """
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint URL {redact(endpoint_url)!r}: expected http(s)://host[:port], "
                          "e.g. http://127.0.0.1:9000")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:  # IPv6 literal
        host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    opts = {"AWS_S3_ENDPOINT": host + parts.path.rstrip("/"),
            "AWS_HTTPS": "YES" if parts.scheme == "https" else "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE"}
    return opts


def gcs_emulator_host(environ: Mapping[str, str] | None = None) -> str:
    """The GCS emulator ``STORAGE_EMULATOR_HOST`` names in ``environ`` (default
    ``os.environ``), as written; ``""`` when it names none (unset, empty, or gcsfs's
    ``default``)."""
    host = (os.environ if environ is None else environ).get("STORAGE_EMULATOR_HOST", "")
    return "" if host == "default" else host


def emulator_options(host: str) -> dict[str, str]:
    """GDAL's options for a GCS emulator named as ``STORAGE_EMULATOR_HOST`` names it.

    ``127.0.0.1:9023`` or ``http://127.0.0.1:9023`` → ``CPL_GS_ENDPOINT=http://127.0.0.1:9023/``
    (GDAL appends ``bucket/key``: the trailing ``/`` is needed) and ``GS_NO_SIGN_REQUEST=YES``.

    Raises:
        ConfigError: not ``[http(s)://]host[:port]``.
    """
    url = host if "://" in host else f"http://{host}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"STORAGE_EMULATOR_HOST {redact(host)!r}: expected "
                          "[http(s)://]host[:port], e.g. http://127.0.0.1:9023")
    return {"CPL_GS_ENDPOINT": url.rstrip("/") + "/", "GS_NO_SIGN_REQUEST": "YES"}


@dataclass(frozen=True)
class CloudOptions:
    """GDAL options for cloud reads, and the credentials given explicitly (if any).

    Attributes:
        gdal: GDAL configuration options (no secrets): safe to log and to put in a task.
        credentials: secrets from ``storage_options`` (``key``, ``secret``, ``token``…), for a
            rasterio AWS session; never shown by ``repr``/``str``, never in :meth:`public`.
    """

    gdal: Mapping[str, str]
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def public(self) -> CloudOptions:
        """The same options without credentials: what may travel in a Dask task."""
        return CloudOptions(dict(self.gdal))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (Dask's way into a task graph) only without credentials.

        Raises:
            TypeError: the options hold credentials; pass :meth:`public` to tasks and let the
                workers read theirs from their environment.
        """
        if self.credentials:
            raise TypeError("CloudOptions with credentials cannot be pickled (into a Dask task "
                            "graph, say): pass options.public() and give the workers the "
                            "credentials through their environment")
        return (CloudOptions, (dict(self.gdal),))

    def __repr__(self) -> str:
        secrets = ", ".join(f"{k}={REDACTED}" for k in sorted(self.credentials))
        shown = {k: redact(v) for k, v in self.gdal.items()}
        return f"CloudOptions(gdal={shown!r}, credentials={{{secrets}}})"

    __str__ = __repr__


def cloud_options(
    storage_options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **base: Any,
) -> CloudOptions:
    """The GDAL options for cloud reads from ``storage_options`` and the environment.

    Args:
        storage_options: fsspec-style settings (``key``, ``secret``, ``token``, ``endpoint_url``,
            ``anon``, ``region``, ``profile``, ``requester_pays``, ``account_name``…); they win
            over the environment. Unknown keys are refused.
        environ: the environment to read (default ``os.environ``); only non-secret variables
            are mapped (``AWS_ENDPOINT_URL``, ``AWS_NO_SIGN_REQUEST``, ``AWS_REGION``,
            ``STORAGE_EMULATOR_HOST``): GDAL reads credentials from the process environment
            itself.
        **base: passed to :func:`base_options` (retries, timeouts, extensions, cache).

    Raises:
        ConfigError: an unknown ``storage_options`` key or a malformed endpoint URL or
            ``STORAGE_EMULATOR_HOST``.
    """
    env = os.environ if environ is None else environ
    so = dict(storage_options or {})
    unknown = sorted(set(so) - set(_KNOWN_KEYS))
    if unknown:
        raise ConfigError(f"storage options: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(_KNOWN_KEYS)}")
    opts = base_options(**base)
    endpoint = so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url") \
        or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts.update(endpoint_options(str(endpoint)))
    emulator = gcs_emulator_host(env)
    if emulator:
        opts.update(emulator_options(emulator))
    region = so.get("region") or so.get("region_name") \
        or (so.get("client_kwargs") or {}).get("region_name")
    if region:
        opts["AWS_REGION"] = str(region)
    elif env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"):
        opts["AWS_REGION"] = env.get("AWS_REGION") or env["AWS_DEFAULT_REGION"]
    anon = so.get("anon")
    if anon is None and env.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        anon = True
    if anon:
        opts["AWS_NO_SIGN_REQUEST"] = "YES"
    if so.get("requester_pays"):
        opts["AWS_REQUEST_PAYER"] = "requester"
    if so.get("profile"):
        opts["AWS_PROFILE"] = str(so["profile"])
    if so.get("account_name"):
        opts["AZURE_STORAGE_ACCOUNT"] = str(so["account_name"])
    creds: dict[str, str] = {}
    for key in ("key", *_SECRET_KEYS):
        if so.get(key):
            creds[key] = str(so[key])
    return CloudOptions(opts, creds)


@contextmanager
def cloud_env(options: CloudOptions | None = None) -> Iterator[None]:
    """A ``rasterio.Env`` with ``options`` (default: :func:`cloud_options` of this process).

    Credentials given in ``options`` become a rasterio ``AWSSession`` (S3) or GDAL's Azure
    options; otherwise GDAL and boto3 find them in the environment.
    """
    import rasterio

    opts = cloud_options() if options is None else options
    gdal = dict(opts.gdal)
    creds = opts.credentials
    session = None
    if "key" in creds or "secret" in creds:
        from rasterio.session import AWSSession

        session = AWSSession(aws_access_key_id=creds.get("key"),
                             aws_secret_access_key=creds.get("secret"),
                             aws_session_token=creds.get("token") or creds.get("session_token"),
                             region_name=gdal.get("AWS_REGION"),
                             aws_unsigned=gdal.get("AWS_NO_SIGN_REQUEST") == "YES",
                             endpoint_url=gdal.get("AWS_S3_ENDPOINT"))
    for so_key, gdal_key in (("account_key", "AZURE_STORAGE_ACCESS_KEY"),
                             ("sas_token", "AZURE_STORAGE_SAS_TOKEN"),
                             ("connection_string", "AZURE_STORAGE_CONNECTION_STRING")):
        if so_key in creds:
            gdal[gdal_key] = creds[so_key]
    env: dict[str, Any] = dict(gdal)
    if "GDAL_CACHEMAX" in env:  # rasterio sets this one through GDALSetCacheMax: an int
        env["GDAL_CACHEMAX"] = int(env["GDAL_CACHEMAX"])
    with rasterio.Env(session=session, **env):
        yield


def clear_cache(path: str) -> bool:
    """Forget what GDAL's curl file systems cached about ``path`` (a GDAL path, ``/vsis3/…``).

    GDAL remembers, per process, that an object was missing or failed (and its size and
    bytes); a retry after a transient error would meet that memory instead of the store.
    Calls GDAL's ``VSICurlPartialClearCache`` in the libgdal rasterio loaded.

    Call it inside the :func:`cloud_env` the path was read in: GDAL maps the path to the URL
    it cached through the endpoint options (outside, ``AWS_S3_ENDPOINT`` differs and nothing is
    cleared: seen with a failed connection, whose "does not exist" GDAL then kept).

    Returns:
        False when that libgdal could not be found (the retry then runs on GDAL's cache).
    """
    fn = _partial_clear()
    if fn is None:
        return False
    fn(path.encode())
    return True


_CLEAR: list[Any] = []


def _partial_clear() -> Any:
    if not _CLEAR:
        _CLEAR.append(_find_partial_clear())
    return _CLEAR[0]


def _find_partial_clear() -> Any:
    import ctypes
    import glob

    import rasterio

    base = os.path.dirname(rasterio.__file__)
    candidates = sorted(glob.glob(os.path.join(base + ".libs", "libgdal*.so*"))
                        + glob.glob(os.path.join(base, ".dylibs", "libgdal*.dylib")))
    for lib in candidates:
        try:
            fn = ctypes.CDLL(lib).VSICurlPartialClearCache
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_char_p]
        fn.restype = None
        return fn
    return None
