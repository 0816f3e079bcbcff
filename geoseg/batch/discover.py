"""Finding scenes: multi-band rasters, and scenes delivered as one file per band.

Pure path logic, no pixel is read. A file whose stem ends in a band token (``…_B02``,
``…_B8A``, ``…_B4``, ``…_B02_10m``: Sentinel-2 and Landsat style) is a *band file*; band files
with the same directory and prefix form one scene. Any other ``.tif``/``.tiff`` is a scene of
its own. Band tokens are compared by :func:`band_key` (``B02`` and ``B2`` are the same band), so
a model's band names match either spelling.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geoseg.errors import ConfigError

__all__ = ["BAND_FILE", "RASTER_SUFFIXES", "SceneSource", "band_key", "discover"]

#: Suffixes of standalone scenes (GeoTIFF / COG).
RASTER_SUFFIXES = (".tif", ".tiff")
#: Suffixes of band files.
BAND_SUFFIXES = (".tif", ".tiff", ".jp2")
#: ``<prefix>_<band>[_<resolution>]`` in a file stem.
BAND_FILE = re.compile(r"^(?P<prefix>.+?)[_-](?P<band>B(?:\d{1,2}A?|QA))(?:_\d+m)?$", re.I)
#: Files geoseg writes itself, never taken as inputs.
_OUTPUT_SUFFIXES = (".confidence.tif", ".probabilities.tif")


def band_key(name: str) -> str:
    """A band name's comparison key: case-folded, leading zeros of ``Bnn`` dropped."""
    m = re.fullmatch(r"b0*(\d+)(a?)", name.strip().lower())
    return f"b{m.group(1)}{m.group(2)}" if m else name.strip().lower()


@dataclass(frozen=True)
class SceneSource:
    """One scene found on disk.

    Attributes:
        name: unique scene name (output folder name): the file stem, or the band files' prefix.
        path: the raster (``kind == "raster"``) or the band files' directory.
        kind: ``"raster"`` (one multi-band file) or ``"bands"`` (one file per band).
        bands: for band files, band token as written (e.g. ``B02``) → file.
    """

    name: str
    path: Path
    kind: str
    bands: dict[str, Path] = field(default_factory=dict, compare=False)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.bands.values()) if self.kind == "bands" else (self.path,)


def _expand(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files += [p for p in matched if p.is_file()]
            for d in (p for p in matched if p.is_dir()):
                files += sorted(p for p in d.rglob("*") if p.is_file())
        else:
            raise ConfigError(f"{text}: no such file, directory or matching glob")
    return files


def _under(path: Path, folders: Iterable[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(f) for f in folders)


def discover(
    inputs: Sequence[str | os.PathLike[str]], exclude: Sequence[str | os.PathLike[str]] = ()
) -> list[SceneSource]:
    """The scenes in ``inputs`` (files, directories searched recursively, or globs).

    Files under ``exclude`` (e.g. the output directory) and geoseg's own confidence and
    probability rasters are ignored. Scenes are sorted by path; names are made unique by
    suffixing ``-2``, ``-3``… in that order.

    Raises:
        ConfigError: an input names nothing that exists.
    """
    skip = [Path(e).resolve() for e in exclude]
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    rasters: list[Path] = []
    for f in dict.fromkeys(_expand(inputs)):
        if _under(f, skip) or f.name.lower().endswith(_OUTPUT_SUFFIXES):
            continue
        suffix = f.suffix.lower()
        m = BAND_FILE.match(f.stem) if suffix in BAND_SUFFIXES else None
        if m:
            groups.setdefault((f.parent, m["prefix"]), {}).setdefault(m["band"].upper(), f)
        elif suffix in RASTER_SUFFIXES:
            rasters.append(f)
    found = [SceneSource(p.name.split(".")[0], p, "raster") for p in rasters]
    found += [SceneSource(prefix, folder, "bands", dict(sorted(bands.items())))
              for (folder, prefix), bands in groups.items()]
    found.sort(key=lambda s: (str(s.path), s.name))
    seen: dict[str, int] = {}
    unique = []
    for s in found:
        n = seen[s.name] = seen.get(s.name, 0) + 1
        unique.append(s if n == 1 else SceneSource(f"{s.name}-{n}", s.path, s.kind, s.bands))
    return unique
