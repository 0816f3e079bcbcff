# ruff: noqa: F811  (the fixture imported below is a test argument by the same name)
"""``az://`` and ``abfs://`` against Azurite (Microsoft's Azure Storage emulator, in a child
process on 127.0.0.1 started by the fixture; skipped when not installed: ci/install-azurite.sh).

The store is named by ``AZURE_STORAGE_CONNECTION_STRING`` alone (the development account and
its key, ``BlobEndpoint=http://127.0.0.1:PORT/devstoreaccount1``), which GDAL's ``/vsiaz/`` and
adlfs read themselves. The scenes of tests/test_remote_inputs.py (a 4-band GeoTIFF and
Sentinel-2-named band files, B08 at 20 m) are uploaded to a container; every run must give the
masks of the local run over the same files, and the account key must reach no output.
"""

from __future__ import annotations

import json
import logging
import pickle
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dask
import pytest

from geoseg.batch.discover import discover
from geoseg.errors import SceneError
from geoseg.remote import cloud_options, expand, list_prefix, read_remote_window
from geoseg.remote.listing import filesystem
from geoseg.remote.store import OutputRoot
from geoseg.scene import open_scene
from geoseg.tiling import Window

from .azurite import (  # noqa: F401  (fixture)
    ACCOUNT,
    ACCOUNT_KEY,
    CONTAINER,
    Azurite,
    azurite,
    azurite_binary,
)
from .conftest import BANDS
from .test_hostile_cli import geoseg  # the CLI in this process: (exit status, output)
from .test_remote_inputs import (
    COG,
    EXIT_SOME_FAILED,
    PREFIX,
    same_mask,
    stage_scenes,
    written_text,
)
from .test_remote_outputs import expected_keys, store_keys

WRONG_KEY = "V1JPTkdrZXlXUk9OR2tleVdST05Ha2V5V1JPTkdrZXlXUk9OR2tleVdST05Ha2V5MDAwMDAwMDA="


