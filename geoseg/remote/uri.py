"""Remote inputs named by URI: remote or local, the string GDAL opens, path helpers, redaction.

Pure string functions, no I/O. A URI is never passed through :class:`pathlib.Path`, which
collapses ``//`` (``s3://b/k`` would become ``s3:/b/k``).

==========================  ========================================  =========================
URI                         GDAL path (:func:`gdal_path`)             store
==========================  ========================================  =========================
``s3://bucket/key``         ``/vsis3/bucket/key``                     S3 and S3-compatible
``gs://bucket/key``         ``/vsigs/bucket/key``                     Google Cloud Storage
``az://container/key``      ``/vsiaz/container/key``                  Azure Blob Storage
``abfs[s]://c@acct.dfs…/k`` ``/vsiaz/c/k`` (account from the env)     Azure Data Lake Gen2
``http[s]://host/path``     ``/vsicurl/http[s]://host/path``          any server with Range
==========================  ========================================  =========================
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

__all__ = [
    "REMOTE_SCHEMES",
    "gdal_path",
    "is_remote",
    "join",
    "name",
    "parent",
    "redact",
    "split",
]

#: Schemes geoseg reads from object storage or HTTP (``gcs`` is fsspec's alias of ``gs``).
REMOTE_SCHEMES: tuple[str, ...] = ("s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_VSI = {"s3": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "abfs": "/vsiaz/",
        "abfss": "/vsiaz/"}


def _scheme(uri: str) -> str | None:
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a URI with a scheme of :data:`REMOTE_SCHEMES`; False for a local path.

    ``file://`` URIs and Windows drive letters (``C:\\x``) count as local.
    """
    return isinstance(path, str) and _scheme(path) in REMOTE_SCHEMES


def split(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` of an object-store URI, or ``(scheme, host, path)`` of HTTP.

    For ``abfs://container@account.dfs.core.windows.net/k`` the bucket is ``container``.
    The key has no leading ``/``; the query string (HTTP) is dropped.

    Raises:
        ValueError: ``uri`` is not a remote URI.
    """
    scheme = _scheme(uri)
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(f"{redact(uri)}: not a remote URI (expected one of "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    rest = uri[len(scheme) + 3:]
    netloc, _, key = rest.partition("/")
    if scheme in ("http", "https"):
        key = key.split("?", 1)[0].split("#", 1)[0]
    if scheme in ("abfs", "abfss"):
        netloc = netloc.split("@", 1)[0]
    return scheme, netloc, key


def gdal_path(uri: str | os.PathLike[str]) -> str:
    """The string rasterio/GDAL opens for ``uri`` (table above); a local path as is.

    Raises:
        ValueError: an object-store URI without a bucket (``s3:///key``).
    """
    if not is_remote(uri):
        return os.fspath(uri)
    assert isinstance(uri, str)
    scheme, bucket, key = split(uri)
    if scheme in ("http", "https"):
        return "/vsicurl/" + uri
    if not bucket:
        raise ValueError(f"{redact(uri)}: no bucket or container in the URI")
    return f"{_VSI[scheme]}{bucket}/{key}" if key else f"{_VSI[scheme]}{bucket}"


def join(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined by single ``/`` (``join("s3://b/x/", "y.tif")`` →
    ``s3://b/x/y.tif``); the scheme's ``//`` is kept, empty parts are skipped."""
    out = base
    for part in parts:
        if not part:
            continue
        out = out.rstrip("/") + "/" + part.lstrip("/")
    return out


def parent(uri: str) -> str:
    """The URI one level up, without a trailing ``/`` (``s3://b/x/y.tif`` → ``s3://b/x``).

    The bucket root is its own parent (``s3://b/k`` → ``s3://b`` → ``s3://b``).
    """
    m = _SCHEME.match(uri)
    head = m.group(0) if m else ""
    rest = uri[len(head):].rstrip("/")
    if "/" not in rest:
        return head + rest
    return head + rest.rsplit("/", 1)[0]


def name(uri: str) -> str:
    """The last component of ``uri`` (query string dropped): ``s3://b/x/a.tif`` → ``a.tif``."""
    if _scheme(uri) in ("http", "https"):
        uri = urlsplit(uri).path
    return uri.rstrip("/").rsplit("/", 1)[-1]


# Credentials that can appear in a URL or a message: user:password@ in a URL, signed-URL and
# SAS tokens in a query string, and KEY=value pairs naming a secret. In abfs[s]:// (and
# wasb[s]://) URIs the part before @ is the container, not a credential: kept.
_USERINFO = re.compile(r"(?P<pre>(?<![A-Za-z0-9+.-])(?!(?i:abfss?|wasbs?)://)"
                       r"[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s?#]+@")
_QUERY_SECRET = re.compile(
    r"(?P<pre>[?&](?:X-Amz-(?:Credential|Signature|Security-Token)|X-Goog-(?:Credential|Signature)"
    r"|AWSAccessKeyId|Signature|x-amz-security-token|sig|sv|se|st|sp|skoid|sktid|skt|ske|sks|skv"
    r"|token|access_token|code)=)[^&#\s\"']*",
    re.IGNORECASE,
)
_KEY_VALUE_SECRET = re.compile(
    r"(?P<pre>\b(?:AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID|"
    r"AZURE_STORAGE_(?:ACCESS_KEY|KEY|SAS_TOKEN|CONNECTION_STRING|ACCOUNT_KEY)|AccountKey|"
    r"SharedAccessSignature|secret|password|token)\b[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}]+",
    re.IGNORECASE,
)

#: What replaces a redacted credential.
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with every credential it may carry replaced by ``***``.

    Removes URL userinfo (``https://user:pw@host``), signed-URL and SAS query tokens
    (``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``sig``, ``sv``, ``se``…)
    and the values of ``KEY=value`` / ``key: value`` pairs naming a secret
    (``AWS_SECRET_ACCESS_KEY``, ``AZURE_STORAGE_KEY``, ``AccountKey``, ``secret``, ``token``…).
    Safe on any string: messages, log lines, URIs.
    """
    text = _USERINFO.sub(lambda m: m.group("pre") + REDACTED + "@", text)
    text = _QUERY_SECRET.sub(lambda m: m.group("pre") + REDACTED, text)
    return _KEY_VALUE_SECRET.sub(lambda m: m.group("pre") + REDACTED, text)
