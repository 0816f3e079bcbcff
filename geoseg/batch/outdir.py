"""The output folder of a run: checked before any scene starts, and told apart from the scenes.

A scene that cannot be read fails alone; a folder that cannot be written (read-only, not
ours, full) would fail every scene the same way, so it stops the run with one
:class:`~geoseg.errors.OutputError` that says what is wrong, names the folder and how to fix it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geoseg.errors import GeoSegError, OutputError

__all__ = ["LOW_SPACE_BYTES", "check_output_dir", "check_output_path", "output_error"]

#: Free bytes under which a failed write is taken for a full disk: GDAL and SQLite often report
#: a full disk only as "write failed" or "failed to commit transaction", with no ``errno``.
LOW_SPACE_BYTES = 1 << 20

#: errno → (what it means, what to do); ENOSPC and EDQUOT concern any file written, the others
#: only files under the output folder (an unreadable *input* is that scene's own failure).
_FULL = {
    errno.ENOSPC: ("no space left on device", "free some space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another --out"),
}
_DENIED = {
    errno.EROFS: ("read-only file system", "choose a writable --out"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its "
                   "permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter --out path"),
}
#: Words of GDAL/SQLite messages that stand for a full disk.
_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full")


def check_output_path(out: Path) -> None:
    """Check, without creating anything, that ``out`` can be an output folder: it is a folder
    or does not exist yet, and its path can be looked up.

    Raises:
        OutputError: ``out`` is a file, or its path is unusable (name too long, a parent is a
            file, permission denied).
    """
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a directory; give an output directory")
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise output_error(out, exc, always=True) or OutputError(
            f"{out}: unusable output folder ({exc.strerror or exc})") from exc


def check_output_dir(out: Path, option: str = "--out") -> None:
    """Create ``out`` if needed and prove that a file can be written in it (then removed).

    ``option`` names the option that chose ``out`` in the messages (``--scratch`` for the local
    scratch folder of an output root in an object store).

    Raises:
        OutputError: ``out`` cannot be created or written (read-only, permission denied,
            full, name too long, not a directory).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".geoseg-probe-") as probe:
            probe.write(b"geoseg")
            probe.flush()
            os.fsync(probe.fileno())
    except FileExistsError as exc:
        raise OutputError(f"{out}: exists and is not a directory; give a directory as "
                          f"{option}") from exc
    except NotADirectoryError as exc:
        raise OutputError(f"{out}: a parent of it is a file, not a directory; give a directory "
                          f"as {option}") from exc
    except OSError as exc:
        raise output_error(out, exc, always=True, option=option) or OutputError(
            f"{out}: cannot write the output folder ({exc.strerror or exc})") from exc


def output_error(out: Path, exc: BaseException, *, always: bool = False,
                 option: str = "--out") -> OutputError | None:
    """The run-stopping :class:`OutputError` that ``exc`` stands for, or None when ``exc`` is a
    failure of the scene alone.

    ``exc`` concerns the output folder when it, or an exception it was raised from, is a full
    disk (``ENOSPC``/``EDQUOT``, or GDAL/SQLite saying so), or a read-only / permission /
    name-length error on a file under ``out``; or when a non-geoseg error happened while the
    output folder's file system has under :data:`LOW_SPACE_BYTES` free (GDAL's "failed to
    commit transaction" on a full disk). Call it before the scene's partial files are removed.

    Args:
        out: the run's output folder.
        exc: what a scene raised.
        always: take a denied-type error as the folder's even when it names no file under it
            (errors from creating or probing ``out`` itself).
        option: the option that chooses ``out``, named in the fix: ``--scratch`` when ``out`` is
            the local scratch folder of an output root in an object store.
    """
    root = out.resolve()
    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno in _FULL:
            return _error(err.errno, _FULL, _where(err, out), option)
        if isinstance(err, OSError) and err.errno in _DENIED and (always or _under(err, root)):
            return _error(err.errno, _DENIED, _where(err, out), option)
        if any(word in str(err).lower() for word in _FULL_WORDS):
            return _error(errno.ENOSPC, _FULL, str(out), option)
    if not isinstance(exc, GeoSegError) and _free_bytes(out) < LOW_SPACE_BYTES:
        return _error(errno.ENOSPC, _FULL, str(out), option)
    return None


def _error(code: int, table: dict[int, tuple[str, str]], where: str,
           option: str = "--out") -> OutputError:
    what, fix = table[code]
    fix = fix.replace("--out", option)
    return OutputError(f"{where}: {what}; {fix}. Scenes finished so far are kept and skipped "
                       "when the run is repeated")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        yield item
        item = item.__cause__ or item.__context__


def _under(err: OSError, root: Path) -> bool:
    names = [n for n in (err.filename, err.filename2) if n]
    return any(Path(os.fsdecode(n)).resolve().is_relative_to(root) for n in names)


def _where(err: OSError, out: Path) -> str:
    """The folder to name: the output folder, or the file's own folder outside it."""
    if err.filename:
        path = Path(os.fsdecode(err.filename))
        if not path.resolve().is_relative_to(out.resolve()):
            return str(path.parent)
    return str(out)


def _free_bytes(out: Path) -> int:
    """Bytes this process may still write on ``out``'s file system (huge when unknown)."""
    for folder in (out, *out.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return 1 << 62
