"""Finding scenes in object storage and on http(s): the remote half of :mod:`geoseg.batch.discover`.

Objects are listed through fsspec (:mod:`geoseg.remote.listing`) and told apart by the same
rules as local files: band files grouped by prefix, other rasters scenes of their own, geoseg's
own outputs left out. Nothing but names is read, except one small ``scene.json`` GET per
listed folder (is it a scene's outputs?).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoseg.batch.discover import (
    BAND_FILE,
    BAND_SUFFIXES,
    RASTER_SUFFIXES,
    SceneSource,
    is_output_name,
    raster_stem,
)
from geoseg.batch.names import readable
from geoseg.batch.state import (
    OLD_PREFIX,
    RECORD,
    STAGE_PREFIX,
    STATE_DIR,
    is_scene_record,
)
from geoseg.errors import ConfigError

__all__ = ["remote_scenes"]

log = logging.getLogger(__name__)


def _record_folder(folder: str, storage_options: Mapping[str, Any] | None) -> bool:
    """True when remote ``folder`` holds a geoseg ``scene.json`` (a scene's outputs): one small
    GET (a 404 for an input folder)."""
    import json

    from geoseg.remote.listing import filesystem
    from geoseg.remote.uri import join

    record = join(folder, RECORD)
    try:
        fs = filesystem(record, storage_options)
        data = json.loads(fs.cat_file(record.split("://", 1)[1]))
    except Exception:  # noqa: BLE001 - no record (404, denied, not JSON): not an output
        return False
    return is_scene_record(data)


def remote_scenes(uris: Sequence[str], excluded: Sequence[str] = (),
                   storage_options: Mapping[str, Any] | None = None,
                   ) -> list[tuple[str, str, str, SceneSource]]:
    """The scenes of remote inputs, as ``(sort key, name as found, base name, source)``.

    Each URI is expanded (:func:`geoseg.remote.listing.expand`: a prefix ending in ``/`` is
    listed, a glob matched, any other URI taken as one object, unchecked until opened); the
    objects are then told apart as local files are: band files (:data:`BAND_FILE`) grouped by
    their prefix URI and name prefix, other ``.tif``/``.tiff`` objects scenes of their own,
    geoseg's own outputs left out: confidence/probability rasters, temporary and staging
    names, objects under an excluded URI (the run's output), and, for listed objects, folders
    holding a geoseg ``scene.json``. One URI reached twice (as written) is one object.

    Raises:
        ConfigError: a prefix or glob that cannot be listed or names no raster.
    """
    from pathlib import PurePosixPath

    from geoseg.errors import SceneError
    from geoseg.remote.listing import expand
    from geoseg.remote.uri import name, parent, redact

    objects: list[str] = []
    for uri in uris:
        try:
            objects += expand(uri, storage_options)
        except SceneError as exc:
            raise ConfigError(str(exc)) from None
    groups: dict[tuple[str, str], dict[str, Path | str]] = {}
    found: list[tuple[str, str, str, SceneSource]] = []
    outputs_at: dict[str, bool] = {}
    for uri in sorted(dict.fromkeys(objects)):
        leaf = PurePosixPath(name(uri))
        folders = uri.split("://", 1)[-1].split("/")[:-1]
        if uri not in uris and parent(uri) not in outputs_at:
            outputs_at[parent(uri)] = _record_folder(parent(uri), storage_options)
        if is_output_name(leaf.name) or any(
                f == STATE_DIR or f.startswith((STAGE_PREFIX, OLD_PREFIX)) for f in folders) \
                or any(uri.startswith(f"{ex}/") for ex in excluded) \
                or outputs_at.get(parent(uri), False):
            log.debug("%s: an output of geoseg, not a scene; skipped", redact(uri))
            continue
        suffix = leaf.suffix.lower()
        m = BAND_FILE.match(leaf.stem) if suffix in BAND_SUFFIXES else None
        if m:
            groups.setdefault((parent(uri), m["prefix"]), {}).setdefault(m["band"].upper(), uri)
        elif suffix in RASTER_SUFFIXES or uri in uris:
            original, base = raster_stem(leaf)
            found.append((uri, original, base,
                          SceneSource(base, uri, "raster", original=readable(original))))
        else:
            log.warning("%s: not a GeoTIFF or band file; skipped", redact(uri))
    for (folder, prefix), bands in groups.items():
        found.append((folder + "/", prefix, prefix.lstrip("."),
                      SceneSource(prefix, folder, "bands", dict(sorted(bands.items())),
                                  original=readable(prefix))))
    return found
