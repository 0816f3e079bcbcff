"""Dask worker side: one model per worker process, loaded once by a WorkerPlugin.

The plugin carries the bundle's bytes, so workers need no shared filesystem with the client;
each worker writes them to its local directory, validates and loads the bundle, and puts the
model in its process cache (:func:`geoseg.predict.cache_model`) where block tasks find it.

This is where a bundle is checked in full (finite weights that fit the architecture, the built
model's size divisor): the client only reads its header (:func:`geoseg.models.check_bundle`)
and never imports torch. :func:`load_on_workers` does it once per client, before any block.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.errors import GeoSegError, detached
from geoseg.predict import ModelRef, cache_model, get_model, has_model
from geoseg.tasks import TaskPolicy, map_as_finished

if TYPE_CHECKING:
    from geoseg.models.bundle import BundleInfo

__all__ = ["CLIENT_IMPORTS", "VECTORIZE_IMPORTS", "WORKER_IMPORTS", "ModelPlugin", "WarmImports",
           "load_on_workers", "register_model", "warm_imports", "warm_stages"]

log = logging.getLogger(__name__)

#: Modules the client needs for its first scene's prediction graph and imports while the
#: workers load the model (:func:`register_model`): ``dask.array`` took 0.7 s (scipy included)
#: at the first scene's start, where the model then waited (``benchmarks/gaps.py``).
CLIENT_IMPORTS = ("dask.array",)
#: Modules a worker's first block task imports: unpickling its graph pulls in ``dask.array``
#: (0.7 s of CPU) and reading pixels ``rasterio`` (0.35 s); imported while the model loads.
WORKER_IMPORTS = ("dask.array", "rasterio", "geoseg.scene")
#: Those of vectorizing, where a run has that stage: the workers' block tasks (labels, rings,
#: WKB) and the client's GeoPackage writer (``pyogrio``: 0.4 s at the first scene's merge).
VECTORIZE_IMPORTS: dict[str, tuple[str, ...]] = {
    "worker": ("geoseg.vectorize.blocks", "scipy.sparse.csgraph", "shapely"),
    "client": ("geoseg.vectorize", "pyogrio"),
}


class ModelPlugin(WorkerPlugin):
    """Loads one bundle into every worker (present and future) of a cluster."""

    def __init__(
        self, ref: ModelRef, payload: bytes, resources: dict[str, float] | None = None
    ) -> None:
        self.ref = ref
        self.payload = payload
        self.resources = dict(resources or {})
        self.name = f"geoseg-model-{ref.sha256[:16]}-{ref.device}-{ref.precision}"

    def setup(self, worker: Any) -> None:
        """Load the model here (a :class:`BundleError` reaches the client, as itself, from
        ``register_plugin``), importing :data:`WORKER_IMPORTS` meanwhile."""
        warm_imports(WORKER_IMPORTS)
        offered = worker.state.total_resources
        if any(offered.get(k, 0) < v for k, v in self.resources.items()):
            log.info("%s offers no %s: no model loaded", worker.name, self.resources)
            return  # prediction tasks never run here

        if has_model(self.ref):
            return  # already loaded by an earlier registration of the same bundle
        path = _local_copy(worker.local_directory, self.ref)
        if not path.exists():
            path.write_bytes(self.payload)
        _load(self.ref, path)


def _local_copy(directory: str, ref: ModelRef) -> Path:
    """Where a worker keeps its copy of ``ref``'s bundle."""
    return Path(directory) / f"geoseg-{ref.sha256[:16]}.safetensors"


def _load(ref: ModelRef, path: Path) -> None:
    """Load and check the bundle at ``path`` (a worker's copy of ``ref.path``) into this
    process's cache; errors name ``ref.path``, detached so that they cross to the client."""
    from geoseg.models.bundle import load_bundle

    try:
        cache_model(ref, load_bundle(path).build())
    except GeoSegError as exc:
        raise detached(type(exc)(str(exc).replace(str(path), ref.path))) from None


def _built_align(ref: ModelRef) -> int:
    """Task: the size divisor of ``ref``'s model as built in this worker (loading its bundle
    if this worker's plugin did not, e.g. it joined after it failed elsewhere)."""
    from distributed import get_worker

    from geoseg.models.registry import model_align

    if not has_model(ref):
        path = _local_copy(get_worker().local_directory, ref)
        if path.exists():
            _load(ref, path)
    try:
        return model_align(get_model(ref).module)
    except GeoSegError as exc:  # no copy here: get_model read ref.path (a shared filesystem)
        raise detached(exc) from None


