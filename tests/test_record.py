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
