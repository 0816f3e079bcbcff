"""Transient vs permanent failures of remote reads, and a bounded retry around them.

GDAL retries failed HTTP requests itself (``GDAL_HTTP_MAX_RETRY``, see
:mod:`geoseg.remote.gdal_env`); this layer retries the whole open-and-read when GDAL gives up on
a transient error (a dropped connection, a timeout, a 503 burst longer than GDAL's budget), with
exponential backoff and jitter, and turns every permanent error into one line: a
:class:`~geoseg.errors.SceneError` naming the (redacted) URI, the cause and what to do, e.g.
``s3://bucket/scenes/a.tif: not found (HTTP 404); check the key or the prefix``.

The decision is made on GDAL's own words (rasterio passes them through its exceptions); the
patterns are in :data:`PERMANENT` and :data:`TRANSIENT` (connection failures first, then the
permanent errors, then HTTP 5xx/429).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from geoseg.errors import SceneError
from geoseg.remote.uri import redact

if TYPE_CHECKING:
    import numpy as np

    from geoseg.remote.gdal_env import CloudOptions
    from geoseg.tiling import Window

__all__ = [
    "PERMANENT",
    "TRANSIENT",
    "Failure",
    "RetryPolicy",
    "call_with_retries",
    "classify",
    "hint_for",
    "read_remote_window",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """What went wrong: ``transient`` (worth retrying), the ``cause`` and a ``hint`` for users."""

    transient: bool
    cause: str
    hint: str


#: (pattern on GDAL's message, cause, hint) of errors no retry can fix.
PERMANENT: tuple[tuple[str, str, str], ...] = (
    (r"\b404\b|does not exist|no such (?:file|key|bucket)|NoSuchKey|NoSuchBucket",
     "not found (HTTP 404)", "check the key or the prefix"),
    # GDAL passes on S3's error message, not its code (seen: "The request signature we
    # calculated does not match the signature you provided...")
    (r"SignatureDoesNotMatch|InvalidAccessKeyId|ExpiredToken|InvalidToken|\b401\b|"
     r"signature we calculated does not match|access key Id you provided does not exist|"
     r"security token included in the request is (?:invalid|expired)",
     "invalid credentials (HTTP 403)",
     "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the storage options) of the workers"),
    (r"\b403\b|Access ?Denied|Forbidden",
     "access denied (HTTP 403)",
     "check the credentials and the bucket policy, or set AWS_NO_SIGN_REQUEST=YES for a "
     "public bucket"),
    (r"not recognized as (?:being in )?a supported|not a (?:valid )?(?:TIFF|raster)|"
     r"TIFFReadDirectory|unsupported file format",
     "not a raster GDAL can read", "give a GeoTIFF/COG, JPEG 2000 or another GDAL raster"),
    (r"\b400\b|InvalidRequest|InvalidURI|AuthorizationHeaderMalformed",
     "request refused (HTTP 400)", "check the URI, the region (AWS_REGION) and the endpoint"),
)

#: The hint for refused credentials in stores other than S3 (PERMANENT's name AWS_*), by scheme.
STORE_HINTS: dict[str, str] = {
    "gs": "check GOOGLE_APPLICATION_CREDENTIALS (or the storage options) of the workers, or set "
          "GS_NO_SIGN_REQUEST=YES for a public bucket",
    "az": "check AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT with "
          "AZURE_STORAGE_ACCESS_KEY or AZURE_STORAGE_SAS_TOKEN) of the workers, and the "
          "container's access level",
}
_STORE = {"gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az"}


def hint_for(failure: Failure, uri: str) -> str:
    """``failure``'s hint, in the words of ``uri``'s store: a credentials hint naming S3's
    variables becomes Google's or Azure's for ``gs://``, ``az://``, ``abfs://``."""
    store = _STORE.get(uri.split("://", 1)[0].lower()) if "://" in uri else None
    if store and "AWS_" in failure.hint and "HTTP 403" in failure.cause:
        return STORE_HINTS[store]
    return failure.hint


#: (pattern, cause) of errors a later attempt may not meet.
TRANSIENT: tuple[tuple[str, str], ...] = (
    # S3 answers 503 SlowDown / 500 InternalError with these messages, which is all that GDAL
    # passes on (seen: "Please reduce your request rate.")
    (r"\b(?:500|502|503|504)\b|SlowDown|ServiceUnavailable|Service Unavailable|InternalError|"
     r"reduce your request rate|internal error|[Pp]lease try again",
     "server error (HTTP 5xx)"),
    (r"\b429\b|Too ?Many ?Requests|RequestLimitExceeded", "throttled (HTTP 429)"),
    (r"[Tt]imed? ?out|[Tt]imeout", "timed out"),
    (r"Connection refused|Failed to connect|Couldn't connect|Could not connect|"
     r"Could not resolve|Connection reset|connection was reset|Recv failure|Send failure|"
     r"Empty reply|transfer closed|SSL_read|CURL error",
     "endpoint unreachable or connection dropped"),
)


