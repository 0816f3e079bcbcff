"""A batch run killed at any moment (SIGKILL) leaves no partial file under a final name, and a
re-run completes it with the outputs of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from .conftest import BANDS, gpkg_features, write_raster
from .test_run import pixels

GEOSEG = str(Path(sys.executable).parent / "geoseg")


#: Where each interrupted run is killed: as soon as it writes a path matching the pattern
#: (relative to the output folder), or one of a later stage (a path that exists only briefly
#: may be missed). One run per stage, each resuming what the last one left.
KILL_AT = (
    ".partial-scene0/.scene0.tif.*",  # the first scene's mask being written
    ".partial-scene0/scene0.tif",  # its mask written; the confidence and the layer next
    ".partial-scene0/.scene0.gpkg.*",  # its layer being written
    "scene0/scene.json",  # the first scene done: the report next, then the second scene
    ".partial-scene1/quicklook.png",  # the second scene's quick-looks
)
#: Later still, before the run's end: where a run is killed if its stage passed unseen.
LATER = ("scene1/scene.json", ".partial-scene2")


def _written(out: Path, patterns: Sequence[str]) -> set[tuple[str, int, int]]:
    """The paths under ``out`` matching ``patterns``, as ``(path, inode, mtime ns)``."""
    found = set()
    for path in (p for pattern in patterns for p in out.glob(pattern)):
        try:
            st = path.lstat()
        except FileNotFoundError:  # renamed or removed since the listing
            continue
        found.add((str(path), st.st_ino, st.st_mtime_ns))
    return found


def run_geoseg(args: list[str], out: Path, kill_at: Sequence[str] = ()) -> int | None:
    """Run ``geoseg args``; with ``kill_at``, SIGKILL it (and its children) as soon as it writes
    a path matching one of those patterns under ``out``. Its exit status, or None if it was
    killed.

    Killed on what the run has done, not after some seconds: how long a stage takes depends
    on the machine and its load."""
    before = _written(out, kill_at)
    proc = subprocess.Popen([GEOSEG, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not kill_at:
            return proc.wait(timeout=600)
        while proc.poll() is None:
            if _written(out, kill_at) - before:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.005)
        return proc.returncode
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_only_complete_outputs(out: Path) -> list[str]:
    """Every visible entry is the report or a complete scene folder; return the scenes done."""
    done = []
    for entry in out.iterdir():
        if entry.name.startswith("."):
            continue  # staging folders and failure records: never final names
        if entry.is_file():
            assert entry.name in ("report.json", "report.html", "catalog.json"), entry
            if entry.suffix == ".json":
                json.loads(entry.read_text())  # complete JSON
            continue
        record = json.loads((entry / "scene.json").read_text())
        assert record["status"] == "ok"
        names = {p.name for p in entry.iterdir()}
        assert names == {Path(p).name for p in record["outputs"].values()} | {"scene.json"}
        with rasterio.open(entry / record["outputs"]["mask"]) as src:
            src.read(1)
        pyogrio.read_info(entry / record["outputs"]["vectors"], layer="landcover")
        done.append(entry.name)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("in_flight", [1, 3])
def test_sigkill_at_any_moment_then_rerun_gives_the_uninterrupted_outputs(
        tmp_path, make_bundle, in_flight) -> None:
    """Killed one scene at a time, or with all three scenes in flight at once (each kill
    then lands while other scenes are midway too)."""
    scenes = tmp_path / "in"
    scenes.mkdir()
    for k in range(3):
        write_raster(scenes / f"scene{k}.tif", pixels(20 + k, 256, 320), names=BANDS)
    bundle = make_bundle(n_classes=4)
    common = ["-m", str(bundle), "--scheduler", "synchronous", "--confidence",
              "--scenes-in-flight", str(in_flight)]
    ref = tmp_path / "ref"
    assert run_geoseg(["run", str(scenes), "-o", str(ref), *common], ref) == 0
    out = tmp_path / "out"
    for i, stage in enumerate(KILL_AT):
        code = run_geoseg(["run", str(scenes), "-o", str(out), *common], out,
                          kill_at=(*KILL_AT[i:], *LATER))
        assert code is None, f"the run finished before it wrote {stage}"  # really interrupted
        assert_only_complete_outputs(out)
    assert run_geoseg(["run", str(scenes), "-o", str(out), *common], out) == 0
    assert sorted(assert_only_complete_outputs(out)) == ["scene0", "scene1", "scene2"]
    assert not list(out.glob(".partial-*"))
    for k in range(3):
        name = f"scene{k}"
        for suffix in (".tif", ".confidence.tif"):
            with rasterio.open(ref / name / f"{name}{suffix}") as a, \
                    rasterio.open(out / name / f"{name}{suffix}") as b:
                assert np.array_equal(a.read(), b.read())
                assert (a.transform, a.crs, a.tags()) == (b.transform, b.crs, b.tags())
        assert gpkg_features(ref / name / f"{name}.gpkg") == gpkg_features(
            out / name / f"{name}.gpkg")
