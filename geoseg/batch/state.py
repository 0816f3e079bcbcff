"""Per-scene output folders: written whole or not at all, and remembered for resuming.

A scene is computed in ``DIR/.partial-<name>/`` and only then renamed to ``DIR/<name>/``, so a
run killed at any moment (SIGKILL included) never leaves a partial file under a final name.
``DIR/<name>/scene.json`` records how the scene was made (its *fingerprint*: bundle checksum,
output-affecting settings and input file sizes and times, or for objects in a store their URI,
size and ETag); a re-run skips a scene whose record says ``ok`` with the same fingerprint and
whose outputs are all there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.remote.store import OutputRoot

__all__ = [
    "NAME_MAX_BYTES",
    "OLD_PREFIX",
    "RECORD",
    "REPORT_JSON",
    "RESERVED_NAMES",
    "STAGE_PREFIX",
    "STATE_DIR",
    "SceneFolder",
    "atomic_write_json",
    "atomic_write_text",
    "fingerprint",
    "is_output_folder",
    "is_scene_record",
    "object_stamp",
    "read_record",
    "reported_scene_names",
]

#: The per-scene record file, inside the scene folder.
RECORD = "scene.json"
#: The run report, at the output root (:mod:`geoseg.batch.report`).
REPORT_JSON = "report.json"
#: The folder of run state (failure records), at the output root.
STATE_DIR = ".geoseg"
#: Prefixes of a scene's staging and replaced folders, at the output root.
STAGE_PREFIX, OLD_PREFIX = ".partial-", ".old-"
#: Names geoseg uses at the output root for itself: a scene never takes one (compared
#: case-folded; the prefixes above are reserved too).
RESERVED_NAMES = frozenset({REPORT_JSON, "report.html", "catalog.json", STATE_DIR})
#: Longest file name component on common filesystems (ext4, XFS, APFS, NTFS: 255 bytes).
NAME_MAX_BYTES = 255


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8; a lone surrogate as ``\\udcNN``) to ``path`` through a temporary
    file and a rename.

    The temporary name is unique per host, process and thread, so jobs sharing a filesystem
    (and scenes in flight in one process) never write the same one; a long ``path.name`` is
    shortened in it (with a hash of the whole name) so the temporary name fits
    :data:`NAME_MAX_BYTES` whatever the host name.
    """
    tail = f".{socket.gethostname()}.{os.getpid()}.{threading.get_native_id()}.partial"
    head = path.name
    room = NAME_MAX_BYTES - 1 - len(tail.encode())
    if len(head.encode("utf-8", "surrogateescape")) > room:
        digest = hashlib.sha256(head.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        keep = head.encode("utf-8", "surrogateescape")[: max(room - 13, 0)]
        head = keep.decode("utf-8", "ignore") + "~" + digest
    tmp = path.with_name(f".{head}{tail}")
    try:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def fingerprint(bundle_sha256: str, settings: dict[str, Any], inputs: Sequence[Path | str],
                storage_options: Mapping[str, Any] | None = None) -> str:
    """SHA-256 hex of what determines a scene's outputs (not how fast they were made).

    A local input counts by its resolved path, size and modification time (ns); a remote one
    (a URI: :func:`geoseg.remote.uri.is_remote`) by the URI as written, credentials redacted (a
    signed URL signed again is the same object), and what its store says about the object
    (:func:`object_stamp`, asked with ``storage_options``), never by its bytes.

    Raises:
        OSError: a local input is gone; SceneError: a store cannot be asked (URI redacted).
    """
    from geoseg.remote.uri import is_remote, redact

    files: list[list[Any]] = []
    for f in inputs:
        if isinstance(f, str) and is_remote(f):  # a re-signed URL is the same object
            files.append([redact(f), *object_stamp(f, storage_options)])
            continue
        st = Path(f).stat()
        files.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"bundle": bundle_sha256, "settings": settings, "inputs": files},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def object_stamp(uri: str, storage_options: Mapping[str, Any] | None = None,
                 ) -> tuple[int | None, str | None]:
    """``(size in bytes, version)`` of a remote object, from its store's metadata
    (fsspec ``info``: one HEAD request; nothing downloaded). The version is the ETag, else the
    last-modified time, else None (an http(s) server that sends neither).

    A missing or forbidden object gives ``(None, None)``: opening it fails the scene with the
    reason, which a fingerprint cannot say better.

    Raises:
        SceneError: the store cannot be reached or listed (the URI redacted).
    """
    from geoseg.errors import SceneError
    from geoseg.remote.listing import filesystem
    from geoseg.remote.uri import redact, split

    fs = filesystem(uri, storage_options)
    scheme = split(uri)[0]
    target = uri if scheme in ("http", "https") else uri.split("://", 1)[1]
    try:
        fs.invalidate_cache(target)
        info = fs.info(target)
    except (FileNotFoundError, PermissionError):
        return None, None
    except Exception as exc:  # noqa: BLE001 - each fsspec back-end raises its own
        raise SceneError(f"{redact(uri)}: cannot ask the store about this object "
                         f"({redact(str(exc))[:200]})") from None
    size = info.get("size")
    version = next((str(info[k]).strip('"') for k in ("ETag", "etag", "LastModified",
                                                      "last_modified", "mtime", "updated")
                    if info.get(k) is not None), None)
    return (int(size) if size is not None else None), version


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record in ``folder``, or None when absent or unreadable."""
    try:
        data = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_scene_record(data: Any) -> bool:
    """True when ``data`` (a parsed ``scene.json``) is a record written by geoseg: it names its
    scene, a status and the scene's outputs."""
    return (isinstance(data, dict) and isinstance(data.get("scene"), str)
            and isinstance(data.get("status"), str) and isinstance(data.get("outputs"), dict))