@dataclass
class Blobs:
    """The scenes in Azurite under a fresh prefix, and the local reference run."""

    server: Azurite
    prefix: str  # <unique>/
    local: Path
    bundle: Path
    reference: Path  # `geoseg run` over ``local``
    tmp: Path

    def uri(self, rel: str) -> str:
        return f"az://{CONTAINER}/{self.prefix}{rel}"

    def abfs(self, rel: str) -> str:
        return f"abfs://{CONTAINER}@{ACCOUNT}.dfs.core.windows.net/{self.prefix}{rel}"

    def sas_url(self, rel: str) -> str:
        """A plain HTTP URL of the blob signed with a read-only SAS token (as Planetary
        Computer's asset hrefs are)."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        blob = f"{self.prefix}{rel}"
        token = generate_blob_sas(ACCOUNT, CONTAINER, blob, account_key=ACCOUNT_KEY,
                                  permission=BlobSasPermissions(read=True),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        return f"{self.server.endpoint}/{CONTAINER}/{blob}?{token}"


@pytest.fixture(scope="module")
def blobs(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("azure")
    prefix, local, bundle, reference = stage_scenes(azurite.upload, tmp, "azure")
    with pytest.MonkeyPatch.context() as mp:
        azurite.env(mp)
        yield Blobs(azurite, prefix, local, bundle, reference, tmp)


def test_a_container_prefix_and_globs_list_like_a_directory(blobs: Blobs) -> None:
    found = {s.name: s for s in discover([blobs.uri("scenes/")])}
    assert set(found) == {COG, PREFIX}
    assert found[COG].files == (blobs.uri(f"scenes/{COG}.tif"),)
    assert found[PREFIX].files == tuple(blobs.uri(f"scenes/{PREFIX}_{b}.tif") for b in BANDS)
    assert list_prefix(blobs.uri("scenes/")) == sorted(
        blobs.uri(f"scenes/{f.name}") for f in blobs.local.iterdir())
    assert expand(blobs.uri("**/*_B0[23].tif")) == [
        blobs.uri(f"scenes/{PREFIX}_B02.tif"), blobs.uri(f"scenes/{PREFIX}_B03.tif")]
    # abfs://container@account.dfs…: listed objects keep the account the user wrote
    assert expand(blobs.abfs("scenes/*_cog.tif")) == [blobs.abfs(f"scenes/{COG}.tif")]
    assert list_prefix(blobs.abfs("scenes/"))[0] == blobs.abfs(f"scenes/{COG}.tif")
    with pytest.raises(SceneError, match="no object matches"):
        expand(blobs.uri("scenes/*.jp2"))


def test_a_run_on_a_local_cluster_into_the_container_matches_the_local_run(
        blobs: Blobs, caplog: pytest.LogCaptureFixture) -> None:
    """`geoseg run az://…/scenes/ abfs://…/COG.tif az://…/gone.tif --out az://…/maps/` on a
    LocalCluster (its worker reads with the connection string of its own environment): the
    local masks, every object with its marker, the missing blob failed alone in one line, the
    account key nowhere."""
    root = blobs.uri("maps/")
    gone = blobs.uri("elsewhere/gone.tif")
    caplog.set_level(logging.DEBUG)
    code, output = geoseg("run", blobs.uri("scenes/"), blobs.abfs(f"scenes/{COG}.tif"), gone,
                          "-m", blobs.bundle, "-o", root, "--scratch", blobs.tmp / "scratch",
                          "--workers", "1")
    assert code == EXIT_SOME_FAILED, output
    names = (COG, f"{COG}-2", PREFIX)
    keys = store_keys(root)
    assert keys == expected_keys(names) | {".geoseg/gone.failed.json"}, sorted(keys)
    fs = filesystem(root)
    base = root.split("://", 1)[1]
    report = json.loads(fs.cat_file(base + "report.json"))
    by_name = {e["scene"]: e for e in report["scenes"]}
    assert {n: e["status"] for n, e in by_name.items()} == {
        COG: "ok", f"{COG}-2": "ok", PREFIX: "ok", "gone": "failed"}
    assert {by_name[n]["inputs"][0] for n in (COG, f"{COG}-2")} == {
        blobs.uri(f"scenes/{COG}.tif"), blobs.abfs(f"scenes/{COG}.tif")}
    error = by_name["gone"]["error"]
    assert error == f"{gone}: not found (HTTP 404); check the key or the prefix", error
    assert [line for line in output.splitlines() if "failed gone:" in line] == [
        f"failed gone: {error}"]
    # the masks, az:// and abfs:// alike, are the local run's
    got = blobs.tmp / "got"
    for name, local_name in ((COG, COG), (f"{COG}-2", COG), (PREFIX, PREFIX)):
        (got / name).mkdir(parents=True)
        (got / name / f"{name}.tif").write_bytes(fs.cat_file(f"{base}{name}/{name}.tif"))
        same_mask(got, name, blobs.reference, local_name)
    # the key: in no object uploaded, no file left in scratch, not in the output or the log
    secret = ACCOUNT_KEY.encode()
    for key in keys:
        assert secret not in fs.cat_file(base + key), key
    assert ACCOUNT_KEY not in written_text(blobs.tmp / "scratch")
    assert ACCOUNT_KEY not in output and ACCOUNT_KEY not in caplog.text


def test_sas_signed_urls_read_and_a_missing_blob_fails_alone_redacted(blobs: Blobs,
                                                                     tmp_path: Path) -> None:
    """Blob URLs signed with a SAS token (no connection string needed): the blob maps like the
    local file; a signed URL of a missing blob fails that scene alone, its token redacted."""
    signed = blobs.sas_url(f"scenes/{COG}.tif")
    missing = blobs.sas_url("scenes/gone.tif")
    token = missing.split("sig=", 1)[1].split("&", 1)[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AZURE_STORAGE_CONNECTION_STRING")
        code, output = geoseg("run", signed, missing, "-m", blobs.bundle, "-o", tmp_path,
                              "--scheduler", "synchronous")
    assert code == EXIT_SOME_FAILED, output
    same_mask(tmp_path, COG, blobs.reference, COG)
    report = json.loads((tmp_path / "report.json").read_text())
    error = next(e["error"] for e in report["scenes"] if e["scene"] == "gone")
    assert "\n" not in error and "gone.tif?" in error and "sig=***" in error, error
    assert "not found (HTTP 404)" in error, error
    for text in (output, written_text(tmp_path)):
        assert token not in text and signed.split("sig=", 1)[1] not in text


def test_a_wrong_key_or_a_missing_container_is_one_line_without_the_key(
        blobs: Blobs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # a blob of its own: GDAL keeps, per process, what it read of an object
    uri = blobs.server.upload(blobs.local / f"{COG}.tif",
                              f"{blobs.prefix}private/{uuid.uuid4().hex[:8]}.tif")
    blobs.server.env(monkeypatch, key=WRONG_KEY)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SceneError) as err:
        read_remote_window(uri, Window(0, 0, 8, 8))
    text = str(err.value)
    assert text.startswith(f"{uri}: access denied (HTTP 403); check "
                           "AZURE_STORAGE_CONNECTION_STRING") and "\n" not in text, text
    code, output = geoseg("run", blobs.local, "-m", blobs.bundle, "-o", blobs.uri("denied/"),
                          "--scratch", blobs.tmp / "scratch", "--scheduler", "synchronous")
    assert code == 1, output
    assert f"error: {blobs.uri('denied/')}: cannot write the output root (" in output, output
    for key in (WRONG_KEY, ACCOUNT_KEY):
        assert key not in text + output + caplog.text
    blobs.server.env(monkeypatch)
    code, output = geoseg("run", blobs.local, "-m", blobs.bundle, "-o", "az://no-such-container/m/",
                          "--scratch", blobs.tmp / "scratch", "--scheduler", "synchronous")
    assert code == 1, output
    assert "error: az://no-such-container/m/: no such bucket 'no-such-container'" in output


def test_the_connection_string_stays_out_of_task_graphs_and_reprs(blobs: Blobs) -> None:
    """Given as ``storage_options``, the connection string reads (GDAL's option for this
    process) but the options refuse to be pickled and show no key; the options a task gets
    from the environment's store hold no key."""
    uri = blobs.uri(f"scenes/{COG}.tif")
    given = cloud_options({"connection_string": blobs.server.connection_string()}, environ={})
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AZURE_STORAGE_CONNECTION_STRING")
        window = read_remote_window(uri, Window(0, 0, 16, 16), options=given)
    assert window.shape == (4, 16, 16)
    assert ACCOUNT_KEY not in repr(given) + str(given)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(given)
    task = dask.delayed(read_remote_window, pure=False)(uri, Window(0, 0, 16, 16),
                                                        options=cloud_options().public())
    assert ACCOUNT_KEY.encode() not in pickle.dumps(dict(task.__dask_graph__()))
    assert open_scene(uri).shape == (96, 128)


