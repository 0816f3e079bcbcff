"""What ``geoseg model init`` and ``model import`` (and ``geoseg train``) parse from their
options: comma lists, per-band numbers, classes with colours, input encodings, and the bands'
normalization with ``--stats-from``/``--mean``/``--std``/``--scale`` folded in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geoseg.models.meta import InputEncoding

__all__ = ["bundle_bands", "depth_kwargs", "parse_classes", "parse_encoding", "parse_numbers",
           "split_list"]


def split_list(text: str, option: str = "a comma list") -> list[str]:
    """The stripped items of a comma list; an empty item (``a,,b``) is refused, not dropped,
    since dropping it would shift every later band or class by one.

    Raises:
        ConfigError: naming ``option`` and the list.
    """
    from geoseg.errors import ConfigError

    items = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise ConfigError(f"{option}: empty; give comma-separated values")
    if not all(items):
        k = items.index("") + 1
        raise ConfigError(f"{option} {text!r}: item {k} is empty; give one non-empty value "
                          "between each pair of commas")
    return items


def parse_numbers(option: str, text: str, count: int, positive: bool = False) -> list[float]:
    """``count`` finite numbers (``> 0`` if ``positive``) from the comma list of ``option``.

    Raises:
        ConfigError: naming ``option`` and the bad value.
    """
    import math

    from geoseg.errors import ConfigError

    items = split_list(text, option)
    if len(items) != count:
        raise ConfigError(f"{option} {text!r}: {len(items)} value(s) for {count} band(s); "
                          "give one number per band, in --bands order")
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{option}: {item!r} is not a number; give one number per band, "
                              "e.g. 1000,1200") from None
        if not math.isfinite(value) or (positive and value <= 0):
            need = "a finite number > 0" if positive else "a finite number"
            raise ConfigError(f"{option}: {item!r} is not {need}; such a statistic maps every "
                              "pixel to one class")
        values.append(value)
    return values


def parse_classes(text: str) -> tuple:
    """``--classes``: ``name`` or ``name:#rrggbb`` items → ClassSpecs (ids in order).

    Raises:
        ConfigError: an empty name, a colour that is not ``#rrggbb``, or two names that are the
            same ignoring case and surrounding spaces.
    """
    import re

    from geoseg.errors import ConfigError
    from geoseg.models.bundle import ClassSpec, check_class_names
    from geoseg.models.palette import default_color

    classes = []
    for i, item in enumerate(split_list(text, "--classes")):
        name, colon, colour = (part.strip() for part in item.partition(":"))
        if not name:
            raise ConfigError(f"--classes: item {i + 1} {item!r} has no class name; write "
                              "name or name:#rrggbb")
        if colon:
            if not re.fullmatch(r"#?[0-9a-fA-F]{6}", colour):
                raise ConfigError(f"--classes: class {name!r} has colour {colour!r}, not "
                                  "#rrggbb (six hex digits, e.g. water:#1f78b4)")
            hexa = colour.lstrip("#")
            rgb = (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16))
        else:
            rgb = default_color(name, i)
        classes.append(ClassSpec(id=i, name=name, color=rgb))
    try:
        check_class_names(c.name for c in classes)
    except ValueError as exc:
        raise ConfigError(f"--classes {text!r}: {exc}") from None
    return tuple(classes)


def depth_kwargs(arch: str, depth: int | None) -> dict | None:
    """smp arguments for a shallower encoder (U-Net-style decoders need one channel per stage)."""
    if not depth:
        return None
    kwargs: dict = {"encoder_depth": depth}
    if arch.lower() in ("unet", "unetplusplus", "manet"):
        kwargs["decoder_channels"] = [256, 128, 64, 32, 16][-depth:]
    return kwargs


def parse_encoding(text: str | None, option: str = "--input-encoding") -> InputEncoding | None:
    """``SCALE,OFFSET`` (or ``SCALE``: offset 0) → an InputEncoding; None stays None.

    Raises:
        ConfigError: not one or two numbers, a scale not > 0, a non-finite number.
    """
    from pydantic import ValidationError

    from geoseg.errors import ConfigError
    from geoseg.models.bundle import InputEncoding, validation_message

    if text is None:
        return None
    parts = split_list(text, option)
    if len(parts) not in (1, 2):
        raise ConfigError(f"{option}: give SCALE,OFFSET (physical = DN × SCALE + OFFSET), "
                          f"e.g. 0.0001,-0.1; got {text!r}")
    values = parse_numbers(option, ",".join(parts), len(parts))
    try:
        return InputEncoding(scale=values[0], offset=values[1] if len(values) > 1 else 0.0)
    except ValidationError as exc:
        raise ConfigError(f"{option}: {validation_message(exc)}") from None


def _measured_encodings(refs: tuple, stated: InputEncoding | None,
                        stats_from: Path) -> list[InputEncoding | None]:
    """The encodings of statistics measured on ``stats_from``'s bands ``refs``: the ones the
    scene declares (None where it declares none), or ``stated`` if the scene agrees.

    Raises:
        ConfigError: ``stated`` differs from an encoding the scene declares.
    """
    from geoseg.errors import ConfigError
    from geoseg.models.bundle import InputEncoding

    if stated is not None:
        for ref in refs:
            if ref.encoding is not None and ref.encoding != (stated.scale, stated.offset):
                raise ConfigError(
                    f"--input-encoding {stated.text()}, but {stats_from} band {ref.name} "
                    f"declares scale {ref.encoding[0]:.10g} offset {ref.encoding[1]:.10g} and "
                    "--stats-from measures its DN: leave --input-encoding out to record the "
                    "scene's, or give --mean/--std in the stated encoding")
        return [stated] * len(refs)
    return [None if r.encoding is None else InputEncoding(scale=r.encoding[0],
                                                           offset=r.encoding[1])
            for r in refs]


def bundle_bands(names: list[str], input_dtype: str, stats_from: Path | None,
                mean: str | None, std: str | None, scale: float | None = None,
                encoding: InputEncoding | None = None) -> tuple:
    """The bands' BandSpecs from ``--stats-from`` or ``--mean``/``--std`` (``model init`` and
    ``model import``), with ``--scale`` folded in.

    A model trained on ``x · scale`` normalized by ``m``/``s`` (given in those scaled units)
    sees ``(x · scale − m) / s = (x − m/scale) / (s/scale)``: the bundle stores ``m/scale`` and
    ``s/scale``, in the scene's units. ``--scale`` alone means ``m = 0``, ``s = 1``.
    ``encoding`` (``--input-encoding``) is recorded on every band; with ``--stats-from`` and
    no ``--input-encoding``, each band records the encoding the scene declares (its
    statistics are in that scene's DN, as ``geoseg train`` records its scenes').

    Raises:
        ConfigError: no normalization given, half of it, bad numbers, --scale with
            --stats-from, or statistics measured on the scene that cannot normalize.
    """
    from pydantic import ValidationError

    from geoseg.errors import ConfigError
    from geoseg.models.bundle import BandSpec, validation_message

    encodings = [encoding] * len(names)
    if stats_from is not None:
        if scale is not None:
            raise ConfigError("--scale applies to --mean/--std (or to none); --stats-from "
                              "measures the scene in its own units already: leave --scale out")
        from geoseg.normalize import band_statistics
        from geoseg.scene import open_scene, select_bands

        scene = open_scene(stats_from)
        refs = select_bands(scene, names, str(stats_from))
        stats = band_statistics(refs, scene.height, scene.width)
        encodings = _measured_encodings(refs, encoding, stats_from)
    elif mean and std:
        stats = list(zip(parse_numbers("--mean", mean, len(names)),
                         parse_numbers("--std", std, len(names), positive=True), strict=True))
    elif mean or std:
        raise ConfigError(f"--{'std' if mean else 'mean'} is missing; give --mean and --std "
                          "together (one value per band each)")
    elif input_dtype == "float32" or scale is not None:
        stats = [(0.0, 1.0)] * len(names)
    else:
        raise ConfigError("give --stats-from SCENE, or --mean and --std (one value per band)")
    if scale is not None:
        stats = [(m / scale, s / scale) for m, s in stats]
    try:
        return tuple(BandSpec(name=n, mean=m, std=s, encoding=e)
                     for n, (m, s), e in zip(names, stats, encodings, strict=True))
    except ValidationError as exc:  # statistics measured on --stats-from, or folded by --scale
        source = stats_from if stats_from is not None else "--mean/--std/--scale"
        raise ConfigError(f"{source}: no usable normalization statistics "
                          f"({validation_message(exc)}); give --mean and --std") from exc
