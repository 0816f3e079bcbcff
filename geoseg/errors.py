"""One hierarchy of errors. Every message says which file, what was wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ClusterError",
    "ConfigError",
    "GeoSegError",
    "OutputExistsError",
    "SceneError",
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


class ClusterError(GeoSegError, RuntimeError):
    """Tasks cannot finish on the cluster: workers keep dying, or no block finishes in time."""
