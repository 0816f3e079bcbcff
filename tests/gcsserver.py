"""A loopback Google Cloud Storage server for the tests: gcp-storage-emulator (PyPI, pure
Python) in a child process, with a request log.

It runs as ``python -m tests.gcsserver`` (started by :func:`tests.s3server.start_child`, ends
when the test process does), listens on 127.0.0.1 at a free port and keeps objects in memory.
It serves both of Google's APIs: the JSON API that gcsfs lists and writes with
(``/storage/v1/b/…``, ``/upload/storage/v1/…``) and the XML-style object paths
(``/BUCKET/KEY``, with HTTP ``Range``) that GDAL's ``/vsigs/`` reads when
``CPL_GS_ENDPOINT`` points at it. Clients find it through ``STORAGE_EMULATOR_HOST``, as Google's
own client libraries do; geoseg maps that variable onto GDAL's options.

Every request is logged (method, path, query, Range header, status, bytes of body served; for
an upload the object's ``name``):
``GET /__log__`` returns the log as JSON and ``DELETE /__log__`` clears it.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http import server
from pathlib import Path
from typing import Any

import pytest

from .s3server import LOG_PATH, LoggedServer, exit_with_parent, start_child

BUCKET = "geoseg-test"


@dataclass
class GCSServer(LoggedServer):
    """A running emulator: its endpoint and its request log."""

    endpoint: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[str]

    def env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point geoseg (GDAL and gcsfs) at this server for one test, as a user of an emulator
        would: ``STORAGE_EMULATOR_HOST`` only (undone after the test)."""
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.endpoint)
        for var in ("CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST", "GOOGLE_APPLICATION_CREDENTIALS",
                    "GS_SECRET_ACCESS_KEY", "GS_ACCESS_KEY_ID", "GS_OAUTH2_REFRESH_TOKEN"):
            monkeypatch.delenv(var, raising=False)

    def fs(self) -> Any:
        """A gcsfs file system on this server (fresh, anonymous)."""
        from gcsfs.core import GCSFileSystem  # not gcsfs's gRPC-probing default class

        return GCSFileSystem(endpoint_url=self.endpoint, token="anon", skip_instance_cache=True)

    def upload(self, path: Path, key: str, bucket: str = BUCKET) -> str:
        """Upload a file as ``key``; its ``gs://`` URI."""
        self.fs().put_file(str(path), f"{bucket}/{key}")
        return f"gs://{bucket}/{key}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def start_gcs() -> GCSServer:
    proc, port = start_child(["tests.gcsserver"], "the GCS emulator")
    return GCSServer(f"http://127.0.0.1:{port}", proc)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """One loopback GCS emulator (no authentication) for the session, with one bucket."""
    pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator "
                        "(geoseg's test extra)")
    srv = start_gcs()
    yield srv
    srv.stop()


# --- the child process -------------------------------------------------------------------


class _Tee:
    """A writable that writes to ``out`` and keeps a copy in ``copy``."""

    def __init__(self, out: Any, copy: io.BytesIO) -> None:
        self.out, self.copy = out, copy

    def write(self, data: bytes) -> int:
        self.copy.write(data)
        return int(self.out.write(data))

    def flush(self) -> None:
        self.out.flush()


def main() -> None:
    from functools import partial

    from gcp_storage_emulator.handlers import buckets
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    entries: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Logged(RequestHandler):  # type: ignore[misc]
        """The emulator's handler, logging each request; ``/__log__`` answered here."""

        entry: dict[str, Any]

        def _log_request(self, method: str) -> bool:
            if self.path.split("?", 1)[0] == LOG_PATH:
                with lock:
                    body = json.dumps(entries).encode()
                    if method == "DELETE":
                        entries.clear()
                super().send_response(200)
                super().send_header("Content-Type", "application/json")
                super().send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True
            path, _, query = self.path.partition("?")
            self.entry = {"method": method, "path": path, "query": query,
                          "range": self.headers.get("Range"), "status": 0, "bytes": 0}
            with lock:
                entries.append(self.entry)
            return False

        def send_response(self, code: int, message: str | None = None) -> None:
            if hasattr(self, "entry"):
                self.entry["status"] = int(code)
            super().send_response(code, message)

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() == "content-length" and hasattr(self, "entry") \
                    and self.command != "HEAD":
                self.entry["bytes"] = int(value)
            super().send_header(keyword, value)

        def do_GET(self) -> None:
            if not self._log_request("GET"):
                super().do_GET()

        def do_DELETE(self) -> None:
            if not self._log_request("DELETE"):
                super().do_DELETE()

        def do_POST(self) -> None:
            """Logged with ``name``: the object an upload made (from the JSON answered; the
            request names it inside its multipart body)."""
            self._log_request("POST")
            sent, real = io.BytesIO(), self.wfile
            self.wfile = _Tee(real, sent)  # type: ignore[assignment]
            try:
                super().do_POST()
            finally:
                self.wfile = real
            body = sent.getvalue().partition(b"\r\n\r\n")[2]
            with contextlib.suppress(ValueError, AttributeError):
                self.entry["name"] = json.loads(body).get("name")

        def do_PUT(self) -> None:
            self._log_request("PUT")
            super().do_PUT()

        def do_PATCH(self) -> None:
            self._log_request("PATCH")
            super().do_PATCH()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    storage = Storage(use_memory_fs=True)
    buckets.create_bucket(BUCKET, storage)
    # one request at a time, as the emulator's own server: its in-memory storage has no lock
    httpd = server.HTTPServer(("127.0.0.1", 0), partial(Logged, storage))
    print(httpd.server_address[1], flush=True)
    exit_with_parent()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
