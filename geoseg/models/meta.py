"""Bundle metadata: the pydantic models of a bundle's header (bands and their normalization,
classes and colours, architecture, tiling) and their one-line validation messages.

No torch and no I/O: :mod:`geoseg.models.bundle` reads and writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from geoseg.models.registry import ARCHITECTURES

__all__ = [
    "BUNDLE_FORMAT",
    "BandSpec",
    "BundleMeta",
    "ClassSpec",
    "InputDtype",
    "InputEncoding",
    "check_class_names",
    "validation_message",
    "with_encoding",
]

BUNDLE_FORMAT: Final = "geoseg-bundle/1"
InputDtype = Literal["uint8", "uint16", "int16", "float32"]


def _finite(value: float, info: ValidationInfo) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{info.field_name} must be a finite number, got {value}")
    return value


def _positive_finite(value: float, info: ValidationInfo) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{info.field_name} must be a finite number > 0, got {value}")
    return value


#: A finite float; a finite float > 0 (NaN or infinite statistics would silently turn every
#: pixel into NaN).
Finite = Annotated[float, AfterValidator(_finite)]
PositiveFinite = Annotated[float, AfterValidator(_positive_finite)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputEncoding(_Strict):
    """What a band's stored values (DN) mean: ``physical = DN × scale + offset``.

    The GDAL and STAC ``raster:bands`` convention, e.g. Sentinel-2 L2A reflectance: scale
    0.0001, offset 0 before processing baseline 04.00 and −0.1 (−1000 DN) since.
    """

    scale: PositiveFinite = Field(description="physical units per DN, finite and > 0")
    offset: Finite = Field(0.0, description="physical value of DN 0, finite")

    @property
    def is_identity(self) -> bool:
        """``scale`` 1 and ``offset`` 0: the stored values are the physical values."""
        return self.scale == 1.0 and self.offset == 0.0

    def text(self) -> str:
        """``scale 0.0001 offset -0.1``: how messages and ``model info`` show it."""
        return f"scale {self.scale:.10g} offset {self.offset:.10g}"


class BandSpec(_Strict):
    """One model input band and its normalization: ``x_norm = (x - mean) / std`` (float32).

    Both numbers must be finite and ``std`` positive: a NaN or infinite statistic turns every
    pixel into NaN, which the model maps to class 0 without any error.

    ``encoding`` says what the values the model was made with mean (``mean`` and ``std`` are
    in those values); a scene band that declares another encoding is converted to it on read
    (:func:`geoseg.normalize.band_conversions`). None (the default, and every bundle made
    before encodings existed): the model takes the values as stored in the file, and a scene
    that declares a non-identity encoding is refused. Left out of the header when None, so
    such bundles keep the header they always had.
    """

    name: str = Field(min_length=1, description="band name matched against the scene's bands")
    mean: Finite = Field(description="mean of the band in the scene's units (e.g. DN)")
    std: PositiveFinite = Field(description="standard deviation in the scene's units, > 0")
    encoding: InputEncoding | None = Field(
        None, description="what the model's input values mean (physical = DN × scale + offset); "
                          "None: the values as stored in the file")

    @model_serializer(mode="wrap")
    def _drop_no_encoding(self, handler: SerializerFunctionWrapHandler,
                          info: SerializationInfo) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("encoding") is None:  # the header of a bundle without one stays as it was
            data.pop("encoding", None)
        return data


class ClassSpec(_Strict):
    """One output class; ``id`` is the value written in the mask."""

    id: int = Field(ge=0, le=254, description="class id in the mask (255 is nodata)")
    name: str = Field(min_length=1, description="human-readable class name")
    color: tuple[int, int, int] = Field(description="RGB colour, 0-255 each")

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"class name must not be blank, got {value!r}")
        return value

    @field_validator("color")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError(f"colour components must be 0-255, got {value}")
        return value


class BundleMeta(_Strict):
    """Everything about a model except its weights."""

    format: Literal["geoseg-bundle/1"] = Field(BUNDLE_FORMAT, description="bundle format")
    arch: str = Field(description="smp architecture name, e.g. unet or deeplabv3plus")
    encoder: str = Field(description="smp encoder name, e.g. resnet34")
    arch_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra smp constructor arguments"
    )
    bands: tuple[BandSpec, ...] = Field(min_length=1, description="input bands, in model order")
    input_dtype: InputDtype = Field(description="pixel dtype the normalization was made for")
    classes: tuple[ClassSpec, ...] = Field(min_length=1, description="output classes")
    tile_size: int = Field(gt=0, description="model input tile side, pixels")
    halo: int = Field(ge=0, description="context pixels on each side of a tile's core")
    description: str = Field("", description="what this model is and is not")
    training: dict[str, Any] = Field(default_factory=dict, description="how it was made")

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        if value.lower() not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {value!r}; one of {', '.join(ARCHITECTURES)}")
        return value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} in order, got {ids}")
        names = [b.name for b in self.bands]
        if len({n.strip().lower() for n in names}) != len(names):  # scenes match them so
            raise ValueError(f"band names must be unique (ignoring case), got {names}")
        check_class_names(c.name for c in self.classes)
        return self

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def encodings(self) -> tuple[InputEncoding | None, ...]:
        """Each band's input encoding, in model order (None: values as stored)."""
        return tuple(b.encoding for b in self.bands)

    @property
    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table: class id → RGBA (:func:`geoseg.maskfile.class_colormap`)."""
        from geoseg.maskfile import class_colormap

        return class_colormap(self.classes)


def with_encoding(meta: BundleMeta, encoding: InputEncoding | None,
                  bands: Iterable[str] | None = None) -> BundleMeta:
    """``meta`` with ``encoding`` recorded for ``bands`` (names, any case; None: every band).

    Raises:
        ValueError: a name that is not one of the bundle's bands.
    """
    wanted = None if bands is None else {b.strip().lower() for b in bands}
    known = {b.name.lower() for b in meta.bands}
    unknown = sorted((wanted or set()) - known)
    if unknown:
        raise ValueError(f"no band {', '.join(unknown)} in the bundle; its bands are "
                         f"{', '.join(meta.band_names)}")
    new = tuple(b.model_copy(update={"encoding": encoding})
                if wanted is None or b.name.lower() in wanted else b for b in meta.bands)
    return meta.model_copy(update={"bands": new})


def check_class_names(names: Iterable[str]) -> None:
    """Refuse class names that are the same once stripped and case-folded (``A`` and ``a ``).

    Areas and reports are keyed by class name: two classes with one name would merge there
    and one would silently vanish.

    Raises:
        ValueError: two names collide; the message names both, with their ids.
    """
    seen: dict[str, tuple[int, str]] = {}
    for i, name in enumerate(names):
        key = name.strip().casefold()
        if key in seen:
            j, first = seen[key]
            raise ValueError(
                f"class names must be unique (ignoring case and surrounding spaces): class {j} "
                f"{first!r} and class {i} {name!r} collide; rename one")
        seen[key] = (i, name)


def validation_message(exc: ValidationError, data: Any = None) -> str:
    """A pydantic error as one line: ``field.path: problem (got value)``, ``; ``-separated.

    ``data`` is the validated input: list items with a ``name`` are named in the path
    (``bands[1] 'B03'.std``). Values are shown with ``repr``, shortened, so no raw control
    character reaches the terminal.
    """
    errors = exc.errors()
    locs = [err["loc"] for err in errors]
    parts = []
    for err in errors:  # a container's error echoing its items' ("too short") is left out
        if any(len(loc) > len(err["loc"]) and loc[: len(err["loc"])] == err["loc"]
               for loc in locs):
            continue
        path, node = "", data
        for key in err["loc"]:
            if isinstance(key, int):
                path += f"[{key}]"
                node = node[key] if isinstance(node, list | tuple) and key < len(node) else None
                name = node.get("name") if isinstance(node, Mapping) else getattr(
                    node, "name", None)
                if isinstance(name, str):
                    path += f" {name!r}"
            else:
                path += f".{key}" if path else str(key)
                node = node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error", "missing"):
            shown = repr(err.get("input"))
            msg += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        parts.append(f"{path}: {msg}" if path else msg)
    return "; ".join(parts)
