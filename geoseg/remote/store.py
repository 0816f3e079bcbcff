"""Writing a run's outputs to object storage: an output root URI (``s3://bucket/maps/``) and the
objects under it, through fsspec (s3fs, gcsfs, adlfs), with credentials from the environment.

Object stores have no rename, so a scene is never *moved* into place: its files are built in a
local scratch folder, then uploaded one by one, its ``scene.json`` last (the completion
marker: a scene without it is unfinished, whatever else is there). :meth:`OutputRoot.publish`
does that; readers (resume, ``--split`` jobs, the report) only trust a scene whose marker is
there. Every message names URIs with credentials redacted (:func:`~geoseg.remote.uri.redact`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from geoseg.errors import OutputError, SceneError
from geoseg.remote.uri import is_remote, redact, split

__all__ = ["OutputRoot", "scratch_dir"]


def scratch_dir(scratch: str | os.PathLike[str], root: str) -> Path:
    """The local folder where a run into the output root ``root`` builds its scenes:
    ``<scratch>/geoseg-out-<16 hex of SHA-256 of the redacted root>`` (one per output root, so
    jobs of one run on one host share it and a resumed run finds its own)."""
    digest = hashlib.sha256(redact(root).encode()).hexdigest()[:16]
    return Path(scratch) / f"geoseg-out-{digest}"


def _cause(exc: BaseException) -> str:
    """``exc`` as the cause in a one-line message: redacted, its first line (Azure's errors go
    on with request ids and the XML body), at most 200 chars."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    text = " ".join((first or type(exc).__name__).split())
    return redact(text)[:200]


#: Words of a missing bucket or container: S3 (s3fs raises FileNotFoundError), Azure
#: (azure.core's ResourceNotFoundError, "ContainerNotFound"), GCS (gcsfs: HTTP 404 "The
#: specified bucket does not exist").
_NO_BUCKET = ("ContainerNotFound", "NoSuchBucket", "bucket does not exist",
              "container does not exist")


def _missing_bucket(exc: BaseException) -> bool:
    """True when ``exc`` (a failed write at the root) says the bucket or container is missing."""
    text = str(exc)
    return isinstance(exc, FileNotFoundError) or any(w in text for w in _NO_BUCKET)


