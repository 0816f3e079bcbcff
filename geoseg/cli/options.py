"""Command-line options shared by the batch commands, and how they override the config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["config_options", "overrides_from", "parse_split"]

#: option name → config section it overrides (the key is the option name).
_SECTIONS = {
    "tile_size": "predict", "halo": "predict", "block_size": "predict", "batch_size": "predict",
    "stitch": "predict", "device": "predict", "precision": "predict", "confidence": "predict",
    "vectorize": "vectorize", "min_area": "vectorize", "simplify": "vectorize",
    "connectivity": "vectorize", "layer": "vectorize",
    "on_error": "run", "workers": "cluster", "scheduler": "cluster", "cluster_kind": "cluster",
    "allocator": "cluster",
}
#: option name → key in its section, where they differ.
_KEYS = {"vectorize": "enabled", "min_area": "min_area_m2", "simplify": "simplify_m",
         "cluster_kind": "kind"}

_OPTIONS = [
    click.option("-c", "--config", "config_path", type=click.Path(exists=True, path_type=Path),
                 help="YAML config (see configs/); options given here override it."),
    click.option("--tile-size", type=int,
                 help="Model input tile side, px [≥ 1024 and 4 × halo; DeepLabV3+ etc.: the "
                      "bundle's]."),
    click.option("--halo", type=int, help="Context px per tile side [bundle's]."),
    click.option("--block-size", type=int, help="Dask block side, px: memory per task [2048]."),
    click.option("--batch-size", type=int,
                 help="Tiles per forward pass [about 1 Mpx: 1 of 1024², 4 of 512²]."),
    click.option("--stitch", type=click.Choice(["trim", "blend"]), help="[trim]"),
    click.option("--device", help="auto, cpu, cuda, cuda:N [auto]."),
    click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]),
                 help="Autocast on CUDA [fp32]."),
    click.option("--confidence/--no-confidence", default=None,
                 help="Also write <scene>.confidence.tif (max probability, %) [no]."),
    click.option("--vectorize/--no-vectorize", default=None,
                 help="Write the GeoPackage of land-cover polygons [yes]."),
    click.option("--min-area", type=float, help="Sieve polygons smaller than this, m² [0]."),
    click.option("--simplify", type=float, help="Simplify polygons (coverage kept), m [0]."),
    click.option("--connectivity", type=click.Choice(["4", "8"]), help="Region connectivity [4]."),
    click.option("--layer", help="GeoPackage layer name [landcover]."),
    click.option("--on-error", type=click.Choice(["continue", "fail"]),
                 help="On a failed scene: record it and go on, or stop [continue]."),
    click.option("--workers", type=int, help="Local worker processes [one per 2 cores]."),
    click.option("--scheduler", help="Existing Dask scheduler address, or 'synchronous'."),
    click.option("--cluster", "cluster_kind", type=click.Choice(["local", "slurm", "pbs"]),
                 help="Local cluster, or Dask workers as Slurm/PBS jobs (cluster.slurm) [local]."),
    click.option("--allocator", type=click.Choice(["auto", "jemalloc", "glibc", "system"]),
                 help="Memory allocator of the processes running the model; auto: jemalloc "
                      "where installed, else glibc tuned to keep large blocks [auto]."),
]


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with ``--config`` and every config-overriding option."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def overrides_from(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Nested config overrides from the parsed options (unset options are None, ignored)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in options.items():
        section = _SECTIONS.get(name)
        if section is None or value is None:
            continue
        if name == "connectivity":
            value = int(value)
        out.setdefault(section, {})[_KEYS.get(name, name)] = value
    return out


def parse_split(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"{text!r}: need 0 <= I < N")
    return i, n
