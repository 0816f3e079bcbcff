"""A loopback Azure Blob Storage server for the tests: Azurite (Microsoft's emulator, npm).

``azurite-blob`` is a node program: it is found in ``$GEOSEG_AZURITE_DIR`` (default
``~/.cache/geoseg/azurite``, where ``ci/install-azurite.sh`` puts it), then on ``PATH``; the
fixture skips, saying so, when it is in neither. It runs under a small Python parent
(``python -m tests.azurite DIR``, started by :func:`tests.s3server.start_child`) that prints the
port Azurite chose and ends Azurite when the test process ends, even SIGKILLed (its stdin
closes), as the other loopback servers do. Azurite listens on 127.0.0.1 only, keeps its blobs
in a temporary folder, and sends no telemetry (``--disableTelemetry``).

The account is Azurite's well-known development account (``devstoreaccount1`` and its
published key): clients reach it through a connection string whose ``BlobEndpoint`` is the
loopback URL, read from ``AZURE_STORAGE_CONNECTION_STRING`` by GDAL's ``/vsiaz/`` and by adlfs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .s3server import start_child

ACCOUNT = "devstoreaccount1"
#: Azurite's published development key (not a secret; the tests check it leaks nowhere, as a
#: real key must not).
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
CONTAINER = "geoseg-test"
#: Variables that would point a client elsewhere than the connection string.
_OTHER_AZURE = ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_KEY",
                "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET", "AZURE_STORAGE_TENANT_ID",
                "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID",
                "AZURE_STORAGE_ANON", "AZURE_NO_SIGN_REQUEST")


def azurite_binary() -> str | None:
    """The ``azurite-blob`` executable: under ``$GEOSEG_AZURITE_DIR`` (default
    ``~/.cache/geoseg/azurite``), else on ``PATH``; None when neither has it."""
    folder = Path(os.environ.get("GEOSEG_AZURITE_DIR",
                                 Path.home() / ".cache" / "geoseg" / "azurite"))
    local = folder / "node_modules" / ".bin" / "azurite-blob"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("azurite-blob")


@dataclass
class Azurite:
    """A running Azurite blob server: its endpoint, the account's key and container."""

    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    proc: subprocess.Popen[str]
    location: tempfile.TemporaryDirectory[str]

    def connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
                f"BlobEndpoint={self.endpoint};")

    def env(self, monkeypatch: pytest.MonkeyPatch, key: str = ACCOUNT_KEY) -> None:
        """Point GDAL and adlfs at this server for one test (undone after it): only
        ``AZURE_STORAGE_CONNECTION_STRING``, as a user of an emulator or Azure Stack would."""
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", self.connection_string(key))
        for var in _OTHER_AZURE:
            monkeypatch.delenv(var, raising=False)

    def fs(self) -> Any:
        """An adlfs file system on this server (a fresh one, not fsspec's cached instance)."""
        import adlfs

        return adlfs.AzureBlobFileSystem(connection_string=self.connection_string(),
                                         skip_instance_cache=True)

    def upload(self, path: Path, key: str, container: str = CONTAINER) -> str:
        """Upload a file as ``key`` in ``container``; its ``az://`` URI."""
        self.fs().put_file(str(path), f"{container}/{key}")
        return f"az://{container}/{key}"

    def stop(self) -> None:
        """End Azurite: closing its parent's stdin makes the parent end it, then itself."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.location.cleanup()


def start_azurite(binary: str) -> Azurite:
    """Start Azurite on a free loopback port with a fresh blob folder and one container."""
    location = tempfile.TemporaryDirectory(prefix="geoseg-azurite-")
    proc, port = start_child(["tests.azurite", binary, location.name], "Azurite")
    server = Azurite(f"http://127.0.0.1:{port}/{ACCOUNT}", proc, location)
    server.fs().mkdir(CONTAINER)
    return server


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite blob server for the session; skips when Azurite is not installed."""
    binary = azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed: run ci/install-azurite.sh (npm install azurite@3 "
                    "into ~/.cache/geoseg/azurite) or put azurite-blob on PATH")
    server = start_azurite(binary)
    yield server
    server.stop()


# --- the child process -------------------------------------------------------------------

_LISTENS = re.compile(r"listens on https?://[^:\s]+:(\d+)")


def main() -> None:
    """``python -m tests.azurite BINARY LOCATION``: run Azurite, print its port, end it when our
    stdin closes (the test process ended)."""
    binary, location = sys.argv[1], sys.argv[2]
    proc = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", "0",
                             "--location", location, "--silent", "--skipApiVersionCheck",
                             "--loose", "--disableTelemetry"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = _LISTENS.search(line)
        if found:
            print(found.group(1), flush=True)
            break
    else:
        print(f"Azurite ended: exit status {proc.wait()}", flush=True)
        return
    # drain its output (a full pipe would stall it) while we wait for our stdin to close
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    sys.stdin.read()
    proc.kill()
    proc.wait()


if __name__ == "__main__":
    main()
