"""Scene names: safe on any filesystem and in any language they reach, unique, and readable.

Pure string logic, shared by local discovery (:mod:`geoseg.batch.discover`), remote listing
(:mod:`geoseg.batch.discover_remote`) and STAC items (:mod:`geoseg.batch.stacin`): a file
stem, band-file prefix or item id becomes a folder and file stem with :func:`safe_name`, made
unique in scene order with :func:`unique_names`; the name as found is shown through
:func:`readable`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from geoseg.batch.state import NAME_MAX_BYTES, RESERVED_NAMES

__all__ = ["NAME_BYTES", "band_key", "readable", "safe_name", "unique_names"]

#: a writer's temporary ``.<name>.probabilities.tif.<pid>-<token>.stage.tif`` (name + 45 bytes),
#: which GDAL may follow with ``.aux.xml`` (+8): 64 bytes are left for these.
NAME_BYTES = NAME_MAX_BYTES - 64
#: Names Windows (and SMB shares) refuse whatever the extension.
_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                      *(f"lpt{i}" for i in range(10))})
#: Invisible characters that reorder text (a file name shown as something it is not).
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def band_key(name: str) -> str:
    """A band name's comparison key: case-folded, leading zeros of ``Bnn`` dropped."""
    m = re.fullmatch(r"b0*(\d+)(a?)", name.strip().lower())
    return f"b{m.group(1)}{m.group(2)}" if m else name.strip().lower()


def readable(text: str) -> str:
    """``text`` as printable, valid UTF-8 text for reports and records.

    Bytes of a file name that are not UTF-8 (``os.fsdecode``'s surrogate escapes) become
    ``\\xNN``, control and text-reordering characters ``\\xNN``/``\\uNNNN``; anything else is
    kept as it is.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that are no escaped bytes
        raw = text.encode("utf-8", "backslashreplace")
    out = []
    for ch in raw.decode("utf-8", "backslashreplace"):
        if unicodedata.category(ch) == "Cc" or ch in _BIDI:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def safe_name(text: str) -> str:
    """A scene name made from ``text`` (a file stem or band-file prefix) that is safe as a
    folder and file stem on any filesystem and in a shell, URL, HTML or markup.

    Letters, digits and marks of any script (NFC-normalized), ``-`` and ``_`` are kept; every
    run of anything else (dots, spaces, ``;``, control characters, ``$<>&'"%:/\\[]`` …, bytes
    that are not UTF-8) becomes one ``_``. Leading ``-`` (an option to many tools) is dropped;
    a name with no letter or digit left becomes ``scene``; a reserved or Windows device name
    gets a trailing ``_``; the name is cut to :data:`NAME_BYTES` UTF-8 bytes.
    """
    kept = "".join(ch if ch in "-_" or unicodedata.category(ch)[0] in "LNM" else "\0"
                   for ch in unicodedata.normalize("NFC", text))
    name = re.sub("\0+", "_", kept).lstrip("-")
    name = _fit(name if name.strip("_-") else "scene", NAME_BYTES)
    if _key(name) in _DEVICES or _key(name) in RESERVED_NAMES:
        name = _fit(name, NAME_BYTES - 1) + "_"
    return name


def _key(name: str) -> str:
    """The comparison key of a name: two names with one key may be one file on a
    case-insensitive or normalization-insensitive filesystem (NTFS, APFS, SMB)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def unique_names(bases: Sequence[str]) -> list[str]:
    """Unique names for scenes whose safe names are ``bases``, in scene order.

    The first scene with a base name keeps it; each later one gets ``<base>-2``, ``-3``…, the
    first suffix whose name is no other scene's base name and not taken yet, compared
    case-folded (:func:`_key`). So ``sub1/dup.tif``, ``sub2/dup.tif`` and ``dup-2.tif`` become
    ``dup``, ``dup-3`` and ``dup-2``. The names depend only on the bases and their order, so
    every job given the same inputs computes the same ones.
    """
    claimed = {_key(b) for b in bases}
    taken: set[str] = set()
    names: list[str | None] = []
    for base in bases:
        free = _key(base) not in taken
        names.append(base if free else None)
        taken.add(_key(base))
    tried: dict[str, int] = {}  # base key → the last suffix number tried
    for i, base in enumerate(bases):
        n = tried.get(_key(base), 1)
        while names[i] is None:
            n += 1
            suffix = f"-{n}"
            candidate = _fit(base, NAME_BYTES - len(suffix)) + suffix
            key = _key(candidate)
            if key not in claimed and key not in taken:
                names[i] = candidate
                taken.add(key)
        tried[_key(base)] = n
    return [n for n in names if n is not None]
