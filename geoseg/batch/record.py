"""What a batch run records about each scene: ``scene.json``, failure records, report entries.

Every entry starts with the same five keys (``scene``, ``original``, ``status``, ``kind``,
``inputs``); a finished scene adds what it made (:class:`SceneRecord`), a failed one why it
failed (:class:`FailedRecord`). The objects are frozen; :meth:`SceneEntry.to_json` gives the
plain dict that is written (keys in field order, tuples as lists) and that displays and the
report read. Records read back from disk stay plain dicts: they may come from another geoseg
version, and are passed on as written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

__all__ = ["STATUSES", "ClassCount", "FailedRecord", "SceneEntry", "SceneRecord", "Status",
           "as_skipped", "utc_now"]

Status = Literal["ok", "skipped", "failed", "pending"]
#: Every scene status a report can hold.
STATUSES: tuple[Status, ...] = ("ok", "skipped", "failed", "pending")


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (``2025-01-31T12:00:00+00:00``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: dataclasses as dicts in field order, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class SceneEntry:
    """One scene in a run: a ``pending`` report entry as it is, and the start of every record.

    Attributes:
        scene: the scene's output name (safe, unique in the run).
        original: its name as found (may differ from ``scene``).
        status: ``ok``, ``skipped``, ``failed`` or ``pending``.
        kind: how the scene is stored (a multi-band file, or band files).
        inputs: the scene's input files.
    """

    scene: str
    original: str
    status: Status
    kind: str
    inputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The entry as written: a plain dict, keys in field order, tuples as lists."""
        out: dict[str, Any] = _plain(self)
        return out


@dataclass(frozen=True)
class ClassCount:
    """One class of a finished scene: its id, pixel count and area (m², rounded to mm²)."""

    id: int
    pixels: int
    area_m2: float


@dataclass(frozen=True, kw_only=True)
class SceneRecord(SceneEntry):
    """A finished scene: its ``scene.json``, and its entry in the run's results.

    Attributes:
        bands: bundle band name → ``file#band`` read for it (`` (resampled)`` when warped).
        encodings: the bands whose values were converted to the bundle's encoding: band name →
            ``from``/``to`` (scale, offset) and the ``gain``/``bias`` applied (``DN × gain +
            bias``); empty when every band was read as stored.
        stac: for a scene from a STAC item, ``{"id", "document", "bands"}``: the item's id, the
            document it was found in and each band's asset (``asset``, ``href``, 1-based
            ``index``, declared ``scale``/``offset``/``nodata``), URIs redacted of
            credentials; None for other scenes.
        size: ``(height, width)`` of the scene grid, pixels.
        crs: ``EPSG:n``, or the CRS's name.
        warnings: what the user should know about the inputs (each names its file).
        outputs: output role → path relative to the scene folder.
        classes: class name → :class:`ClassCount`, classes present only.
        nodata_pixels: mask pixels that are nodata.
        blocks, tiles: blocks computed and model tiles run.
        timings_s: stage → seconds (``open``, ``predict``, ``vectorize``, ``report``, ``total``).
        fingerprint: the resume fingerprint (bundle, settings, input files).
        finished: UTC time, ISO 8601.
        geoseg_version, bundle_sha256: what made it.
    """

    status: Status = "ok"
    bands: Mapping[str, str]
    encodings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stac: Mapping[str, Any] | None = None
    size: tuple[int, int]
    crs: str
    warnings: tuple[str, ...]
    outputs: Mapping[str, str]
    classes: Mapping[str, ClassCount]
    nodata_pixels: int
    blocks: int
    tiles: int
    timings_s: Mapping[str, float]
    fingerprint: str
    finished: str
    geoseg_version: str
    bundle_sha256: str


@dataclass(frozen=True, kw_only=True)
class FailedRecord(SceneEntry):
    """A scene that failed: its failure record (``.geoseg/<scene>.failed.json``) and entry.

    Attributes:
        error: the message, naming the file and what to do.
        error_type: the exception's class name.
        finished: UTC time, ISO 8601.
        timings_s: ``{"total": seconds}`` spent on the scene.
    """

    status: Status = "failed"
    error: str
    error_type: str
    finished: str
    timings_s: Mapping[str, float]


def as_skipped(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A record read back from a finished scene folder, as this run's ``skipped`` entry."""
    return dict(record or {}, status="skipped")
