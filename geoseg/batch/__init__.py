"""Batch runs over many scenes (``geoseg run``): discovery, resume, failures, reports.

:func:`plan_batch` checks everything that concerns the whole run (config, bundle, scenes found,
output directory) before any cluster starts; :func:`run_planned` then processes this job's
scenes on one Dask client and keeps ``report.json`` current after every scene.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any

from geoseg.batch.discover import SceneSource, band_key, discover
from geoseg.batch.inflight import run_batch
from geoseg.batch.outdir import check_output_dir, check_output_path, output_error
from geoseg.batch.report import build_report, write_report
from geoseg.batch.runner import BatchEvents, BatchResult, QuietEvents, select_split
from geoseg.config import Config, load_config
from geoseg.errors import BundleError, ConfigError
from geoseg.models.bundle import BundleInfo, check_bundle
from geoseg.pipeline import check_precision, tile_lattice

__all__ = [
    "BatchPlan",
    "BatchResult",
    "SceneSource",
    "band_key",
    "discover",
    "plan_batch",
    "run_planned",
]


@dataclass(frozen=True)
class BatchPlan:
    """A checked batch run.

    Attributes:
        sources: every scene found (the report covers them all).
        todo: the scenes of this job (all of them, or one split).
        bundle, cfg: the model (checked from its header: the client never imports torch;
            workers check it in full before the first block) and the effective
            configuration.
        out_dir: the output directory (None: planned for inspection only).
        split: ``(i, n)`` or None.
    """

    sources: list[SceneSource]
    todo: list[SceneSource]
    bundle: BundleInfo
    cfg: Config
    out_dir: Path | None
    split: tuple[int, int] | None


def plan_batch(
    inputs: Sequence[str | os.PathLike[str]],
    bundle_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None,
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    split: tuple[int, int] | None = None,
) -> BatchPlan:
    """Load the config, check the bundle, find the scenes, check the output directory.

    The bundle is checked from its header (:func:`~geoseg.models.bundle.check_bundle`: no
    torch here); :func:`run_planned` has its weights checked on a worker before any block.
    ``out_dir`` is None when nothing will be written (``geoseg inspect``); otherwise files under
    it are never taken as scenes.

    Raises:
        ConfigError, BundleError: the run cannot start (nothing is written).
    """
    cfg = load_config(config_path, overrides)
    bundle = check_bundle(bundle_path)
    out = None if out_dir is None else Path(out_dir)
    check_precision(cfg.predict)
    tile_lattice(bundle, cfg.predict, bundle.align)  # wrong for every scene: say it once
    if out is not None:
        check_output_path(out)
        _check_inputs_outside(inputs, out)
    sources = discover(inputs, exclude=[out] if out is not None else [])
    if not sources:
        raise ConfigError(
            f"no scenes found in {', '.join(map(str, inputs))}: give GeoTIFFs (.tif/.tiff) or "
            "band files named like <scene>_B02.jp2 / <scene>_B4.TIF")
    return BatchPlan(sources, select_split(sources, split), bundle, cfg, out, split)


def _check_inputs_outside(inputs: Sequence[str | os.PathLike[str]], out: Path) -> None:
    """Refuse an input that is the output folder or lies inside it: geoseg never reads its
    own outputs, so such an input would silently hold no scene."""
    root = out.resolve()
    for item in inputs:
        path = Path(item)
        if not path.exists():
            continue  # a glob, or a missing path: discovery names it
        resolved = path.resolve()
        if resolved == root or resolved.is_relative_to(root):
            where = "is the output folder" if resolved == root else "is inside the output folder"
            raise ConfigError(
                f"{item}: {where} {out}; geoseg never takes its own outputs as scenes: give "
                "another --out (e.g. a sibling folder)")


def _header(plan: BatchPlan, out: Path) -> dict[str, Any]:
    from geoseg.batch.runner import _version

    meta = plan.bundle.meta
    return {
        "geoseg_version": _version(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out.resolve()),
        "split": list(plan.split) if plan.split else None,
        "bundle": {"file": Path(plan.bundle.path).name, "path": str(plan.bundle.path),
                   "sha256": plan.bundle.sha256, "arch": meta.arch, "encoder": meta.encoder,
                   "bands": list(meta.band_names),
                   "classes": [c.model_dump() for c in meta.classes]},
        "config": plan.cfg.model_dump(),
    }


class _Reporting:
    """Events that also rewrite the report after every scene (so a killed run has one)."""

    def __init__(self, inner: BatchEvents, plan: BatchPlan, out: Path, header: dict[str, Any]):
        self.inner, self.plan, self.out, self.header = inner, plan, out, header
        self.entries: list[dict[str, Any]] = []
        self.named = "scene" in signature(inner.progress).parameters

    def scene_started(self, index: int, total: int, name: str) -> None:
        self.inner.scene_started(index, total, name)

    def progress(self, stage: str, done: int, total: int, scene: str = "") -> None:
        if self.named:
            self.inner.progress(stage, done, total, scene=scene)
        else:  # a display written before scenes in flight
            self.inner.progress(stage, done, total)

    def scene_finished(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self.write()
        self.inner.scene_finished(entry)

    def write(self) -> Path:
        out = self.out
        report = build_report(self.plan.sources, self.entries, out, self.header)
        try:
            return write_report(report, out, self.plan.cfg.run.html)
        except OSError as exc:
            stopping = output_error(out, exc, always=True)
            if stopping is None:
                raise
            raise stopping from exc


def run_planned(
    plan: BatchPlan,
    *,
    overwrite: bool = False,
    events: BatchEvents | None = None,
    on_client: Callable[[Any], None] | None = None,
) -> tuple[BatchResult, Path]:
    """Run a planned batch on the configured cluster; return its result and report path.

    The model is loaded where the blocks run and checked there in full before the first
    scene (:func:`~geoseg.pipeline.load_model`).

    Raises:
        BundleError: the bundle fails that check; nothing is written (an output folder made
            for this run is removed again).
    """
    from geoseg.cluster import session
    from geoseg.pipeline import load_model, model_ref

    out = plan.out_dir
    if out is None:
        raise ConfigError("this batch was planned without an output directory")
    cfg = plan.cfg
    cluster = session(cfg.cluster, cfg.predict.device)
    made = not out.exists()
    check_output_dir(out)
    reporting = _Reporting(events or QuietEvents(), plan, out, _header(plan, out))
    if not plan.todo:
        return BatchResult(), reporting.write()
    with cluster.connect() as client:
        if client is not None and on_client is not None:
            on_client(client)
        try:
            load_model(plan.bundle, model_ref(plan.bundle, cfg.predict, cluster.threads),
                       client, cluster.policy)
        except BundleError:
            if made:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if still empty
            raise
        result = run_batch(plan.todo, plan.bundle, cfg, out, client,
                           overwrite=overwrite, threads=cluster.threads, events=reporting,
                           policy=cluster.policy)
    return result, reporting.write()