def test_an_abfs_output_root_publishes_and_lists_its_keys(blobs: Blobs, tmp_path: Path) -> None:
    """``abfs://container@account.dfs…/prefix/`` as an output root: the account in the URI,
    the keys listed relative to the root as for az://."""
    folder = tmp_path / "s"
    folder.mkdir()
    for name in ("a.tif", "scene.json"):
        (folder / name).write_text(name)
    root = OutputRoot(blobs.abfs(f"out-{uuid.uuid4().hex[:6]}/"))
    root.check_writable()
    assert root.publish(folder, "s/", "scene.json") == ["s/a.tif", "s/scene.json"]
    assert root.keys("") == {"s/a.tif", "s/scene.json"}
    assert root.read_json("s/scene.json") is None  # not JSON: no record
    assert root.listing("s/")["s/scene.json"]


def test_azurite_is_found_where_its_installer_puts_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ci/install-azurite.sh's folder ($GEOSEG_AZURITE_DIR), else PATH, else None (skip)."""
    monkeypatch.setenv("GEOSEG_AZURITE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert azurite_binary() is None
    binary = tmp_path / "node_modules" / ".bin" / "azurite-blob"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    assert azurite_binary() is None  # not executable
    binary.chmod(0o755)
    assert azurite_binary() == str(binary)
