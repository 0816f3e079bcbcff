"""Batch runs over many scenes (``geoseg run``): discovery, resume, failures, reports.

:func:`plan_batch` checks everything that concerns the whole run (config, bundle, scenes found,
output directory) before any cluster starts; :func:`run_planned` then processes this job's
scenes on one Dask client and keeps ``report.json`` current after every scene.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.batch.catalog import CATALOG_JSON, write_catalog
from geoseg.batch.discover import SceneSource, band_key, discover
from geoseg.batch.inflight import run_batch
from geoseg.batch.outdir import check_output_dir, check_output_path, output_error
from geoseg.batch.report import build_report, write_report
from geoseg.batch.runner import BatchEvents, BatchResult, QuietEvents, select_split
from geoseg.batch.state import REPORT_JSON
from geoseg.config import Config, load_config
from geoseg.errors import BundleError, ConfigError, OutputError, SceneError
from geoseg.models.bundle import BundleInfo, check_bundle
from geoseg.pipeline import check_precision, tile_lattice
from geoseg.remote.uri import is_remote

if TYPE_CHECKING:
    from geoseg.remote.store import OutputRoot

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
        out_dir: the output directory (None: planned for inspection only); for an output
            root in an object store, the local scratch folder scenes are built in.
        split: ``(i, n)`` or None.
        out_uri: the output root URI (``s3://bucket/maps/``, ending in ``/``) when outputs go
            to an object store, else None. Always a string: never through ``pathlib``.
    """

    sources: list[SceneSource]
    todo: list[SceneSource]
    bundle: BundleInfo
    cfg: Config
    out_dir: Path | None
    split: tuple[int, int] | None
    out_uri: str | None = None

    @property
    def out(self) -> str:
        """The output root as the user named it: the URI, or the local folder."""
        return self.out_uri if self.out_uri is not None else str(self.out_dir)


def plan_batch(
    inputs: Sequence[str | os.PathLike[str]],
    bundle_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None,
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    split: tuple[int, int] | None = None,
    scratch: str | os.PathLike[str] | None = None,
) -> BatchPlan:
    """Load the config, check the bundle, find the scenes, check the output directory.

    ``out_dir`` may be an object-store URI *string* (``s3://bucket/maps/``, ``gs://``,
    ``az://``): each scene is then built in a local scratch folder under ``scratch`` (default
    :func:`tempfile.gettempdir`) and uploaded (:mod:`geoseg.remote.store`).

    The bundle is checked from its header (:func:`~geoseg.models.bundle.check_bundle`: no
    torch here); :func:`run_planned` has its weights checked on a worker before any block.
    ``out_dir`` is None when nothing will be written (``geoseg inspect``); otherwise files under
    it are never taken as scenes.

    Raises:
        ConfigError, BundleError: the run cannot start (nothing is written).
    """
    cfg = load_config(config_path, overrides)
    bundle = check_bundle(bundle_path)
    out_uri = _out_uri(out_dir)
    if out_uri is not None:
        from geoseg.remote.store import scratch_dir

        out: Path | None = scratch_dir(scratch or tempfile.gettempdir(), out_uri)
    else:
        out = None if out_dir is None else Path(out_dir)
    check_precision(cfg.predict)
    tile_lattice(bundle, cfg.predict, bundle.align)  # wrong for every scene: say it once
    if out_uri is not None:
        _check_inputs_outside_uri(inputs, out_uri)
    elif out is not None:
        check_output_path(out)
        _check_inputs_outside(inputs, out)
    exclude: list[str | Path] = [out_uri] if out_uri is not None else \
        [out] if out is not None else []
    sources = discover(inputs, exclude=exclude)
    if not sources:
        raise ConfigError(
            f"no scenes found in {', '.join(map(str, inputs))}: give GeoTIFFs (.tif/.tiff) or "
            "band files named like <scene>_B02.jp2 / <scene>_B4.TIF")
    return BatchPlan(sources, select_split(sources, split), bundle, cfg, out, split, out_uri)


def _out_uri(out_dir: str | os.PathLike[str] | None) -> str | None:
    """The output root URI (ending in ``/``) when ``out_dir`` names an object store, else None.

    Raises:
        OutputError: a URI that lost a ``/`` in ``pathlib``, or one naming no bucket.
    """
    from geoseg.batch.catalog import root_uri
    from geoseg.remote.uri import redact

    if out_dir is None:
        return None
    try:
        root = root_uri(out_dir if isinstance(out_dir, str) else os.fspath(out_dir))
    except ValueError as exc:
        raise OutputError(f"--out {redact(os.fspath(out_dir))}: {exc}") from None
    if root is not None and not is_remote(root):
        raise OutputError(f"--out {redact(root)}: outputs go to a local folder or an object "
                          "store (s3://, gs://, az://)")
    return root