def warm_imports(names: tuple[str, ...] = CLIENT_IMPORTS) -> threading.Thread:
    """Import ``names`` in a background (daemon) thread of this process; returns it, started.
    A module that cannot be imported (any error, e.g. a library GDAL cannot load) is left to
    whoever imports it next, which reports it."""

    def run() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - whoever imports it next reports it
                log.debug("could not import %s ahead of time", name, exc_info=True)

    thread = threading.Thread(target=run, name="geoseg-warm-imports", daemon=True)
    thread.start()
    return thread


class WarmImports(WorkerPlugin):
    """Imports modules in a background thread of every worker (present and future) as it
    starts, so that no task's first call waits for them: see :func:`warm_stages`."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = tuple(names)
        self.name = "geoseg-warm-imports-" + hashlib.sha256(
            " ".join(self.names).encode()).hexdigest()[:12]

    def setup(self, worker: Any) -> None:
        warm_imports(self.names)


def warm_stages(client: Any, vectorize: bool) -> None:
    """Before a run's first scene: import the modules of its later stages ahead of their
    first use, on the workers (:class:`WarmImports`) and in this process (a thread each).

    Prediction's own are imported as the model loads (:data:`WORKER_IMPORTS`,
    :data:`CLIENT_IMPORTS`); this adds vectorizing's (:data:`VECTORIZE_IMPORTS`) when the run
    vectorizes, and nothing otherwise (a run without polygons keeps its memory).
    """
    if not vectorize:
        return
    warm_imports(VECTORIZE_IMPORTS["client"])
    client.register_plugin(WarmImports(VECTORIZE_IMPORTS["worker"]))


#: ``(client id, model, resources)`` already registered from this process.
_REGISTERED: set[tuple[str, ModelRef, tuple[tuple[str, float], ...]]] = set()


def register_model(client: Any, ref: ModelRef, resources: dict[str, float] | None = None) -> None:
    """Send the bundle at ``ref.path`` to every worker of ``client`` and load it there.

    With ``resources``, only workers offering them (those prediction tasks run on) load it.
    The scheduler keeps the plugin for workers that join later, so a batch run registers each
    bundle once per client, not once per scene.
    """
    key = (client.id, ref, tuple(sorted((resources or {}).items())))
    if key in _REGISTERED:
        return
    from geoseg.models.bundle import check_unchanged

    payload = Path(ref.path).read_bytes()
    check_unchanged(ref.path, ref.sha256, hashlib.sha256(payload).hexdigest())
    warm_imports()  # while the workers load the model (seconds), the client is idle
    client.register_plugin(ModelPlugin(ref, payload, resources))
    _REGISTERED.add(key)
    log.info("model %s… registered on %d workers", ref.sha256[:12],
             len(client.scheduler_info()["workers"]))


#: ``(client id, model, resources)`` whose model the workers of that client built and checked.
_CHECKED: set[tuple[str, ModelRef, tuple[tuple[str, float], ...]]] = set()


def load_on_workers(
    client: Any, bundle: BundleInfo, ref: ModelRef, policy: TaskPolicy | None = None
) -> None:
    """Load ``bundle``'s model on the workers that run block tasks, and check it there in
    full, once per client (later calls return at once).

    The workers load it (:func:`register_model`: non-finite weights, weights that do not fit
    the architecture fail there), then, for a bundle checked from its header only (not a
    loaded :class:`~geoseg.models.bundle.Bundle`, whose ``align`` is its built model's), one
    small task placed like a block task returns the built model's size divisor, which must be
    the ``bundle.align`` the client planned with.

    Raises:
        BundleError: the bundle fails the full check, or its model divides sizes by another
            number than ``bundle.align`` (one line, as raised on the worker).
        ClusterError: the check task killed its workers, or none ran within the stall timeout.
    """
    from geoseg.models.bundle import Bundle, check_align

    resources = dict(policy.resources) if policy else {}
    key = (client.id, ref, tuple(sorted(resources.items())))
    if key in _CHECKED:
        return
    register_model(client, ref, resources or None)
    if not isinstance(bundle, Bundle):
        check = TaskPolicy(resources, 0, policy.stall_timeout if policy else None)
        for _, align in map_as_finished(_built_align, [ref], client, check, what="model check"):
            check_align(bundle, align)
    _CHECKED.add(key)
