"""GDAL's raster block cache, bounded where geoseg keeps a dataset open for a whole scene.

GDAL keeps decoded raster blocks in one cache per process, up to ``GDAL_CACHEMAX``: by default
5 % of the machine's memory (1.2 GiB on 24 GiB, 25 GiB on a 512 GiB node), in every process, and
a dataset's blocks leave it only when the dataset is closed or the cache is full. Block tasks
open and close their file for each block, so their cache stays small; but a dataset open for a
whole scene makes the process grow with the scene. Measured on a 24 GiB machine: writing the
mask COG of a 16384² scene added 435 MB to the client (98 MB with a 64 MiB cache, as fast), and
the quick-look of an 8192² scene without overviews 526 MB. :func:`bounded_block_cache` caps the
cache for such uses; ``GDAL_CACHEMAX`` set in the environment wins.

``GDAL_CACHEMAX`` is process-wide: ``rasterio.Env`` sets it on entry and restores it on exit.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

__all__ = ["BLOCK_CACHE_MIB", "bounded_block_cache"]

#: Default GDAL block cache inside :func:`bounded_block_cache`, MiB.
BLOCK_CACHE_MIB = 64


def bounded_block_cache(mib: float = BLOCK_CACHE_MIB) -> AbstractContextManager[Any]:
    """A ``rasterio.Env`` whose GDAL block cache is ``mib`` MiB (no change if the user set one)."""
    if os.environ.get("GDAL_CACHEMAX"):
        return nullcontext()
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=int(mib * 2**20))  # rasterio takes bytes here
