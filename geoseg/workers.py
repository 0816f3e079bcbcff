"""Dask worker side: one model per worker process, loaded once by a WorkerPlugin.

The plugin carries the bundle's bytes, so workers need no shared filesystem with the client;
each worker writes them to its local directory, validates and loads the bundle, and puts the
model in its process cache (:func:`geoseg.predict.cache_model`) where block tasks find it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.predict import ModelRef, cache_model, has_model

__all__ = ["ModelPlugin", "register_model"]

log = logging.getLogger(__name__)


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
        from geoseg.models.bundle import load_bundle

        offered = worker.state.total_resources
        if any(offered.get(k, 0) < v for k, v in self.resources.items()):
            log.info("%s offers no %s: no model loaded", worker.name, self.resources)
            return  # prediction tasks never run here

        if has_model(self.ref):
            return  # already loaded by an earlier registration of the same bundle
        path = Path(worker.local_directory) / f"geoseg-{self.ref.sha256[:16]}.safetensors"
        if not path.exists():
            path.write_bytes(self.payload)
        cache_model(self.ref, load_bundle(path).build())


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
    payload = Path(ref.path).read_bytes()
    client.register_plugin(ModelPlugin(ref, payload, resources))
    _REGISTERED.add(key)
    log.info("model %s… registered on %d workers", ref.sha256[:12],
             len(client.scheduler_info()["workers"]))
