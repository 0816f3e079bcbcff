"""Hostile input, issue 15 classes 3 and 4: one clear line instead of a crash or a traceback,
and exit statuses exactly as documented (0 ok/skipped, 3 some or all scenes failed, 1 nothing
could start or the output folder failed, 2 usage).

Real GeoTIFFs, a real tiny bundle, the real CLI; a real tmpfs for the read-only and full-disk
cases where this process may mount one (root in CI), else those cases skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.cli import main

from .conftest import BANDS, TINY_DEEPLAB, cli_env, geoseg_cli, write_raster
from .test_run import pixels, tiny_bundle

SYNC = ("--scheduler", "synchronous", "--no-vectorize")


def geoseg(*args: object) -> tuple[int, str]:
    """Run the CLI in this process; (exit status, everything it printed)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    """The output's ``error:`` line, checking it is the only thing said and no traceback."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.safetensors")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A folder with two good scenes."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    write_raster(folder / "a.tif", pixels(1, 160, 200), names=BANDS)
    write_raster(folder / "b.tif", pixels(2, 160, 200), names=BANDS)
    return folder


# --- class 4: exit statuses ------------------------------------------------------------------

def test_exit_0_when_every_scene_is_ok_or_skipped(good, bundle, tmp_path) -> None:
    out = tmp_path / "out"
    assert geoseg("run", good, "-m", bundle, "-o", out, *SYNC)[0] == 0
    code, output = geoseg("run", good, "-m", bundle, "-o", out, *SYNC)
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["skipped"] == 2


def test_exit_3_when_some_or_all_scenes_fail(good, bundle, tmp_path) -> None:
    (good / "corrupt.tif").write_bytes(os.urandom(3000))
    code, output = geoseg("run", good, "-m", bundle, "-o", tmp_path / "some", *SYNC)
    assert code == 3, output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.tif").write_bytes(os.urandom(3000))
    (bad / "empty.tif").write_bytes(b"")
    code, output = geoseg("run", bad, "-m", bundle, "-o", tmp_path / "all", *SYNC)
    assert code == 3, output
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    assert report["summary"]["failed"] == 2 and report["summary"]["ok"] == 0


def test_exit_2_on_a_usage_error(good, bundle, tmp_path) -> None:
    assert geoseg("run", good, "-m", bundle, "-o", tmp_path / "o", "--no-such-option")[0] == 2


@pytest.mark.parametrize("case", ["no bundle", "out is input", "input inside out",
                                  "out is a file", "name too long", "no core left"])
def test_exit_1_with_one_line_when_nothing_can_start(case, good, bundle, make_bundle,
                                                     tmp_path) -> None:
    out, model, extra = tmp_path / "out", bundle, ()
    words = {"no bundle": "missing.safetensors", "out is input": "is the output folder",
             "input inside out": "inside the output folder",
             "out is a file": "not a directory", "name too long": "name too long",
             "no core left": "halo"}[case]
    inputs: list[object] = [good]
    if case == "no bundle":
        model = tmp_path / "missing.safetensors"
    elif case == "out is input":
        out = good
    elif case == "input inside out":
        out = good.parent
    elif case == "out is a file":
        out.write_text("not a folder")
    elif case == "name too long":
        out = tmp_path / ("x" * 300)
    elif case == "no core left":
        # DeepLabV3+ runs at the bundle's tile (256 px): a 200 px halo leaves no core, which
        # is wrong for every scene, so it is said once instead of failing each scene
        model = make_bundle(TINY_DEEPLAB, name="deeplab.safetensors")
        extra = ("--halo", "200")
    before = sorted(p for p in tmp_path.rglob("*"))
    code, output = geoseg("run", *inputs, "-m", model, "-o", out, *SYNC, *extra)
    assert code == 1, output
    assert words in one_line_error(output)
    assert "failed" not in output  # no scene was started, let alone failed
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_inspect_and_run_agree_on_which_scenes_can_run(good, bundle, tmp_path) -> None:
    write_raster(good / "float.tif", pixels(3, 160, 200).astype("float32"), names=BANDS)
    write_raster(good / "threebands.tif", pixels(4, 160, 200)[:3], names=BANDS[:3])
    code, text = geoseg("inspect", good, "-m", bundle, "--json")
    assert code == 0
    rows = {r["scene"]: r for r in json.loads(text)["scenes"]}
    cannot = {name for name, r in rows.items() if "error" in r}
    assert cannot == {"float", "threebands"}
    out = tmp_path / "out"
    assert geoseg("run", good, "-m", bundle, "-o", out, *SYNC)[0] == 3
    report = json.loads((out / "report.json").read_text())
    failed = {e["scene"]: e["error"] for e in report["scenes"] if e["status"] == "failed"}
    assert set(failed) == cannot
    for name in cannot:  # the same reason, word for word
        assert rows[name]["error"] in failed[name]


# --- class 3: user strings on the console -------------------------------------------------------

@pytest.mark.parametrize("folder", ["[/", "[x]", "[bold red]", "[link=file:x]a"])
def test_markup_in_paths_is_printed_as_written(folder, bundle, tmp_path) -> None:
    scenes = tmp_path / folder
    scenes.mkdir()
    write_raster(scenes / "a.tif", pixels(1, 160, 200), names=BANDS)
    (scenes / "broken.tif").write_bytes(b"no raster")
    out = tmp_path / f"out {folder}"
    code, output = geoseg("run", scenes, "-m", bundle, "-o", out, *SYNC)
    assert code == 3, output
    assert folder in output  # the failed scene's message names its path, markup and all
    assert str(out) in output


def test_control_characters_never_reach_the_terminal(bundle, tmp_path) -> None:
    scenes = tmp_path / "esc\x1b[31mred\x07"
    scenes.mkdir()
    (scenes / "broken.tif").write_bytes(b"no raster")
    code, output = geoseg("run", scenes, "-m", bundle, "-o", tmp_path / "out", *SYNC)
    assert code == 3
    assert "\x1b" not in output and "\x07" not in output
    assert "\\x1b[31mred" in output  # shown, escaped


# --- class 3: the output folder: read-only, full ----------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs mounted at ``tmp_path/fs`` (root only; skips elsewhere)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_output_folder_is_one_line(good, bundle, tmpfs) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code, output = geoseg("run", good, "-m", bundle, "-o", tmpfs / "maps", *SYNC)
    assert code == 1
    line = one_line_error(output)
    assert "read-only" in line and str(tmpfs / "maps") in line


def test_permission_denied_output_folder_is_one_line(good, bundle, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    argv = ["run", str(good), "-m", str(bundle), "-o", str(locked / "maps"), *SYNC]
    if os.geteuid() == 0:  # root writes anywhere: a child without the override capabilities
        drop = "-dac_override,-dac_read_search"
        done = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}",
                               *geoseg_cli(), *argv], capture_output=True, text=True,
                              env=cli_env())
        if done.returncode and "setpriv" in done.stderr:
            pytest.skip(f"cannot drop capabilities here: {done.stderr.strip()}")
        code, output = done.returncode, done.stdout + done.stderr
    else:
        code, output = geoseg(*argv)
    assert code == 1, output
    line = one_line_error(output)
    assert "permission denied" in line.lower() and str(locked / "maps") in line


def fill(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_full_disk_stops_the_run_with_one_line_and_keeps_finished_scenes(
    good, bundle, tmpfs, tmp_path
) -> None:
    out = tmpfs / "maps"
    assert geoseg("run", good / "a.tif", "-m", bundle, "-o", out, *SYNC)[0] == 0
    record = (out / "a" / "scene.json").read_bytes()
    with rasterio.open(out / "a" / "a.tif") as src:
        mask = src.read()
    filler = fill(tmpfs)
    code, output = geoseg("run", good, "-m", bundle, "-o", out, *SYNC)
    assert code == 1, output
    line = one_line_error(output)
    assert "no space left" in line and str(out) in line
    assert (out / "a" / "scene.json").read_bytes() == record  # finished scene untouched
    assert not (out / "b").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".partial-")]
    filler.unlink()
    code, output = geoseg("run", good, "-m", bundle, "-o", out, *SYNC)
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert {e["scene"]: e["status"] for e in report["scenes"]} == {"a": "skipped", "b": "ok"}
    with rasterio.open(out / "a" / "a.tif") as src:
        np.testing.assert_array_equal(src.read(), mask)


# --- class 3: a pixel read failing on a worker -------------------------------------------------

@pytest.mark.slow
def test_a_worker_read_failure_is_one_line_naming_the_file(good, bundle, tmp_path) -> None:
    """A COG whose header is intact but whose tiles are cut off fails on the worker that reads
    it; the user sees the file and the cause in one line, not Dask's task and traceback text."""
    with rasterio.open(good / "a.tif") as src:
        profile, data = src.profile, src.read()
    for key in ("tiled", "blockxsize", "blockysize"):
        profile.pop(key, None)
    cog = good / "cut.tif"
    with rasterio.open(cog, "w", **{**profile, "driver": "COG", "blocksize": 128}) as dst:
        dst.write(data)
    cog.write_bytes(cog.read_bytes()[: cog.stat().st_size // 2])
    out = tmp_path / "out"
    done = subprocess.run([*geoseg_cli(), "run", str(good), "-m", str(bundle), "-o", str(out),
                           "--workers", "1", "--no-vectorize"],
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    for noise in ("Traceback", "Compute Failed", "Task:", "Key:"):
        assert noise not in output
    failed = [line for line in output.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "cut.tif" in failed[0] and "cannot read pixels" in failed[0]
    report = json.loads((out / "report.json").read_text())
    entry = next(e for e in report["scenes"] if e["scene"] == "cut")
    assert entry["error_type"] == "SceneError"  # the geoseg error itself reached the client
    assert entry["error"].startswith(str(cog))
