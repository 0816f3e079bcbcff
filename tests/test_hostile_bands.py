"""Issue 15, hostile input: a scene's band files on different CRSs, or not on the same area.

The scene grid of band files is chosen CRS-aware: the CRS most band files share (ties: a
projected CRS before a geographic one), then the finest band in it — never "the smallest pixel
area in native units", which let degrees² beat metres² and put a UTM scene's mask in EPSG:4326.
Bands in another CRS are reprojected on read, with a warning; band files that only partly
overlap are used with a warning (in scene.json and on the console); band files that do not
overlap at all are refused with a SceneError naming each file and its CRS.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from geoseg.cli import main
from geoseg.errors import SceneError
from geoseg.scene import open_band_files

from .conftest import BANDS, coherent_field, write_raster

H, W = 120, 160
X0, Y0, RES = 420000.0, 4150000.0, 10.0  # EPSG:32618, 10 m
UTM = from_origin(X0, Y0, RES, RES)


def plane(seed: int, height: int = H, width: int = W) -> np.ndarray:
    return (1000 + 400 * coherent_field(height, width, seed, 1)).clip(1, 30000).astype("uint16")


def write_utm(path: Path, seed: int, col0: int = 0, width: int = W) -> Path:
    """A 10 m EPSG:32618 band file; ``col0``/``width`` cut it to a vertical strip of the grid."""
    return write_raster(path, plane(seed, H, width), from_origin(X0 + col0 * RES, Y0, RES, RES),
                        block=64)


def write_geographic(path: Path, seed: int) -> Path:
    """An EPSG:4326 band file covering the UTM grid's area at about the same pixel count
    (its pixels: ~1e-8 degrees² against 100 m²)."""
    left, bottom, right, top = transform_bounds("EPSG:32618", "EPSG:4326", X0, Y0 - H * RES,
                                                X0 + W * RES, Y0)
    transform = from_origin(left, top, (right - left) / W, (top - bottom) / H)
    return write_raster(path, plane(seed), transform, crs="EPSG:4326", block=64)


def write_far_away(path: Path, seed: int) -> Path:
    """An EPSG:4326 band file in central Europe, nowhere near the UTM 18N grid."""
    return write_raster(path, plane(seed), from_origin(10.0, 50.0, 1e-4, 1e-4), crs="EPSG:4326",
                        block=64)


def mixed_files(folder: Path, prefix: str, geographic: tuple[str, ...]) -> dict[str, Path]:
    """One file per band of :data:`BANDS`, those in ``geographic`` in EPSG:4326."""
    folder.mkdir(parents=True, exist_ok=True)
    return {b: (write_geographic if b in geographic else write_utm)(
        folder / f"{prefix}_{b}.tif", k) for k, b in enumerate(BANDS)}


@pytest.mark.parametrize("geographic", [("B08",), ("B04", "B08"), ("B02", "B03")],
                         ids=["one-of-four", "two-of-four", "two-first"])
def test_mixed_crs_grid_is_the_projected_one(tmp_path: Path, geographic: tuple[str, ...]) -> None:
    files = mixed_files(tmp_path, "mixed", geographic)
    for order in (files, dict(reversed(files.items()))):
        scene = open_band_files("mixed", order)
        assert rasterio.crs.CRS.from_wkt(scene.crs_wkt).to_epsg() == 32618
        assert (scene.transform, scene.shape) == (tuple(UTM)[:6], (H, W))
        assert {b.name for b in scene.bands if b.warp} == set(geographic)
        assert len(scene.warnings) == len(geographic), scene.warnings
        for band in geographic:
            (line,) = [w for w in scene.warnings if f"band {band} " in w]
            assert str(files[band]) in line and "EPSG:4326" in line and "EPSG:32618" in line
            assert "reprojected" in line


def test_most_shared_crs_wins(tmp_path: Path) -> None:
    """Three bands in EPSG:4326 and one in UTM: the grid of the three (fewest bands resampled),
    the UTM band reprojected with a warning."""
    files = mixed_files(tmp_path, "most", ("B02", "B03", "B04"))
    scene = open_band_files("most", files)
    assert rasterio.crs.CRS.from_wkt(scene.crs_wkt).to_epsg() == 4326
    assert [b.name for b in scene.bands if b.warp] == ["B08"]
    assert len(scene.warnings) == 1 and "band B08" in scene.warnings[0]


def test_same_crs_coarser_band_gives_no_warning(tmp_path: Path) -> None:
    """The Sentinel-2 case: one CRS, a 20 m band over the same area as the 10 m ones."""
    files = {b: write_utm(tmp_path / f"s2_{b}.tif", k) for k, b in enumerate(BANDS[:3])}
    files["B08"] = write_raster(tmp_path / "s2_B08.tif", plane(3, H // 2, W // 2),
                                from_origin(X0, Y0, 2 * RES, 2 * RES))
    scene = open_band_files("s2", files)
    assert scene.warnings == () and (scene.transform, scene.shape) == (tuple(UTM)[:6], (H, W))
    assert [b.name for b in scene.bands if b.warp] == ["B08"]


def test_partly_overlapping_band_files_warn(tmp_path: Path) -> None:
    files = {b: write_utm(tmp_path / f"part_{b}.tif", k) for k, b in enumerate(BANDS[:3])}
    files["B08"] = write_utm(tmp_path / "part_B08.tif", 3, col0=W // 2, width=W)  # east half
    scene = open_band_files("part", files)
    assert (scene.transform, scene.shape) == (tuple(UTM)[:6], (H, W))
    (line,) = scene.warnings
    assert line.startswith(f"band B08 ({files['B08']}) covers only 50 % of the scene grid")
    assert str(files["B02"]) in line and "nodata" in line


@pytest.mark.parametrize("far", ["utm", "geographic"])
def test_band_files_that_do_not_overlap_are_refused(tmp_path: Path, far: str) -> None:
    files = {b: write_utm(tmp_path / f"apart_{b}.tif", k) for k, b in enumerate(BANDS[:3])}
    files["B08"] = (write_utm(tmp_path / "apart_B08.tif", 3, col0=3 * W) if far == "utm"
                    else write_far_away(tmp_path / "apart_B08.tif", 3))
    with pytest.raises(SceneError, match="band files do not overlap") as info:
        open_band_files("apart", files)
    message = str(info.value)
    for band, path in files.items():
        assert f"{band} {path} (EPSG:" in message, message
    assert ("EPSG:4326" in message) == (far == "geographic") and "EPSG:32618" in message


def test_run_keeps_the_projected_grid_and_records_warnings(make_bundle, tmp_path: Path) -> None:
    """`geoseg run` over three band-file scenes: mixed CRSs (mask in UTM, warning), partly
    overlapping (warning in scene.json and on the console, nodata where a band is missing),
    and apart (failed, both CRSs named)."""
    folder = tmp_path / "scenes"
    mixed_files(folder, "mixed", ("B04", "B08"))
    for k, b in enumerate(BANDS):
        write_utm(folder / f"part_{b}.tif", k, *((W // 2, W) if b == "B08" else ()))
        if b == "B08":
            write_far_away(folder / f"apart_{b}.tif", k)
        else:
            write_utm(folder / f"apart_{b}.tif", k)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(folder), "-m", str(make_bundle()), "-o",
                                       str(out), "--scheduler", "synchronous", "--no-vectorize"])
    assert result.exit_code == 3, result.output  # "apart" failed, the others ok
    report = {e["scene"]: e for e in json.loads((out / "report.json").read_text())["scenes"]}
    assert {n: e["status"] for n, e in report.items()} == {"mixed": "ok", "part": "ok",
                                                            "apart": "failed"}

    mixed = json.loads((out / "mixed" / "scene.json").read_text())
    assert mixed["crs"] == "EPSG:32618" and mixed["size"] == [H, W]
    assert [w.split(" (")[0] for w in mixed["warnings"]] == ["band B04", "band B08"]
    with rasterio.open(out / "mixed" / "mixed.tif") as src:
        assert (src.crs.to_epsg(), src.transform, src.shape) == (32618, UTM, (H, W))
        mask = src.read(1)
    assert (mask != src.nodata).mean() > 0.95  # the reprojected bands cover the grid

    part = json.loads((out / "part" / "scene.json").read_text())
    (warning,) = part["warnings"]
    assert "band B08" in warning and "covers only 50 %" in warning
    with rasterio.open(out / "part" / "part.tif") as src:
        mask = src.read(1)
        assert (mask[:, : W // 2] == src.nodata).all() and (mask[:, W // 2 :] != src.nodata).all()
    lines = result.output.splitlines()
    shown = [line for line in lines if "warning" in line and "covers only 50 %" in line]
    assert len(shown) == 1 and "part_B08.tif" in shown[0], result.output

    error = report["apart"]["error"]
    assert "band files do not overlap" in error and "EPSG:4326" in error
    assert "EPSG:32618" in error and "apart_B08.tif" in error and "apart_B02.tif" in error
