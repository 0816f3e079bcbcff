"""A loopback HTTP proxy that fails range requests on purpose, for retry tests.

Runs in a child process (``python -m tests.faultproxy UPSTREAM``; see tests/s3server.py for why
not a thread) and forwards every request to ``UPSTREAM`` (the moto server, path-style). Of the
GET requests carrying a ``Range`` header, the first ``fail_first`` (a burst longer than GDAL's
own retries) and every ``fail_every``-th one (counted from 1, so with 3: the 3rd, 6th, 9th…) are
answered ``503 SlowDown`` without reaching the server; the others are delayed by ``delay_ms`` and
forwarded. Deterministic: counters, not randomness or time.

``GET /__proxy__`` returns the counters as JSON (requests, range_requests, failed, forwarded
bytes); ``POST /__proxy__?fail_every=K&fail_first=N&delay_ms=D`` sets the faults and zeroes the
counters.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .s3server import S3Server, exit_with_parent, start_child

CONTROL = "/__proxy__"
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


@dataclass
class FaultProxy:
    """A running proxy: its endpoint (``http://127.0.0.1:P``) and its controls."""

    endpoint: str
    proc: subprocess.Popen[str]

    @property
    def hostport(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def configure(self, fail_every: int = 0, fail_first: int = 0, delay_ms: float = 0.0) -> None:
        """Fail the first ``fail_first`` and every ``fail_every``-th range GET (0: none); zero
        the counters."""
        req = urllib.request.Request(
            f"{self.endpoint}{CONTROL}?fail_every={fail_every}&fail_first={fail_first}"
            f"&delay_ms={delay_ms}",
            method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.endpoint + CONTROL, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def start_proxy(upstream: str) -> FaultProxy:
    proc, port = start_child(["tests.faultproxy", upstream], "the fault proxy")
    return FaultProxy(f"http://127.0.0.1:{port}", proc)


@pytest.fixture(scope="session")
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's S3 server (no faults until configured)."""
    proxy = start_proxy(s3_server.endpoint)
    yield proxy
    proxy.stop()


# --- the child process -------------------------------------------------------------------


class _State:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.lock = threading.Lock()
        self.fail_every = 0
        self.fail_first = 0
        self.delay_s = 0.0
        self.counters = {"requests": 0, "range_requests": 0, "failed": 0, "bytes": 0}


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _control(self) -> None:
            if self.command == "POST":
                q = parse_qs(urlsplit(self.path).query)
                with state.lock:
                    state.fail_every = int(q.get("fail_every", ["0"])[0])
                    state.fail_first = int(q.get("fail_first", ["0"])[0])
                    state.delay_s = float(q.get("delay_ms", ["0"])[0]) / 1000.0
                    state.counters = dict.fromkeys(state.counters, 0)
            with state.lock:
                body = json.dumps(state.counters).encode()
            self._reply(200, body, "application/json")

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self) -> None:
            if urlsplit(self.path).path == CONTROL:
                self._control()
                return
            ranged = self.command == "GET" and self.headers.get("Range") is not None
            with state.lock:
                state.counters["requests"] += 1
                fail = False
                if ranged:
                    state.counters["range_requests"] += 1
                    n = state.counters["range_requests"]
                    fail = n <= state.fail_first or (state.fail_every > 0
                                                     and n % state.fail_every == 0)
                    if fail:
                        state.counters["failed"] += 1
                delay = state.delay_s
            length = int(self.headers.get("Content-Length") or 0)
            payload = self.rfile.read(length) if length else None
            if fail:
                self._reply(503, b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown"
                                 b"</Code><Message>Please reduce your request rate.</Message>"
                                 b"</Error>", "application/xml")
                return
            if delay:
                time.sleep(delay)
            conn = http.client.HTTPConnection(state.host, state.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn.request(self.command, self.path, body=payload, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                    with state.lock:
                        state.counters["bytes"] += len(body)
            finally:
                conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler


def main() -> None:
    state = _State(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    exit_with_parent()
    server.serve_forever()


if __name__ == "__main__":
    main()
