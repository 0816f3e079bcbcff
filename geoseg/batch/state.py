"""Per-scene output folders: written whole or not at all, and remembered for resuming.

A scene is computed in ``DIR/.partial-<name>/`` and only then renamed to ``DIR/<name>/``, so a
run killed at any moment (SIGKILL included) never leaves a partial file under a final name.
``DIR/<name>/scene.json`` records how the scene was made (its *fingerprint*: bundle checksum,
output-affecting settings and input file sizes and times); a re-run skips a scene whose record
says ``ok`` with the same fingerprint and whose outputs are all there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RECORD",
    "SceneFolder",
    "atomic_write_json",
    "atomic_write_text",
    "fingerprint",
    "read_record",
]

#: The per-scene record file, inside the scene folder.
RECORD = "scene.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename. The temporary name is
    unique per host and process, so jobs sharing a filesystem never write the same one."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.partial")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def fingerprint(bundle_sha256: str, settings: dict[str, Any], inputs: Sequence[Path]) -> str:
    """SHA-256 hex of what determines a scene's outputs (not how fast they were made)."""
    files = []
    for f in inputs:
        st = Path(f).stat()
        files.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"bundle": bundle_sha256, "settings": settings, "inputs": files},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record in ``folder``, or None when absent or unreadable."""
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class SceneFolder:
    """The final and staging folders of one scene under the run's output directory."""

    def __init__(self, out_dir: Path, name: str):
        self.final = out_dir / name
        self.stage = out_dir / f".partial-{name}"
        self._old = out_dir / f".old-{name}"

    def is_done(self, fp: str) -> bool:
        """True when the final folder holds an ``ok`` record with fingerprint ``fp``."""
        rec = read_record(self.final)
        if not rec or rec.get("status") != "ok" or rec.get("fingerprint") != fp:
            return False
        return all((self.final / rel).exists() for rel in rec.get("outputs", {}).values())

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
        """Make the staging folder the final one, replacing a previous result."""
        if self.final.exists():
            os.replace(self.final, self._old)
        os.replace(self.stage, self.final)
        shutil.rmtree(self._old, ignore_errors=True)
