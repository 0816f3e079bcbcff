"""Scenes in flight: the loop of ``geoseg run`` over its scenes, at most N at once.

Each scene runs :func:`~geoseg.batch.runner.process_scene` whole (open, predict, vectorize,
quick-looks, STAC, record, commit) in one of ``run.scenes_in_flight`` client threads, so the
prediction of scene k+1 keeps the workers busy while scene k's tail work runs on the client:
converting its COG and building overviews, merging polygons and writing the GeoPackage,
drawing quick-looks. That tail is GDAL, GEOS and numpy work that releases the GIL, so the
threads overlap; the Dask client is thread-safe for submission. Running the tail as tasks on
workers instead would move the staging files' contents between processes for no gain, and on a
GPU node put them beside the GPU workers anyway (see ``docs/architecture.md``, "Scenes in
flight", for the measured choice).

What stays as with one scene at a time:

- order: the blocks of an earlier scene have a higher Dask priority, so scenes finish about in
  order; entries (``BatchResult.entries``, the report, ``scene_finished`` events) are emitted
  strictly in scene order, a scene finished early waiting for those before it;
- failure isolation: a scene's failure is its own entry; with ``on_error="fail"`` no scene
  is started after the failure is known, the scenes already in flight finish and are reported
  (in order), the rest stay pending;
- stopping: ``KeyboardInterrupt`` (in this thread) or an :class:`~geoseg.errors.OutputError`
  (in a scene's thread) stops every scene in flight at its next block (its staging folder is
  removed); scenes committed before stay and the finished ones before the first unfinished are
  reported; then the exception is raised;
- ``scenes_in_flight=1`` runs every scene in the calling thread, exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.batch.discover import SceneSource
from geoseg.batch.outdir import output_error
from geoseg.batch.record import FailedRecord, as_skipped, utc_now
from geoseg.batch.runner import (
    BatchEvents,
    BatchResult,
    QuietEvents,
    failure_path,
    message_of,
    process_scene,
    settings_of,
    shown,
)
from geoseg.batch.state import STATE_DIR, SceneFolder, atomic_write_json, fingerprint
from geoseg.config import Config
from geoseg.errors import OutputError, SceneError
from geoseg.models.bundle import BundleInfo
from geoseg.tasks import TaskPolicy

if TYPE_CHECKING:
    from geoseg.remote.store import OutputRoot

__all__ = ["run_batch"]

log = logging.getLogger(__name__)


class _Stopped(BaseException):
    """Raised in a scene's thread at its next block when the run is stopping; not a failure of
    the scene (a BaseException, so that no ``except Exception`` records it as one)."""


@dataclass
class _Batch:
    """What every scene of a run shares; :meth:`scene` handles one (in any thread)."""

    bundle: BundleInfo
    cfg: Config
    out_dir: Path
    client: Any
    overwrite: bool
    threads: int | None
    events: BatchEvents
    policy: TaskPolicy | None
    store: OutputRoot | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.settings = settings_of(self.cfg)
        params = signature(self.events.progress).parameters
        self.named_progress = "scene" in params  # displays written before scenes in flight

    def progress(self, name: str) -> Any:
        """The ``(stage, done, total)`` callback of scene ``name``: forwards to the events
        (with the scene's name where they take it) and raises :class:`_Stopped` once the run
        is stopping."""

        def report(stage: str, done: int, total: int) -> None:
            if self.stop.is_set():
                raise _Stopped(name)
            if self.named_progress:
                self.events.progress(stage, done, total, scene=name)
            else:
                self.events.progress(stage, done, total)

        return report

    def scene(self, k: int, source: SceneSource) -> dict[str, Any]:
        """Scene ``k``'s entry: ``ok`` (computed and committed), ``skipped`` (done before with
        the same fingerprint) or ``failed`` (its failure recorded under the state folder).

        Raises:
            KeyboardInterrupt, OutputError: stop the run (the output folder fails every scene
                alike); _Stopped: the run is stopping.
        """
        folder = SceneFolder(self.out_dir, source.name, self.store)
        folder.clean()
        failed_file = failure_path(self.out_dir, source.name)
        failed_key = f"{STATE_DIR}/{failed_file.name}"
        start = time.perf_counter()
        policy = self.policy
        if policy is not None:  # earlier scenes first: they finish in order
            policy = replace(policy, priority=policy.priority - k)
        try:
            fp = fingerprint(self.bundle.sha256, self.settings, source.files,
                             self.cfg.storage.options)
            if not self.overwrite and folder.is_done(fp):
                entry = as_skipped(folder.record())
            else:
                entry = process_scene(source, self.bundle, self.cfg, folder, self.client,
                                      self.threads, fp, self.progress(source.name),
                                      policy).to_json()
            failed_file.unlink(missing_ok=True)
            if self.store is not None:
                self.store.remove([failed_key])
        except (KeyboardInterrupt, OutputError):
            raise  # the output folder fails every scene alike: stop, keeping finished ones
        except Exception as exc:  # noqa: BLE001 - any failure belongs to this scene only
            log.debug("scene %s failed", source.name, exc_info=True)
            entry = FailedRecord(
                scene=source.name,
                original=source.original,
                kind=source.kind,
                inputs=tuple(shown(f) for f in source.files),
                error=message_of(exc),
                error_type=type(exc).__name__,
                finished=utc_now(),
                timings_s={"total": round(time.perf_counter() - start, 3)},
            ).to_json()
            try:
                failed_file.parent.mkdir(exist_ok=True)
                atomic_write_json(failed_file, entry)
                if self.store is not None:
                    self.store.put_file(failed_key, failed_file)
            except SceneError as write_exc:  # the store refused the failure record
                raise OutputError(f"{write_exc}; scenes finished so far are kept and skipped "
                                  "when the run is repeated") from None
            except OSError as write_exc:
                stopping = output_error(self.out_dir, write_exc, always=True,
                                        option="--out" if self.store is None else "--scratch")
                if stopping is None:
                    raise
                raise stopping from write_exc
        return entry

    def stops_here(self, entry: dict[str, Any]) -> bool:
        """True when no scene may start after ``entry`` (failed, with ``on_error: fail``)."""
        return entry["status"] == "failed" and self.cfg.run.on_error == "fail"


def run_batch(
    sources: list[SceneSource],
    bundle: BundleInfo,
    cfg: Config,
    out_dir: Path,
    client: Any = None,
    *,
    overwrite: bool = False,
    threads: int | None = None,
    events: BatchEvents | None = None,
    policy: TaskPolicy | None = None,
    store: OutputRoot | None = None,
) -> BatchResult:
    """Process ``sources`` into ``out_dir/<scene name>/``, ``cfg.run.scenes_in_flight`` at once.

    With ``store`` (an output root in an object store), ``out_dir`` is the local scratch
    folder: each scene is built there and uploaded to ``<root><scene>/`` (``scene.json``
    last), its failure record to ``<root>.geoseg/``; finished scenes are told by the markers in
    the store.

    Scenes already finished with the same bundle, settings and inputs are ``skipped`` unless
    ``overwrite``; a scene that fails is ``failed`` with its error message, and the run goes on
    unless ``cfg.run.on_error == "fail"`` (then no further scene starts; those in flight
    finish). ``events`` get ``scene_started`` and ``scene_finished`` in scene order, from this
    thread; ``progress`` comes from the scenes' threads.

    Returns:
        the entries of the scenes handled (``ok``, ``failed`` or ``skipped``), in scene order.

    Raises:
        KeyboardInterrupt, OutputError: the run stopped; scenes committed before are kept.
    """
    batch = _Batch(bundle, cfg, out_dir, client, overwrite, threads, events or QuietEvents(),
                   policy, store)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_flight = min(cfg.run.scenes_in_flight, len(sources))
    if in_flight <= 1:
        return _one_by_one(batch, sources)
    return _in_flight(batch, sources, in_flight)


def _one_by_one(batch: _Batch, sources: list[SceneSource]) -> BatchResult:
    """Every scene in turn, in this thread (``scenes_in_flight: 1``)."""
    result = BatchResult()
    for k, source in enumerate(sources):
        batch.events.scene_started(k, len(sources), source.name)
        entry = batch.scene(k, source)
        result.entries.append(entry)
        batch.events.scene_finished(entry)
        if batch.stops_here(entry):
            break
    return result


def _in_flight(batch: _Batch, sources: list[SceneSource], limit: int) -> BatchResult:
    """At most ``limit`` scenes at once, each in a thread of a pool; entries in scene order."""
    result = BatchResult()
    futures: dict[int, Future[dict[str, Any]]] = {}
    started = emitted = 0
    halted = False

    def emit_finished() -> None:
        """Emit the entries of the finished scenes that follow those emitted, in order."""
        nonlocal emitted, halted
        while emitted in futures and _finished(futures[emitted]):
            entry = futures.pop(emitted).result()
            result.entries.append(entry)
            batch.events.scene_finished(entry)
            emitted += 1
            halted = halted or batch.stops_here(entry)

    with ThreadPoolExecutor(limit, thread_name_prefix="geoseg-scene") as pool:
        try:
            while True:
                running = [f for f in futures.values() if not f.done()]
                halted = halted or any(  # a failure stops new scenes before it is reported
                    _finished(f) and batch.stops_here(f.result()) for f in futures.values())
                while not halted and started < len(sources) and len(running) < limit:
                    source = sources[started]
                    batch.events.scene_started(started, len(sources), source.name)
                    futures[started] = pool.submit(batch.scene, started, source)
                    running.append(futures[started])
                    started += 1
                emit_finished()
                _raise_stopping(futures)
                if emitted == started and (halted or started == len(sources)):
                    return result
                if running:  # as listed before the scenes were started: one that finished
                    # since (while scenes started or entries were emitted) ends the wait at
                    # once, so that its slot is filled now, not at the next scene's end
                    wait(running, return_when=FIRST_COMPLETED)
        except BaseException:
            batch.stop.set()  # every scene in flight stops at its next block
            for future in futures.values():
                future.cancel()  # those not started yet
            wait(list(futures.values()))
            with contextlib.suppress(BaseException):  # what stopped the run is raised below
                emit_finished()  # the finished scenes before the first unfinished one
            raise


def _raise_stopping(futures: dict[int, Future[dict[str, Any]]]) -> None:
    """Raise the first (in scene order) exception that stops the run, if a scene raised one.
    ``scene`` raises nothing else: a scene's own failure is its entry."""
    for k in sorted(futures):
        future = futures[k]
        if future.done() and not future.cancelled() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]


def _finished(future: Future[dict[str, Any]]) -> bool:
    """True when ``future``'s scene has its entry (not raised, not cancelled)."""
    return future.done() and not future.cancelled() and future.exception() is None