class OutputRoot:
    """The output root ``root`` (a URI string ending in ``/``) in its object store.

    Keys are given relative to the root (``<scene>/scene.json``, ``report.json``);
    ``storage_options`` are fsspec's (the config's ``storage.options``: never secrets, which
    come from the environment).
    """

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from geoseg.remote.listing import filesystem

        if not is_remote(root) or split(root)[0] in ("http", "https"):
            raise OutputError(f"{redact(root)}: outputs go to a local folder or an object "
                              "store (s3://, gs://, az://), not http(s)")
        self.root = root if root.endswith("/") else root + "/"
        self.scheme, self.bucket, key = split(self.root)
        # bucket/prefix/ as fsspec names it (abfs://c@account.dfs…/p/ lists as c/p/…)
        self._base = f"{self.bucket}/{key}"
        # a fresh file system: fsspec's cached instance keeps the credentials and endpoint of
        # the environment it was made in (a long-lived process, a test changing AWS_*)
        self.fs = filesystem(self.root, {**(storage_options or {}), "skip_instance_cache": True})
        self._read: dict[tuple[str, str], dict[str, Any] | None] = {}

    def __repr__(self) -> str:
        return f"OutputRoot({redact(self.root)!r})"

    def uri(self, rel: str) -> str:
        """The URI of ``rel`` (a ``/``-separated key relative to the root)."""
        return self.root + rel

    def _path(self, rel: str) -> str:
        return self._base + rel

    def _fail(self, rel: str, exc: BaseException, what: str) -> SceneError:
        return SceneError(f"{redact(self.uri(rel))}: cannot {what} ({_cause(exc)})")

    def check_writable(self) -> None:
        """Prove that the root can be written: one small probe object, removed again (a run
        also removes objects: a scene's previous marker, stale files). No bucket-level call
        (HeadBucket, ListBuckets): credentials limited to a prefix pass.

        Raises:
            OutputError: the bucket is missing, or the object cannot be written or removed.
        """
        probe = self._path(f".geoseg-probe-{uuid.uuid4().hex[:12]}")
        where = redact(self.root)
        try:
            self.fs.pipe_file(probe, b"geoseg")
        except Exception as exc:  # noqa: BLE001 - each fsspec back-end raises its own
            if not _missing_bucket(exc):
                raise OutputError(f"{where}: cannot write the output root ({_cause(exc)}); "
                                  "check the bucket, the credentials and their write "
                                  "permission") from None
            raise OutputError(f"{where}: no such bucket '{redact(self.bucket)}'; create it or "
                              "give another --out") from None
        try:
            self.fs.rm_file(probe)
        except Exception as exc:  # noqa: BLE001
            raise OutputError(f"{where}: cannot remove an object written there ({_cause(exc)}); "
                              "geoseg replaces a scene's objects, so it needs delete "
                              "permission too") from None

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Upload ``data`` as ``rel`` (replacing it).

        Raises:
            SceneError: the upload failed (URI and cause, redacted).
        """
        try:
            self.fs.pipe_file(self._path(rel), data)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(rel, exc, "upload") from None

    def put_file(self, rel: str, path: Path) -> None:
        """Upload the local file ``path`` as ``rel`` (replacing it).

        Raises:
            SceneError: the upload failed (URI and cause, redacted).
        """
        try:
            self.fs.put_file(str(path), self._path(rel))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(rel, exc, "upload") from None

    def read_json(self, rel: str, version: str | None = None) -> dict[str, Any] | None:
        """The JSON object at ``rel``, or None when missing, unreadable or not an object.

        ``version`` (the object's ETag or time from :meth:`listing`): an object read before at
        that version is returned from memory, not fetched again (the report reads every other
        job's records after each scene).
        """
        if version is not None and (rel, version) in self._read:
            return self._read[(rel, version)]
        try:
            self.fs.invalidate_cache(self._path(rel))  # another job may have written it
            data = json.loads(self.fs.cat_file(self._path(rel)))
        except Exception:  # noqa: BLE001 - missing, forbidden or not JSON: no record
            return None
        out = data if isinstance(data, dict) else None
        if version is not None:
            self._read[(rel, version)] = out
        return out

    def listing(self, prefix: str) -> dict[str, str | None]:
        """Key (relative to the root) → version (ETag, else modification time) of every object
        under ``prefix`` (a folder, ``<scene>/``; ``""``: the whole root); empty when none.

        Raises:
            SceneError: the store cannot be listed.
        """
        try:
            self.fs.invalidate_cache()  # listings of other jobs' scenes go stale
            found = self.fs.find(self._path(prefix), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001
            raise self._fail(prefix, exc, "list") from None
        out: dict[str, str | None] = {}
        for path, info in found.items():
            if path.startswith(self._base):
                version = next((str(info[k]) for k in ("ETag", "etag", "LastModified",
                                                       "last_modified", "mtime")
                                if info.get(k) is not None), None)
                out[path[len(self._base):]] = version
        return out

    def keys(self, prefix: str) -> set[str]:
        """The keys (relative to the root) of every object under ``prefix`` (a folder,
        ``<scene>/``); empty when there is none.

        Raises:
            SceneError: the store cannot be listed.
        """
        return set(self.listing(prefix))

    def remove(self, rels: Iterable[str]) -> None:
        """Remove the objects ``rels`` (missing ones are no error).

        Raises:
            SceneError: one could not be removed.
        """
        for rel in rels:
            try:
                self.fs.rm_file(self._path(rel))
            except FileNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001
                raise self._fail(rel, exc, "remove") from None

    def publish(self, folder: Path, prefix: str, marker: str,
                uploaded: Callable[[str], None] | None = None) -> list[str]:
        """Upload every file under the local ``folder`` to ``<prefix><relative path>``, the file
        named ``marker`` last, after removing the previous marker and any stale object under
        ``prefix`` that this folder no longer has. Returns the keys written, marker last.

        A failed upload removes what this call uploaded (best effort) and raises: no marker
        is ever left for an incomplete folder.

        Args:
            uploaded: called with each key once it is uploaded (tests count them).

        Raises:
            SceneError: an upload or removal failed (the URI and cause, redacted).
        """
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        rels = [p.relative_to(folder).as_posix() for p in files]
        if marker not in rels:
            raise SceneError(f"{folder}: no {marker} to publish")
        order = [r for r in rels if r != marker] + [marker]
        done: list[str] = []
        self.remove([prefix + marker])  # from now on the scene is unfinished in the store
        stale = self.keys(prefix) - {prefix + r for r in rels}
        try:
            for rel in order:
                if rel == marker:
                    self.remove(sorted(stale))  # before the marker: a finished scene is clean
                self.put_file(prefix + rel, folder / rel)
                done.append(prefix + rel)
                if uploaded is not None:
                    uploaded(prefix + rel)
        except BaseException:
            with contextlib.suppress(SceneError):  # the first error says what went wrong
                self.remove(reversed(done))
            raise
        return done
