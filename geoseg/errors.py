"""One hierarchy of errors. Every message says which file, what was wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ClusterError",
    "ConfigError",
    "GeoSegError",
    "OutputError",
    "OutputExistsError",
    "SceneError",
    "detached",
]


class GeoSegError(Exception):
    """Root of every error geoseg raises on purpose (bad input, bad bundle, bad config)."""


class ConfigError(GeoSegError, ValueError):
    """A configuration value or command-line option is invalid."""


class SceneError(GeoSegError, OSError):
    """An input scene cannot be used: not a raster, no CRS, wrong bands, unsupported dtype…"""


class BundleError(GeoSegError, ValueError):
    """A model bundle is missing, corrupt, or does not match the scene or the code."""


class OutputExistsError(GeoSegError, FileExistsError):
    """An output file exists already and overwriting was not asked for."""


class OutputError(GeoSegError, OSError):
    """The output folder cannot take geoseg's files: not writable, read-only, or full.

    A batch run stops at the first one (every later scene would fail the same way); the scenes
    it finished before stay finished and are skipped on a re-run.
    """


class ClusterError(GeoSegError, RuntimeError):
    """Tasks cannot finish on the cluster: workers keep dying, or no block finishes in time."""


def detached(exc: GeoSegError) -> GeoSegError:
    """``exc`` cut from the exceptions it was raised from, to cross a process boundary.

    Dask sends a failed task's exception to the client with its ``__cause__`` chain, and
    rasterio's errors cannot be rebuilt there (their ``args`` is read-only): the client would
    get a bare ``Exception(repr(exc))`` instead of the geoseg error. Task functions raise
    ``detached(exc) from None``; the message already quotes the cause.
    """
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    return exc
