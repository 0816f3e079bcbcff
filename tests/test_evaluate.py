"""geoseg evaluate: constructed masks and references with known answers, real files."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import box

from geoseg.cli import main
from geoseg.errors import GeoSegError
from geoseg.evaluate import evaluate_mask, scores_from_confusion

X0, Y0 = 420000.0, 4150000.0
CLASSES = [{"id": 0, "name": "water", "color": [0, 0, 255]},
           {"id": 1, "name": "land", "color": [0, 200, 0]}]


def write(path: Path, data: np.ndarray, *, x0: float = X0, y0: float = Y0, res: float = 10.0,
          crs: str = "EPSG:32618", nodata: int | None = 255, tags: bool = True) -> Path:
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                   dtype="uint8", crs=crs, nodata=nodata, transform=from_origin(x0, y0, res, res))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        if tags:
            dst.update_tags(GEOSEG_CLASSES=json.dumps(CLASSES))
    return path


def halves(height: int = 80, width: int = 100, split: int = 50) -> np.ndarray:
    out = np.ones((height, width), np.uint8)
    out[:, :split] = 0
    return out


def test_identical(tmp_path: Path) -> None:
    mask = write(tmp_path / "mask.tif", halves())
    report = evaluate_mask(mask, write(tmp_path / "ref.tif", halves(), tags=False))
    s = report.scores
    assert s.overall_accuracy == 1.0 and s.mean_iou == 1.0 and s.pixels == 8000
    assert s.confusion == [[4000, 0], [0, 4000]]
    assert [c.name for c in s.classes] == ["water", "land"]
    assert all(c.precision == c.recall == c.f1 == c.iou == 1.0 for c in s.classes)


def test_shifted_content_known_confusion(tmp_path: Path) -> None:
    mask = write(tmp_path / "mask.tif", halves(split=50))
    ref = write(tmp_path / "ref.tif", halves(split=60))
    s = evaluate_mask(mask, ref).scores
    assert s.confusion == [[4000, 800], [0, 3200]]  # 10 columns of reference water called land
    assert s.overall_accuracy == pytest.approx(0.9)
    water, land = s.classes
    assert water.iou == pytest.approx(4000 / 4800) and land.iou == pytest.approx(3200 / 4000)
    assert water.precision == 1.0 and water.recall == pytest.approx(4000 / 4800)
    assert land.f1 == pytest.approx(2 * (3200 / 4000) * 1.0 / (3200 / 4000 + 1.0))
    assert s.mean_iou == pytest.approx((4000 / 4800 + 0.8) / 2)


def test_shifted_grid_is_aligned_by_georeference(tmp_path: Path) -> None:
    """The same ground truth stored on a grid offset by 20 px and larger: perfect agreement
    over the overlap; pixels outside the reference are ignored."""
    mask = write(tmp_path / "mask.tif", halves())
    ground = np.full((80, 150), 255, np.uint8)
    ground[:60, 20:70] = 0  # reference columns 20..69 = mask columns 0..49
    ground[:60, 70:120] = 1
    ref = write(tmp_path / "ref.tif", ground, x0=X0 - 200.0, y0=Y0)
    report = evaluate_mask(mask, ref)
    assert report.scores.overall_accuracy == 1.0 and report.scores.pixels == 60 * 100
    assert report.ignored_pixels == 20 * 100


def test_disjoint_classes(tmp_path: Path) -> None:
    mask = write(tmp_path / "mask.tif", np.zeros((40, 40), np.uint8))
    ref = write(tmp_path / "ref.tif", np.ones((40, 40), np.uint8))
    s = evaluate_mask(mask, ref).scores
    assert s.overall_accuracy == 0.0 and s.mean_iou == 0.0
    water, land = s.classes
    assert water.precision == 0.0 and water.recall is None and water.iou == 0.0
    assert land.precision is None and land.recall == 0.0 and land.f1 is None


def test_nodata_in_either_is_ignored(tmp_path: Path) -> None:
    m, r = halves(), halves()
    m[:10] = 255
    r[:, :5] = 255
    r[70:, 5:] = 1  # wrong where the mask says water (cols 5..49 of rows 70..79)
    s = evaluate_mask(write(tmp_path / "m.tif", m), write(tmp_path / "r.tif", r)).scores
    assert s.pixels == 70 * 95
    assert s.confusion[1][0] == 10 * 45


def test_reference_raster_in_another_crs(tmp_path: Path) -> None:
    truth = halves(200, 200, 120)
    mask = write(tmp_path / "mask.tif", truth)
    src_transform = from_origin(X0, Y0, 10.0, 10.0)
    dst_transform, w, h = calculate_default_transform(
        "EPSG:32618", "EPSG:4326", 200, 200, X0, Y0 - 2000, X0 + 2000, Y0, resolution=2e-5)
    lonlat = np.full((h, w), 255, np.uint8)
    reproject(truth, lonlat, src_transform=src_transform, src_crs="EPSG:32618",
              dst_transform=dst_transform, dst_crs="EPSG:4326", resampling=Resampling.nearest,
              src_nodata=255, dst_nodata=255)
    ref = tmp_path / "ref_4326.tif"
    with rasterio.open(ref, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=dst_transform, nodata=255) as dst:
        dst.write(lonlat, 1)
    report = evaluate_mask(mask, ref)
    assert report.scores.pixels > 0.97 * 200 * 200
    assert report.scores.overall_accuracy > 0.99  # only boundary pixels may differ


def test_reference_polygons_in_another_crs_with_names(tmp_path: Path) -> None:
    mask = write(tmp_path / "mask.tif", halves())
    polygons = gpd.GeoDataFrame(
        {"cover": ["Water", "land"]},
        geometry=[box(X0, Y0 - 800, X0 + 500, Y0), box(X0 + 500, Y0 - 400, X0 + 1000, Y0)],
        crs="EPSG:32618").to_crs("EPSG:4326")
    gpkg = tmp_path / "ref.gpkg"
    polygons.to_file(gpkg)
    s = evaluate_mask(mask, gpkg, class_field="cover").scores
    assert s.overall_accuracy == 1.0 and s.pixels == 4000 + 2000


def test_no_overlap_is_a_clear_error(tmp_path: Path) -> None:
    mask = write(tmp_path / "mask.tif", halves())
    far = write(tmp_path / "far.tif", halves(), x0=X0 + 50000)
    with pytest.raises(GeoSegError, match="does not overlap"):
        evaluate_mask(mask, far)
    result = CliRunner().invoke(main, ["evaluate", str(mask), "--reference", str(far)])
    assert result.exit_code == 1 and result.output.startswith("error: ")
    assert "does not overlap" in result.output


def test_cli_prints_and_writes_json(tmp_path: Path) -> None:
    mask = write(tmp_path / "mask.tif", halves(split=50))
    ref = write(tmp_path / "ref.tif", halves(split=60))
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(main, ["evaluate", str(mask), "-r", str(ref), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "overall accuracy" in result.output and "90.0 %" in result.output
    data = json.loads(out.read_text())
    assert data["scores"]["overall_accuracy"] == pytest.approx(0.9)
    assert data["scores"]["confusion"] == [[4000, 800], [0, 3200]]
    assert data["scores"]["classes"][1]["name"] == "land"


def test_scores_need_pixels() -> None:
    with pytest.raises(GeoSegError, match="no pixel"):
        scores_from_confusion(np.zeros((2, 2), np.int64), ["a", "b"])


def test_mask_classes_come_from_the_mask_format(tmp_path: Path) -> None:
    """Names from a mask written through geoseg.maskfile (rules, predict); a malformed classes
    tag is the same error here as when vectorizing, naming the file and the tag."""
    from geoseg.errors import SceneError
    from geoseg.maskfile import write_mask
    from geoseg.models.bundle import ClassSpec

    classes = (ClassSpec(id=0, name="sea", color=(0, 0, 255)),
               ClassSpec(id=1, name="dunes", color=(230, 210, 150)))
    mask = write_mask(tmp_path / "rules.tif", halves(), "EPSG:32618",
                      from_origin(X0, Y0, 10.0, 10.0), classes)
    ref = write(tmp_path / "ref.tif", halves(), tags=False)
    assert [c.name for c in evaluate_mask(mask, ref).scores.classes] == ["sea", "dunes"]
    bad = write(tmp_path / "bad.tif", halves(), tags=False)
    with rasterio.open(bad, "r+") as dst:
        dst.update_tags(GEOSEG_CLASSES='[{"id": 0}]')
    with pytest.raises(SceneError, match=r"bad\.tif: tag GEOSEG_CLASSES is not a JSON list"):
        evaluate_mask(bad, ref)
