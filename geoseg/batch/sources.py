"""Opening a found scene for a model: its bands matched to the model's, nothing read yet."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from geoseg.batch.discover import SceneSource, band_key
from geoseg.errors import SceneError
from geoseg.scene import Scene, open_band_files, open_scene

__all__ = ["open_source"]


def open_source(source: SceneSource, band_names: Sequence[str], fill: float | None = 0) -> Scene:
    """The :class:`~geoseg.scene.Scene` of ``source`` for a model needing ``band_names``.

    A raster scene is opened as it is (bands are matched when planning). For band files only
    the model's bands are used, named as the model names them, on the grid
    :func:`~geoseg.scene.open_band_files` chooses (the finest in the CRS most of them share);
    its :attr:`~geoseg.scene.Scene.warnings` name bands that only partly overlap or were
    reprojected.

    Raises:
        SceneError: unreadable files, band files missing for some of the model's bands, or
            band files that do not overlap.
    """
    if source.kind == "raster":
        return dataclasses.replace(open_scene(source.path), name=source.name)
    by_key = {band_key(token): path for token, path in source.bands.items()}
    missing = [b for b in band_names if band_key(b) not in by_key]
    if missing:
        have = ", ".join(source.bands) or "none"
        raise SceneError(
            f"{source.path}/{source.original}_*: band file(s) for {', '.join(missing)} not "
            f"found (found {have}); add the missing file(s), named like "
            f"{source.original}_{missing[0]}.tif"
        )
    files = {b: by_key[band_key(b)] for b in band_names}
    return open_band_files(source.name, files, fill)
