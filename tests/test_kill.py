"""A batch run killed at any moment (SIGKILL) leaves no partial file under a final name, and a
re-run completes it with the outputs of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from .conftest import BANDS, gpkg_features, write_raster
from .test_run import pixels

GEOSEG = str(Path(sys.executable).parent / "geoseg")


def run_geoseg(args: list[str], kill_after: float | None = None) -> int | None:
    proc = subprocess.Popen([GEOSEG, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    if kill_after is None:
        return proc.wait(timeout=600)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def assert_only_complete_outputs(out: Path) -> list[str]:
    """Every visible entry is the report or a complete scene folder; return the scenes done."""
    done = []
    for entry in out.iterdir():
        if entry.name.startswith("."):
            continue  # staging folders and failure records: never final names
        if entry.is_file():
            assert entry.name in ("report.json", "report.html"), entry
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
def test_sigkill_at_any_moment_then_rerun_gives_the_uninterrupted_outputs(
        tmp_path, make_bundle) -> None:
    scenes = tmp_path / "in"
    scenes.mkdir()
    for k in range(3):
        write_raster(scenes / f"scene{k}.tif", pixels(20 + k, 256, 320), names=BANDS)
    bundle = make_bundle(n_classes=4)
    common = ["-m", str(bundle), "--scheduler", "synchronous", "--confidence"]
    ref = tmp_path / "ref"
    start = time.perf_counter()
    assert run_geoseg(["run", str(scenes), "-o", str(ref), *common]) == 0
    total = time.perf_counter() - start
    out = tmp_path / "out"
    killed = 0
    for fraction in (0.35, 0.55, 0.7, 0.85, 0.95):
        if run_geoseg(["run", str(scenes), "-o", str(out), *common],
                      kill_after=fraction * total) is None:
            killed += 1
        if out.exists():
            assert_only_complete_outputs(out)
    assert killed >= 3  # the run really was interrupted, several times, at different stages
    assert run_geoseg(["run", str(scenes), "-o", str(out), *common]) == 0
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
