"""Finding scenes: multi-band rasters, and scenes delivered as one file per band.

Pure path logic, no pixel is read. A file whose stem ends in a band token (``…_B02``,
``…_B8A``, ``…_B4``, ``…_B02_10m``: Sentinel-2 and Landsat style) is a *band file*; band files
with the same directory and prefix form one scene. Any other ``.tif``/``.tiff`` is a scene of
its own. Band tokens are compared by :func:`band_key` (``B02`` and ``B2`` are the same band), so
a model's band names match either spelling.

A STAC Item, ItemCollection, Catalog or Collection named as an input (a local JSON file, known
by its content, or an http(s) URL) gives one scene per item (``kind == "stac"``), named by the
item id; its assets are matched to the model's bands when the scene is opened
(:mod:`geoseg.batch.stacin`, :mod:`geoseg.batch.stacmatch`).

Inputs are hostile until proven otherwise:

* one file reached by several spellings (relative, absolute, ``..``, symlinks, hard links) is one
  scene (files are told apart by ``(st_dev, st_ino)``); directories are walked following
  symlinks, each directory once, so a symlink loop ends the walk instead of repeating it;
* geoseg's own outputs are never scenes: scene folders (a geoseg ``scene.json``), the folders an
  output directory's ``report.json`` lists, staging folders and run state, and the
  confidence/probability rasters;
* a scene's *name* (its output folder and file stem) is safe whatever the file is called
  (:func:`safe_name`) and unique by construction (:func:`unique_names`), the same for every
  job given the same inputs (``--split`` and resume rely on it); the name as found is kept as
  :attr:`SceneSource.original`.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from geoseg.batch.names import NAME_BYTES, band_key, readable, safe_name, unique_names
from geoseg.batch.state import (
    is_output_folder,
    reported_scene_names,
)
from geoseg.errors import ConfigError
from geoseg.maskfile import RASTER_SIDECAR_SUFFIXES
from geoseg.remote.uri import is_remote

if TYPE_CHECKING:
    from geoseg.batch.stacin import StacItem
    from geoseg.batch.stacmatch import BandAsset

__all__ = [
    "BAND_FILE",
    "NAME_BYTES",
    "RASTER_SUFFIXES",
    "SceneSource",
    "band_key",
    "discover",
    "is_output_name",
    "raster_stem",
    "readable",
    "safe_name",
    "unique_names",
]

log = logging.getLogger(__name__)

#: Suffixes of standalone scenes (GeoTIFF / COG).
RASTER_SUFFIXES = (".tif", ".tiff")
#: Suffixes of band files.
BAND_SUFFIXES = (".tif", ".tiff", ".jp2")
#: ``<prefix>_<band>[_<resolution>]`` in a file stem.
BAND_FILE = re.compile(r"^(?P<prefix>.+?)[_-](?P<band>B(?:\d{1,2}A?|QA))(?:_\d+m)?$", re.I)
#: Files geoseg writes itself, never taken as inputs.
_OUTPUT_SUFFIXES = RASTER_SIDECAR_SUFFIXES
#: geoseg's temporary files (writers, GeoPackages, atomic JSON): ``.<name>.<token>.partial…``.
_TEMPORARY = re.compile(r"^\..+\.(partial|stage)(\.[A-Za-z]+)?$")
#: Longest scene name in UTF-8 bytes. The longest file name geoseg derives from a scene name is


@dataclass(frozen=True)
class SceneSource:
    """One scene found on disk (or named by a STAC item).

    Attributes:
        name: unique, safe scene name (output folder and file stem, :func:`safe_name`).
        path: the raster (``kind == "raster"``), the band files' directory, or the STAC
            document the item was found in (``kind == "stac"``). A local one is a
            :class:`~pathlib.Path`; one in object storage or on http(s) is its URI, a ``str``
            exactly as written or listed (``s3://bucket/scenes/a.tif``; band files' "folder"
            ``s3://bucket/scenes``), never a ``Path`` (which would collapse its ``//``).
        kind: ``"raster"`` (one multi-band file), ``"bands"`` (one file per band) or
            ``"stac"`` (one STAC item; its assets matched to the model's bands on opening).
        bands: for band files, band token as written (e.g. ``B02``) → file (a ``Path``, or a
            URI ``str``).
        original: the name as found (the raster's file name without its suffix, the band
            files' prefix, or the STAC item id) as :func:`readable` text; empty means ``name``.
        stac: for a STAC item, its id, document and data assets (hrefs absolute, remote ones
            verbatim); see :meth:`band_match`.
    """

    name: str
    path: Path | str
    kind: str
    bands: dict[str, Path | str] = field(default_factory=dict, compare=False)
    original: str = ""
    stac: StacItem | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.original:
            object.__setattr__(self, "original", self.name)

    @property
    def files(self) -> tuple[Path | str, ...]:
        """The files the scene is made from (what the resume fingerprint describes): local
        ones as paths, remote ones as URIs (``str``); for a STAC item its data assets that are
        local files existing at discovery or remote objects."""
        if self.stac is not None:
            return self.stac.files
        if self.kind == "bands":
            return tuple(self.bands.values())
        return (self.path if isinstance(self.path, str) else Path(self.path),)

    def band_match(self, band_names: Sequence[str]) -> dict[str, BandAsset]:
        """For a STAC item: each of ``band_names`` (the bundle's) → the asset it is read from
        (asset key, href, 1-based index, declared ``raster:bands`` scale/offset/nodata);
        ``BandAsset.to_json()`` is what a record keeps. Empty for other scenes.

        Raises:
            SceneError: a band that no asset of the item has, or that several have.
        """
        return {} if self.stac is None else self.stac.match(band_names)

    def encodings(self, band_names: Sequence[str]) -> dict[str, tuple[float | None,
                                                                        float | None]]:
        """For a STAC item: each of ``band_names`` → its declared ``(scale, offset)``
        (``raster:bands``; physical value = DN × scale + offset; None: not declared). Empty for
        other scenes. Raises as :meth:`band_match`."""
        return {b: (m.scale, m.offset) for b, m in self.band_match(band_names).items()}


class _Outputs:
    """Which folders and files geoseg wrote (answers memoized per folder)."""

    def __init__(self, exclude: Sequence[str | os.PathLike[str]]):
        self.exclude = [Path(e).resolve() for e in exclude
                        if not (isinstance(e, str) and is_remote(e))]
        #: Remote folders (URIs without a trailing ``/``) whose objects are never scenes.
        self.remote = [e.rstrip("/") for e in exclude if isinstance(e, str) and is_remote(e)]
        self._folders: dict[Path, bool] = {}
        self._reported: dict[Path, frozenset[str]] = {}

    def folder(self, folder: Path) -> bool:
        """True for an output folder of geoseg's, or a folder under ``exclude``."""
        folder = Path(os.path.abspath(folder))
        hit = self._folders.get(folder)
        if hit is None:
            parent = folder.parent
            if parent not in self._reported:
                self._reported[parent] = reported_scene_names(parent)
            hit = (folder.name in self._reported[parent] or is_output_folder(folder)
                   or _under(folder, self.exclude))
            self._folders[folder] = hit
        return hit

    def file(self, path: Path) -> bool:
        """True for a file geoseg wrote, or one under ``exclude``."""
        name = path.name
        return (is_output_name(name) or self.folder(path.parent)
                or _under(path, self.exclude))


def is_output_name(name: str) -> bool:
    """True for the file name of an output geoseg writes beside a mask (confidence,
    probabilities, sidecars) or of a temporary file of its writers."""
    return name.lower().endswith(_OUTPUT_SUFFIXES) or bool(_TEMPORARY.match(name))


def _under(path: Path, folders: Sequence[Path]) -> bool:
    if not folders:
        return False
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return any(resolved.is_relative_to(f) for f in folders)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):  # gone, a symlink loop, a name the OS refuses
        return None
    return st.st_dev, st.st_ino


def _walk(top: Path, outputs: _Outputs, seen: set[tuple[int, int]],
          files: bool = True, hidden: bool = True) -> Iterator[Path]:
    """Files (or directories, ``top`` first) under directory ``top``, following symlinked
    directories but entering each directory (by identity, in ``seen``) once, and skipping
    geoseg's output folders. ``hidden``: also enter directories whose name starts with a dot."""
    stack = [top]
    while stack:
        folder = stack.pop()
        key = _identity(folder)
        if key is None or key in seen:
            continue
        seen.add(key)
        if folder is not top and outputs.folder(folder):
            log.debug("%s: skipped, an output folder of geoseg", folder)
            continue
        if not files:
            yield folder
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            log.warning("%s: cannot list this folder (%s); its scenes are left out", folder,
                        exc.strerror or exc)
            continue
        for entry in reversed(entries):
            path = folder / entry.name
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:  # a symlink loop or an unreadable entry
                continue
            if is_dir and (hidden or not entry.name.startswith(".")):
                stack.append(path)
            elif is_file and files:
                yield path


def _glob(pattern: str, outputs: _Outputs) -> list[Path]:
    """What ``glob.glob(pattern, recursive=True)`` matches, except that ``**`` walks each
    directory once (:func:`_walk`), so symlink loops cannot multiply the matches."""
    parts = Path(pattern).parts
    first = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    current = [Path(*parts[:first])] if first else [Path()]
    for part in parts[first:]:
        matched: list[Path] = []
        for base in current:
            if part == "**":
                matched += _walk(base, outputs, set(), files=False, hidden=False)
                continue
            try:
                names = sorted(os.listdir(base))
            except OSError:
                continue
            matched += [base / n for n in names if fnmatch.fnmatchcase(n, part)
                        and (part.startswith(".") or not n.startswith("."))]
        current = list(dict.fromkeys(matched))
    return current


def _expand(inputs: Sequence[str | os.PathLike[str]],
            outputs: _Outputs) -> tuple[list[Path], set[tuple[int, int]]]:
    """The files ``inputs`` name, and the identities of those named directly or by a glob
    (not found by walking a directory): only these may be STAC documents."""
    files: list[Path] = []
    named: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            if outputs.folder(path):
                log.warning("%s: an output folder of geoseg, not scenes; skipped", path)
                continue
            files += _walk(path, outputs, seen)
        elif path.is_file():
            if outputs.file(path) and not _under(path, outputs.exclude):
                log.warning("%s: an output of geoseg, not a scene; skipped", path)
            files.append(path)
            named.append(path)
        elif glob.has_magic(text):
            for p in _glob(text, outputs):
                if p.is_dir():
                    files += _walk(p, outputs, seen)
                elif p.is_file():
                    files.append(p)
                    named.append(p)
        else:
            raise ConfigError(f"{text}: no such file, directory or matching glob")
    return files, {k for k in map(_identity, named) if k is not None}


def _spelling(path: Path) -> tuple[bool, str]:
    """Which spelling of a file represents it: one without symlinks, then the first by
    absolute path (so the choice does not depend on the order of the inputs)."""
    absolute = os.path.abspath(path)
    return os.path.realpath(path) != absolute, absolute


def _distinct(files: list[Path]) -> list[Path]:
    """One spelling of each file (by ``(st_dev, st_ino)``)."""
    best: dict[tuple[int, int], Path] = {}
    for f in files:
        key = _identity(f)
        if key is not None and (key not in best or _spelling(f) < _spelling(best[key])):
            best[key] = f
    return list(best.values())


def raster_stem(path: PurePath) -> tuple[str, str]:
    """(the name as found, the base of its safe name): ``scene.v2.tif`` → ``scene.v2``,
    ``scene``; a hidden file's leading dots are not part of its name."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return stem, stem.lstrip(".").split(".")[0]


def discover(
    inputs: Sequence[str | os.PathLike[str]], exclude: Sequence[str | os.PathLike[str]] = (),
    storage_options: Mapping[str, Any] | None = None,
) -> list[SceneSource]:
    """The scenes in ``inputs`` (files, directories searched recursively, globs, or STAC
    documents; local, or URIs in object storage / on http(s)).

    A URI (``s3://``, ``gs://``, ``az://``, ``https://`` …) names one object
    (``s3://b/scenes/a.tif``), a prefix listed like a directory, not recursively
    (``s3://b/scenes/``), or a glob (``s3://b/**/*.tif``, ``**`` spanning folders); their
    rasters and band files are grouped as local ones are, named by the object names, and kept
    as URIs (:func:`~geoseg.batch.discover_remote.remote_scenes`). An http(s) URL that names
    no raster is a STAC document.
    ``storage_options`` (fsspec's, e.g. a config's ``storage.options``) are used to list;
    credentials otherwise come from the environment.

    Files under ``exclude`` (e.g. the output directory) and geoseg's own outputs are ignored;
    a file reached by several spellings is one scene. Scenes are sorted by resolved path; their
    names are safe (:func:`safe_name`) and made unique in that order (:func:`unique_names`).

    A STAC Item, ItemCollection, Catalog or Collection (recognised by its JSON content; a local
    file named directly or by a glob, never one found by walking a directory, an http(s) URL,
    or a ``.json`` object in a store) gives one ``kind="stac"`` scene per item, named by the item id
    (:mod:`geoseg.batch.stacin`), in the document's order.

    Raises:
        ConfigError: an input names nothing that exists (an empty or missing prefix, a glob
            matching nothing, a store that cannot be listed: the URI redacted), or a STAC
            document that cannot be read.
    """
    from geoseg.batch.discover_remote import remote_scenes
    from geoseg.batch.stacin import is_stac_url, stac_scenes, stac_type

    outputs = _Outputs(exclude)
    local: list[str | os.PathLike[str]] = []
    documents: list[str] = []
    remote: list[str] = []
    for item in inputs:
        if is_stac_url(os.fspath(item)):
            documents.append(os.fspath(item))
        elif isinstance(item, str) and is_remote(item):
            remote.append(item)
        else:
            local.append(item)
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    rasters: list[Path] = []
    files, named = _expand(local, outputs)
    for f in sorted(_distinct(files), key=_spelling):
        if outputs.file(f):
            continue
        suffix = f.suffix.lower()
        m = BAND_FILE.match(f.stem) if suffix in BAND_SUFFIXES else None
        if m:
            key = (os.path.realpath(f.parent), m["prefix"])
            groups.setdefault(key, {}).setdefault(m["band"].upper(), f)
        elif suffix in RASTER_SUFFIXES:
            rasters.append(f)
        elif _identity(f) in named:
            if stac_type(f):
                documents.append(os.fspath(f))
            else:
                log.warning("%s: not a GeoTIFF, band file or STAC document; skipped", f)
    found: list[tuple[str, str, str, SceneSource]] = remote_scenes(remote, outputs.remote,
                                                                   storage_options)
    for p in rasters:
        original, base = raster_stem(p)
        found.append((os.path.realpath(p), original, base,
                      SceneSource(base, p, "raster", original=readable(original))))
    for (real, prefix), bands in groups.items():
        folder = next(iter(bands.values())).parent
        by_band: dict[str, Path | str] = dict(sorted(bands.items()))
        found.append((os.path.join(real, ""), prefix, prefix.lstrip("."),
                      SceneSource(prefix, folder, "bands", by_band,
                                  original=readable(prefix))))
    found += stac_scenes(documents, storage_options)
    found.sort(key=lambda t: (t[0], t[1]))
    names = unique_names([safe_name(base) for _, _, base, _ in found])
    return [replace(s, name=n) for n, (_, _, _, s) in zip(names, found, strict=True)]
