"""A loopback S3 server for the tests: moto in a child process, with a request log.

The server runs in its own process (``python -m tests.s3server``), not a thread of the test
process: GDAL reading in the test process and a server in that same process were seen to hang
(the server thread stalled mid-response while GDAL waited on it). A child process is also what a
real store is: another process. It listens on 127.0.0.1 at a free port, prints it, and ends
when the test process does (even SIGKILLed: its stdin closes).

Every request is logged (method, path, query, Range header, status, bytes of body served);
``GET /__log__`` returns the log as JSON and ``DELETE /__log__`` clears it. With ``--auth`` the
server checks signatures (moto's IAM auth: the first 3 actions, which create the test user, are
let through); without it any key works and objects uploaded ``public-read`` serve plain HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUCKET = "geoseg-test"
REGION = "us-east-1"
LOG_PATH = "/__log__"


class LoggedServer:
    """The request log of a loopback server that serves it at :data:`LOG_PATH` (``GET``: every
    request since the last ``DELETE``); a base of the server handles, which set ``endpoint``."""

    endpoint: str

    def requests(self) -> list[dict[str, Any]]:
        """Every request served since the last :meth:`clear`."""
        with urllib.request.urlopen(self.endpoint + LOG_PATH, timeout=10) as r:
            return json.loads(r.read())

    def clear(self) -> None:
        req = urllib.request.Request(self.endpoint + LOG_PATH, method="DELETE")
        urllib.request.urlopen(req, timeout=10).close()


@dataclass
class S3Server(LoggedServer):
    """A running loopback server: its endpoint, the keys it accepts and its request log."""

    endpoint: str
    key: str
    secret: str
    proc: subprocess.Popen[str]

    @property
    def hostport(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def client(self, secret: str | None = None) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=secret or self.secret, region_name=REGION)

    def upload(self, path: Path, key: str, public: bool = True, bucket: str = BUCKET) -> str:
        """Upload a file; return its ``s3://`` URI."""
        extra = {"ACL": "public-read"} if public else {}
        self.client().upload_file(str(path), bucket, key, ExtraArgs=extra)
        return f"s3://{bucket}/{key}"

    def http_url(self, key: str, bucket: str = BUCKET) -> str:
        """The plain path-style HTTP URL of an object."""
        return f"{self.endpoint}/{bucket}/{key}"

    def env(self, monkeypatch: pytest.MonkeyPatch, secret: str | None = None) -> None:
        """Point GDAL, boto3 and s3fs at this server for one test (undone after it)."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", self.key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret or self.secret)
        monkeypatch.setenv("AWS_REGION", REGION)
        monkeypatch.setenv("AWS_ENDPOINT_URL", self.endpoint)
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST",
                    "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
            monkeypatch.delenv(var, raising=False)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def start_child(args: list[str], what: str,
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """``python -m ARGS`` from the repository root, a loopback server that prints its port on
    its first line (and ends when its stdin closes: :func:`exit_with_parent`); the process and
    the port."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"{what} did not start: {line!r}")
    return proc, int(line)


def start_server(auth: bool = False) -> S3Server:
    """Start a server process; with ``auth``, create a user whose keys it checks."""
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    proc, port = start_child(["tests.s3server"], "the S3 server", env)
    endpoint = f"http://127.0.0.1:{port}"
    key, secret = "AKIAGEOSEGTEST0000001", "geoseg-test-secret-0000000000000000000001"
    if auth:
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="setup",
                           aws_secret_access_key="setup", region_name=REGION)
        iam.create_user(UserName="geoseg")
        iam.put_user_policy(UserName="geoseg", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        created = iam.create_access_key(UserName="geoseg")["AccessKey"]
        key, secret = created["AccessKeyId"], created["SecretAccessKey"]
    server = S3Server(endpoint, key, secret, proc)
    server.client().create_bucket(Bucket=BUCKET)
    server.clear()
    return server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One loopback S3 server (no signature checks) for the whole session."""
    server = start_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_auth_server() -> Iterator[S3Server]:
    """A loopback S3 server that checks signatures (wrong secret → HTTP 403)."""
    server = start_server(auth=True)
    yield server
    server.stop()


# --- the child process -------------------------------------------------------------------


class RequestLog:
    """WSGI middleware: records each request moto serves; answers ``/__log__`` itself."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.entries: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == LOG_PATH:
            with self.lock:
                body = json.dumps(self.entries).encode()
                if environ["REQUEST_METHOD"] == "DELETE":
                    self.entries.clear()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        entry: dict[str, Any] = {"method": environ["REQUEST_METHOD"],
                                 "path": environ.get("PATH_INFO", ""),
                                 "query": environ.get("QUERY_STRING", ""),
                                 "range": environ.get("HTTP_RANGE"), "status": 0, "bytes": 0}

        def start(status: str, headers: Any, exc_info: Any = None) -> Any:
            entry["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info) if exc_info \
                else start_response(status, headers)

        with self.lock:
            self.entries.append(entry)
        return self._counted(self.app(environ, start), entry)

    @staticmethod
    def _counted(body: Iterable[bytes], entry: dict[str, Any]) -> Iterator[bytes]:
        for chunk in body:
            if entry["method"] != "HEAD":
                entry["bytes"] += len(chunk)
            yield chunk


def exit_with_parent() -> None:
    """End this process when the test process ends, even killed: its end closes our stdin."""

    def watch() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = RequestLog(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(server.server_address[1], flush=True)
    exit_with_parent()
    server.serve_forever()


if __name__ == "__main__":
    main()