def _check_inputs_outside_uri(inputs: Sequence[str | os.PathLike[str]], root: str) -> None:
    """Refuse an input URI under the output root (geoseg never reads its own outputs)."""
    from geoseg.remote.uri import redact

    for item in inputs:
        if isinstance(item, str) and is_remote(item) and \
                (item.rstrip("/") + "/").startswith(root):
            raise ConfigError(
                f"{redact(item)}: is inside the output root {redact(root)}; geoseg never takes "
                "its own outputs as scenes: give another --out (e.g. a sibling prefix)")


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
    from geoseg.remote.uri import redact

    meta = plan.bundle.meta
    return {
        "geoseg_version": _version(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "out_dir": redact(plan.out_uri) if plan.out_uri is not None else str(out.resolve()),
        "split": list(plan.split) if plan.split else None,
        "bundle": {"file": Path(plan.bundle.path).name, "path": str(plan.bundle.path),
                   "sha256": plan.bundle.sha256, "arch": meta.arch, "encoder": meta.encoder,
                   "bands": list(meta.band_names),
                   "classes": [c.model_dump() for c in meta.classes]},
        "config": plan.cfg.model_dump(),
    }


class _Reporting:
    """Events that also rewrite the report (and the run's STAC catalog) after every scene, so a
    killed run has one; for an output root in a store, they are written in the local scratch
    folder and uploaded."""

    def __init__(self, inner: BatchEvents, plan: BatchPlan, out: Path, header: dict[str, Any],
                 store: OutputRoot | None = None):
        self.inner, self.plan, self.out, self.header = inner, plan, out, header
        self.store = store
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

    def write(self) -> Path | str:
        """Write ``report.json`` (``report.html``, ``catalog.json``); return where the JSON
        is: a local path, or its URI when the output root is in a store.

        Raises:
            OutputError: the output folder (or store) cannot be written.
        """
        out, store = self.out, self.store
        report = build_report(self.plan.sources, self.entries, out, self.header, store)
        try:
            root = None if store is None else store.root
            path = write_report(report, out, self.plan.cfg.run.html, root)
            catalog = write_catalog(out if root is None else root, report["scenes"],
                                    header=self.header) if self.plan.cfg.run.stac else None
        except OSError as exc:
            stopping = output_error(out, exc, always=True,
                                    option="--out" if store is None else "--scratch")
            if stopping is None:
                raise
            raise stopping from exc
        if store is None:
            return path
        try:
            store.put_file(REPORT_JSON, path)
            if self.plan.cfg.run.html:
                store.put_file("report.html", out / "report.html")
            if catalog is not None:
                store.put_bytes(CATALOG_JSON, catalog)
        except SceneError as exc:
            raise OutputError(f"{exc}; scenes finished so far are kept and skipped when the "
                              "run is repeated") from None
        return store.uri(REPORT_JSON)


def run_planned(
    plan: BatchPlan,
    *,
    overwrite: bool = False,
    events: BatchEvents | None = None,
    on_client: Callable[[Any], None] | None = None,
) -> tuple[BatchResult, Path | str]:
    """Run a planned batch on the configured cluster; return its result and report path (its
    URI when the output root is in an object store: ``plan.out_uri``).

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
    cluster = session(cfg.cluster, cfg.predict.device, cpu_tasks=cfg.vectorize.enabled)
    made = not out.exists()
    check_output_dir(out, "--out" if plan.out_uri is None else "--scratch")
    store = None
    if plan.out_uri is not None:
        from geoseg.remote.store import OutputRoot

        store = OutputRoot(plan.out_uri, cfg.storage.options)
        store.check_writable()
    reporting = _Reporting(events or QuietEvents(), plan, out, _header(plan, out), store)
    if not plan.todo:
        return BatchResult(), reporting.write()
    with cluster.connect() as client:
        if client is not None and on_client is not None:
            on_client(client)
        if client is not None:
            from geoseg.workers import warm_stages

            warm_stages(client, vectorize=cfg.vectorize.enabled)
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
                           policy=cluster.policy, store=store)
    return result, reporting.write()