def is_output_folder(folder: Path) -> bool:
    """True when ``folder`` is one geoseg wrote inside an output directory, whose rasters are
    outputs and never scenes: a scene folder (its ``scene.json`` is a geoseg record), a
    scene's staging or replaced folder, or the run state folder."""
    name = folder.name
    if name == STATE_DIR or name.startswith((STAGE_PREFIX, OLD_PREFIX)):
        return True
    return (folder / RECORD).is_file() and is_scene_record(read_record(folder))


def reported_scene_names(root: Path) -> frozenset[str]:
    """The scene folder names listed by a geoseg ``report.json`` in ``root`` (none when ``root``
    holds no such report): folders of an earlier run's output directory, even when their
    ``scene.json`` was lost."""
    try:
        report = json.loads((root / REPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    if not isinstance(report, dict) or not isinstance(report.get("scenes"), list):
        return frozenset()
    if "summary" not in report:
        return frozenset()
    return frozenset(e["scene"] for e in report["scenes"]
                     if isinstance(e, dict) and isinstance(e.get("scene"), str))


class SceneFolder:
    """The final and staging folders of one scene under the run's output directory.

    With ``remote`` (the run's output root in an object store), ``out_dir`` is the local
    scratch folder the scene is built in; :meth:`commit` then uploads the finished folder to
    ``<root><name>/`` (``scene.json`` last, the completion marker) and removes the local copy,
    and :meth:`is_done` / :meth:`record` read the marker from the store.
    """

    def __init__(self, out_dir: Path, name: str, remote: OutputRoot | None = None):
        self.name = name
        self.final = out_dir / name
        self.stage = out_dir / f"{STAGE_PREFIX}{name}"
        self._old = out_dir / f"{OLD_PREFIX}{name}"
        self.remote = remote

    @property
    def root_uri(self) -> str | None:
        """The output root's URI (ending in ``/``) when it is remote, else None."""
        return None if self.remote is None else self.remote.root

    def record(self) -> dict[str, Any] | None:
        """The scene's record (its ``scene.json``, from the store when remote), or None."""
        if self.remote is not None:
            return self.remote.read_json(f"{self.name}/{RECORD}")
        return read_record(self.final)

    def is_done(self, fp: str) -> bool:
        """True when the final folder holds an ``ok`` record with fingerprint ``fp`` and every
        output it lists (in the store, for a remote root: one listing)."""
        rec = self.record()
        if not rec or rec.get("status") != "ok" or rec.get("fingerprint") != fp:
            return False
        outputs = rec.get("outputs", {}).values()
        if self.remote is not None:
            keys = self.remote.keys(f"{self.name}/")
            return all(f"{self.name}/{rel}" in keys for rel in outputs)
        return all((self.final / rel).exists() for rel in outputs)

    def clean(self) -> None:
        """Remove what a killed run may have left (its staging and replaced folders)."""
        for d in (self.stage, self._old):
            shutil.rmtree(d, ignore_errors=True)

    def open(self) -> Path:
        """A fresh, empty staging folder."""
        self.clean()
        self.stage.mkdir(parents=True)
        return self.stage

    def commit(self) -> None:
        """Make the staging folder the final one, replacing a previous result; for a remote
        root, upload it (:meth:`~geoseg.remote.store.OutputRoot.publish`) and drop the local
        copy.

        Raises:
            SceneError: the upload failed (what it uploaded is removed again; no marker).
        """
        if self.final.exists():
            os.replace(self.final, self._old)
        os.replace(self.stage, self.final)
        shutil.rmtree(self._old, ignore_errors=True)
        if self.remote is not None:
            try:
                self.remote.publish(self.final, f"{self.name}/", RECORD)
            finally:
                shutil.rmtree(self.final, ignore_errors=True)