def _message(exc: BaseException) -> str:
    parts = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if str(e) not in parts:
            parts.append(str(e))
        e = e.__cause__ or e.__context__
    return " | ".join(p for p in parts if p.strip())


def classify(exc: BaseException) -> Failure:
    """Sort an error raised while opening or reading a URI into transient or permanent.

    Looks at the messages of ``exc`` and its causes (GDAL's words). Anything unrecognised is
    permanent (retrying an unknown error only delays the report).
    """
    text = _message(exc)
    # a failed connection first: GDAL then also says the object "does not exist"
    for pattern, cause in TRANSIENT[2:]:
        if re.search(pattern, text):
            return Failure(True, cause,
                           "check the endpoint and the network; retried and still failing")
    for pattern, cause, hint in PERMANENT:
        if re.search(pattern, text, re.IGNORECASE):
            return Failure(False, cause, hint)
    for pattern, cause in TRANSIENT:
        if re.search(pattern, text):
            return Failure(True, cause,
                           "check the endpoint and the network; retried and still failing")
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return Failure(True, type(exc).__name__, "check the endpoint and the network")
    short = text.splitlines()[0][:200] if text else type(exc).__name__
    return Failure(False, short, "see the GDAL message")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    Attempt ``n`` (1-based) that fails transiently waits
    ``min(max_delay_s, base_delay_s * 2**(n-1)) * (1 - jitter * u)``, ``u`` uniform in [0, 1).

    Attributes:
        attempts: tries in all (1: no retry).
        base_delay_s, max_delay_s: seconds.
        jitter: fraction of the delay drawn at random, so workers do not retry in step.
    """

    attempts: int = 4
    base_delay_s: float = 1.0
    max_delay_s: float = 16.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        d = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return d * (1.0 - self.jitter * rng.random())


def call_with_retries(
    fn: Callable[[], T],
    uri: str,
    policy: RetryPolicy | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, Failure], None] | None = None,
) -> T:
    """``fn()``, tried again on transient errors as ``policy`` says.

    Args:
        fn: opens and reads; called once per attempt (so a retry reopens the dataset).
        uri: what ``fn`` reads, for messages (redacted there).
        sleep: waits between attempts (tests pass one that records instead of waiting).
        on_retry: called with the failed attempt's number and failure before each retry.

    Raises:
        SceneError: a permanent error, or a transient one on the last attempt; one line naming
            the redacted URI, the cause and a hint.
    """
    pol = policy or RetryPolicy()
    rng = rng or random.Random()
    safe = redact(uri)
    for attempt in range(1, max(1, pol.attempts) + 1):
        try:
            return fn()
        except SceneError:
            raise
        except Exception as exc:
            failure = classify(exc)
            if not failure.transient or attempt >= pol.attempts:
                tries = f" after {attempt} attempts" if failure.transient else ""
                raise SceneError(f"{safe}: {redact(failure.cause)}{tries}; "
                                 f"{hint_for(failure, uri)}") from None
            log.warning("%s: %s (attempt %d of %d), retrying", safe, failure.cause, attempt,
                        pol.attempts)
            if on_retry is not None:
                on_retry(attempt, failure)
            sleep(pol.delay(attempt, rng))
    raise AssertionError("unreachable")  # pragma: no cover


def read_remote_window(
    uri: str,
    window: Window,
    indexes: Sequence[int] | None = None,
    *,
    options: CloudOptions | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, Failure], None] | None = None,
) -> np.ndarray:
    """Read ``window`` of a remote (or local) raster, with retries.

    Args:
        uri: ``s3://``, ``gs://``, ``az://``, ``http(s)://`` or a local path.
        window: pixels, in the raster's own grid; must lie inside it.
        indexes: 1-based bands (default: all).
        options: GDAL options (default: :func:`~geoseg.remote.gdal_env.cloud_options`).

    Returns:
        ``(C, height, width)`` array in the file's dtype.

    Raises:
        SceneError: see :func:`call_with_retries`.
    """
    import rasterio
    from rasterio.windows import Window as RioWindow

    from geoseg.remote.gdal_env import clear_cache, cloud_env
    from geoseg.remote.uri import gdal_path

    path = gdal_path(uri)
    rio = RioWindow(window.col, window.row, window.width, window.height)  # type: ignore[call-arg]

    def attempt() -> np.ndarray:
        with cloud_env(options):
            try:
                with rasterio.open(path) as src:
                    bands = list(indexes) if indexes is not None else list(range(1, src.count + 1))
                    return src.read(bands, window=rio)
            except Exception:
                # else GDAL answers the next try (this retry, or a later read once the
                # credentials are fixed) from its memory of the failure. Inside the env: GDAL
                # finds the cached URL through the endpoint options
                clear_cache(path)
                raise

    return call_with_retries(attempt, uri, policy, sleep=sleep, on_retry=on_retry)
