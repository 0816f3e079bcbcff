"""Reading scenes from object storage and HTTP: URIs, GDAL options, credentials, retries, listing.

Light to import: rasterio, fsspec and their cloud back-ends load only when used.

- :mod:`~geoseg.remote.uri`: remote vs local, the GDAL path of a URI, join/parent/name, redact.
- :mod:`~geoseg.remote.gdal_env`: GDAL options for cloud reads and where credentials come from
  (the environment of the reading process; never the task graph).
- :mod:`~geoseg.remote.retry`: transient vs permanent errors, bounded retries, one-line errors.
- :mod:`~geoseg.remote.listing`: a prefix listed like a directory, globs (fsspec).
- :mod:`~geoseg.remote.store`: a run's output root in a store: uploads (a scene's
  ``scene.json`` last, the completion marker), markers read back, the writability probe.
"""

from __future__ import annotations

from geoseg.remote.gdal_env import CloudOptions, cloud_env, cloud_options
from geoseg.remote.listing import expand, list_prefix
from geoseg.remote.retry import RetryPolicy, call_with_retries, classify, read_remote_window
from geoseg.remote.store import OutputRoot, scratch_dir
from geoseg.remote.uri import gdal_path, is_remote, join, name, parent, redact

__all__ = [
    "CloudOptions",
    "OutputRoot",
    "RetryPolicy",
    "call_with_retries",
    "classify",
    "cloud_env",
    "cloud_options",
    "expand",
    "gdal_path",
    "is_remote",
    "join",
    "list_prefix",
    "name",
    "parent",
    "read_remote_window",
    "redact",
    "scratch_dir",
]
