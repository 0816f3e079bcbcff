"""geoseg.batch.record: the typed scene entries write the keys geoseg has always written."""

from __future__ import annotations

import dataclasses
import json

import pytest

from geoseg.batch.record import (
    STATUSES,
    ClassCount,
    FailedRecord,
    SceneEntry,
    SceneRecord,
    as_skipped,
    utc_now,
)

COMMON = ["scene", "original", "status", "kind", "inputs"]


def _ok() -> SceneRecord:
    return SceneRecord(
        scene="s2", original="s2 (1)", kind="bands", inputs=("a_B02.jp2", "a_B03.jp2"),
        bands={"B02": "a_B02.jp2#1", "B03": "a_B03.jp2#1 (resampled)"}, size=(1947, 1933),
        crs="EPSG:32618", warnings=("a_B03.jp2 covers part of the grid",),
        outputs={"mask": "s2.tif", "stac": "stac.json"},
        classes={"water": ClassCount(id=0, pixels=10, area_m2=1000.0)}, nodata_pixels=3,
        blocks=1, tiles=9, timings_s={"open": 0.1, "total": 1.0}, fingerprint="f" * 64,
        finished="2025-01-31T12:00:00+00:00", geoseg_version="0.1.0", bundle_sha256="e" * 64)


def test_ok_record_keys_and_values_as_written() -> None:
    data = _ok().to_json()
    assert list(data) == COMMON + [
        "bands", "encodings", "stac", "size", "crs", "warnings", "outputs", "classes",
        "nodata_pixels", "blocks", "tiles", "timings_s", "fingerprint", "finished",
        "geoseg_version", "bundle_sha256"]
    assert data["status"] == "ok"
    assert data["inputs"] == ["a_B02.jp2", "a_B03.jp2"]  # lists, as JSON reads them back
    assert data["size"] == [1947, 1933]
    assert data["warnings"] == ["a_B03.jp2 covers part of the grid"]
    assert data["classes"] == {"water": {"id": 0, "pixels": 10, "area_m2": 1000.0}}
    assert data["encodings"] == {} and data["stac"] is None  # read as stored, not from STAC
    assert json.loads(json.dumps(data)) == data


def test_failed_and_pending_entries() -> None:
    failed = FailedRecord(scene="x", original="x", kind="file", inputs=("x.tif",),
                          error="x.tif: not a raster", error_type="SceneError",
                          finished=utc_now(), timings_s={"total": 0.5}).to_json()
    assert list(failed) == COMMON + ["error", "error_type", "finished", "timings_s"]
    assert failed["status"] == "failed"
    pending = SceneEntry(scene="y", original="y", status="pending", kind="file",
                         inputs=("y.tif",)).to_json()
    assert pending == {"scene": "y", "original": "y", "status": "pending", "kind": "file",
                       "inputs": ["y.tif"]}
    assert set(STATUSES) == {"ok", "skipped", "failed", "pending"}


def test_records_are_frozen_and_skipped_keeps_what_was_read() -> None:
    record = _ok()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "failed"  # type: ignore[misc]
    read_back = record.to_json()
    skipped = as_skipped(read_back)
    assert skipped == {**read_back, "status": "skipped"} and read_back["status"] == "ok"
    assert as_skipped(None) == {"status": "skipped"}


# --- what a run records of what it read (real files, a real run) --------------------------------

def _geoseg(*args: object) -> tuple[int, str]:
    from click.testing import CliRunner

    from geoseg.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_scene_json_records_conversions_and_the_stac_band_match(tmp_path) -> None:
    """An item storing DN + 1000 and saying so (raster:bands offset -0.1), mapped with a bundle
    that records reflectance = DN / 10000: every band converted, and the match recorded; a file
    scene in the bundle's encoding records no conversion and no STAC match."""
    from .test_run import tiny_bundle
    from .test_stac_inputs import band_files, save_item_collection, stac_item

    bundle = tiny_bundle(tmp_path / "tiny.safetensors")
    assert _geoseg("model", "set-encoding", bundle, "--scale", "0.0001", "--offset", "0")[0] == 0
    shifted = band_files(tmp_path / "shifted", "L2A", 1, add=1000)
    direct = band_files(tmp_path / "direct", "direct", 2, encoding=(0.0001, 0.0))
    items = save_item_collection([stac_item("S2A_ITEM", {b: str(p) for b, p in shifted.items()},
                                            "earth-search", (0.0001, -0.1))],
                                 tmp_path / "items.json")
    out = tmp_path / "out"
    code, output = _geoseg("run", items, direct["B02"].parent, "-m", bundle, "-o", out,
                           "--scheduler", "synchronous")
    assert code == 0, output
    record = json.loads((out / "S2A_ITEM" / "scene.json").read_text())
    assert set(record["encodings"]) == {"B02", "B03", "B04", "B08"}
    b04 = record["encodings"]["B04"]
    assert (b04["gain"], b04["bias"]) == pytest.approx((1.0, -1000.0))  # DN - 1000
    assert record["stac"]["id"] == "S2A_ITEM"
    assert record["stac"]["document"] == str(items)
    assert record["stac"]["bands"]["B04"] == {"asset": "red", "href": str(shifted["B04"]),
                                              "index": 1, "scale": 0.0001, "offset": -0.1,
                                              "nodata": 0}
    plain = json.loads((out / "direct" / "scene.json").read_text())
    assert plain["encodings"] == {} and plain["stac"] is None


def test_inspect_refuses_the_encoding_mismatch_run_refuses(tmp_path) -> None:
    """A file declaring reflectance scaling, a bundle recording no encoding: `geoseg inspect`
    reports the scene as the run would fail it."""
    from .test_run import tiny_bundle
    from .test_stac_inputs import band_files

    bundle = tiny_bundle(tmp_path / "tiny.safetensors")
    files = band_files(tmp_path / "declared", "declared", 1, encoding=(0.0001, 0.0))
    code, output = _geoseg("inspect", files["B02"].parent, "-m", bundle, "--json")
    (row,) = json.loads(output)["scenes"]
    assert "declares scale 0.0001" in row["error"] and "records no input encoding" in row["error"]
    out = tmp_path / "out"
    code, output = _geoseg("run", files["B02"].parent, "-m", bundle, "-o", out,
                           "--scheduler", "synchronous")
    assert code == 3, output
    (entry,) = json.loads((out / "report.json").read_text())["scenes"]
    assert entry["status"] == "failed" and entry["error"] == row["error"]
