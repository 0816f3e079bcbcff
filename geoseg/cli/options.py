"""Every option of the scene commands, declared once: its flags, one help text, and the config
key it overrides, side by side.

Commands take the groups they need (as rasterio's ``rio`` takes ``rasterio.rio.options``)::

    group                 options                                          commands
    config_option         -c/--config                                      all below
    predict_options       --tile-size … --probabilities  → predict.*       predict, run, inspect
    run_options           --vectorize, --min-area … --layer → vectorize.*,
                          --on-error, --scenes-in-flight → run.*           run, inspect
    vectorize_options     --min-area … --layer, --block-size → vectorize.* vectorize
    cluster_options       --workers, --scheduler, --cluster, --allocator
                          → cluster.*                                      all four
    config_options        config + predict + run + cluster                 run, inspect, config show

plus ``model_option``, ``split_option``, ``overwrite_option`` and ``json_option``. An option's
value overrides ``<section>.<key>`` of the YAML config (:func:`config_overrides`); options left
out override nothing, so defaults live in :mod:`geoseg.config` alone, and ``--help`` states them
from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from geoseg.config import Config

__all__ = [
    "SharedOption",
    "architecture_options",
    "cluster_options",
    "config_option",
    "config_options",
    "config_overrides",
    "json_option",
    "model_option",
    "overwrite_option",
    "parse_split",
    "predict_options",
    "run_options",
    "split_option",
    "vectorize_options",
]

F = TypeVar("F", bound=Callable[..., Any])


class SharedOption(click.Option):
    """A click option declared in this module; ``config_key`` is the ``section.key`` of the
    config it overrides (None: the command's own, e.g. ``--overwrite``)."""

    def __init__(self, *args: Any, config_key: str | None = None,
                 to_config: Callable[[Any], Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config_key = config_key
        self.to_config = to_config


@dataclass(frozen=True)
class _Option:
    """One option: click declarations, help, the config key and how ``--help`` states its
    default (None: the config field's default, as ``[2048]``; "": no default stated)."""

    decls: tuple[str, ...]
    help: str
    key: str | None = None
    default: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    to_config: Callable[[Any], Any] | None = None

    def full_help(self) -> str:
        default = self.default
        if default is None and self.key is not None:
            default = _config_default(self.key)
        return f"{self.help.removesuffix('.')} [{default}]." if default else self.help

    def __call__(self, f: F) -> F:
        return click.option(*self.decls, cls=SharedOption, help=self.full_help(),
                            config_key=self.key, to_config=self.to_config,
                            **self.attrs)(f)


@cache
def _defaults() -> Config:
    from geoseg.config import Config

    return Config()


def _config_default(key: str) -> str:
    """How ``--help`` states the default of config field ``section.key``."""
    section, name = key.split(".")
    value = getattr(getattr(_defaults(), section), name)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def _group(*options: _Option) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


# --- the options, each declared once ----------------------------------------------------------

CONFIG = _Option(("-c", "--config", "config_path"),
                 "YAML config (see configs/); options given here override it.",
                 attrs={"type": click.Path(exists=True, path_type=Path)})
MODEL = _Option(("-m", "--model", "bundle_path"),
                "Model bundle (.safetensors) from `geoseg model init` or `geoseg train`.",
                attrs={"required": True, "type": click.Path(path_type=Path)})
OVERWRITE = _Option(("--overwrite",),
                    "Replace outputs that exist already (`geoseg run`: recompute finished "
                    "scenes).", attrs={"is_flag": True})
JSON = _Option(("--json", "as_json"), "Print JSON instead of a table.", attrs={"is_flag": True})


def _split(ctx: click.Context, param: click.Parameter, text: str | None) -> tuple[int, int] | None:
    return parse_split(text)


SPLIT = _Option(("--split",),
                "Only scenes I, I+N, I+2N… of the sorted list (job I of N, given as I/N), e.g. "
                "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.",
                attrs={"metavar": "I/N", "callback": _split})

# predict.*
TILE_SIZE = _Option(("--tile-size",), "Model input tile side, px.", "predict.tile_size",
                    "≥ 1024 and 4 × halo; DeepLabV3+ etc.: the bundle's", {"type": int})
HALO = _Option(("--halo",), "Context px per tile side, dropped after prediction.",
               "predict.halo", "bundle's", {"type": int})
BLOCK_SIZE_HELP = "Side of one Dask block, px: sets memory per task."
BLOCK_SIZE = _Option(("--block-size",), BLOCK_SIZE_HELP, "predict.block_size",
                     attrs={"type": int})
BATCH_SIZE = _Option(("--batch-size",), "Tiles per forward pass.", "predict.batch_size",
                     "about 1 Mpx: 1 of 1024², 4 of 512²", {"type": int})
STITCH = _Option(("--stitch",), "Halo trimming, or cosine-weighted blending of probabilities.",
                 "predict.stitch", attrs={"type": click.Choice(["trim", "blend"])})
DEVICE = _Option(("--device",), "auto, cpu, cuda or cuda:N.", "predict.device")
PRECISION = _Option(("--precision",), "Autocast precision on CUDA (CPU runs fp32).",
                    "predict.precision", attrs={"type": click.Choice(["fp32", "bf16", "fp16"])})
CONFIDENCE = _Option(("--confidence/--no-confidence",),
                     "Also write <mask>.confidence.tif (max probability, %).",
                     "predict.confidence", attrs={"default": None})
PROBABILITIES = _Option(("--probabilities/--no-probabilities",),
                        "Also write <mask>.probabilities.tif (one band per class, %).",
                        "predict.probabilities", attrs={"default": None})

# vectorize.*
VECTORIZE = _Option(("--vectorize/--no-vectorize",),
                    "Write the GeoPackage of land-cover polygons.", "vectorize.enabled",
                    attrs={"default": None})
MIN_AREA = _Option(("--min-area",),
                   "Sieve: merge regions smaller than this many m² into their largest neighbour "
                   "(exact, whatever the block size).", "vectorize.min_area_m2",
                   attrs={"type": float})
SIMPLIFY = _Option(("--simplify",),
                   "Coverage-preserving simplification tolerance, m (no gaps or overlaps).",
                   "vectorize.simplify_m", attrs={"type": float})
CONNECTIVITY = _Option(("--connectivity",), "Pixel connectivity of regions.",
                       "vectorize.connectivity", attrs={"type": click.Choice(["4", "8"])},
                       to_config=int)
LAYER = _Option(("--layer",), "GeoPackage layer name.", "vectorize.layer")
#: ``geoseg vectorize``'s blocks: the same option as prediction's, for the vectorize section.
VECTORIZE_BLOCK_SIZE = _Option(("--block-size",), BLOCK_SIZE_HELP, "vectorize.block_size",
                               attrs={"type": int})

# run.*
ON_ERROR = _Option(("--on-error",), "On a failed scene: record it and go on, or stop.",
                   "run.on_error", attrs={"type": click.Choice(["continue", "fail"])})
SCENES_IN_FLIGHT = _Option(("--scenes-in-flight",),
                           "Scenes processed at once: the next scene's prediction overlaps "
                           "the last one's COG, polygons and report; 1: one after another.",
                           "run.scenes_in_flight", attrs={"type": click.IntRange(min=1)})

# cluster.*
WORKERS = _Option(("--workers",), "Local worker processes.", "cluster.workers",
                  "one per 2 cores, or one per GPU", {"type": int})
SCHEDULER = _Option(("--scheduler",),
                    "Existing Dask scheduler address, or 'synchronous' to run in this process.",
                    "cluster.scheduler", "none: a local cluster")
CLUSTER = _Option(("--cluster", "cluster_kind"),
                  "Local cluster, or Dask workers as Slurm/PBS jobs (cluster.slurm).",
                  "cluster.kind", attrs={"type": click.Choice(["local", "slurm", "pbs"])})
ALLOCATOR = _Option(("--allocator",),
                    "Memory allocator of the worker processes geoseg starts, and of this one "
                    "when the model runs in it (--scheduler synchronous); auto: jemalloc where "
                    "installed, else glibc tuned to keep large blocks.", "cluster.allocator",
                    attrs={"type": click.Choice(["auto", "jemalloc", "glibc", "system"])})

# --- the groups -------------------------------------------------------------------------------

config_option = _group(CONFIG)
model_option = _group(MODEL)
overwrite_option = _group(OVERWRITE)
split_option = _group(SPLIT)
json_option = _group(JSON)
predict_options = _group(TILE_SIZE, HALO, BLOCK_SIZE, BATCH_SIZE, STITCH, DEVICE, PRECISION,
                         CONFIDENCE, PROBABILITIES)
#: what a batch run does after predicting: the polygons (or none) and failed scenes
run_options = _group(VECTORIZE, MIN_AREA, SIMPLIFY, CONNECTIVITY, LAYER, ON_ERROR,
                     SCENES_IN_FLIGHT)
#: ``geoseg vectorize``: the polygons of one mask, in blocks of --block-size
vectorize_options = _group(MIN_AREA, SIMPLIFY, CONNECTIVITY, LAYER, VECTORIZE_BLOCK_SIZE)
cluster_options = _group(WORKERS, SCHEDULER, CLUSTER, ALLOCATOR)


def architecture_options(encoder: str) -> Callable[[F], F]:
    """``--arch`` and ``--encoder`` of a model to build (``model init``, ``train``); ``encoder``
    is the command's default encoder. Not config options: a bundle records them."""

    def decorate(f: F) -> F:
        f = click.option("--encoder", default=encoder, show_default=True,
                         help="smp encoder: resnet18, resnet34, efficientnet-b0, …")(f)
        return click.option("--arch", default="unet", show_default=True,
                            help="smp architecture: unet, deeplabv3plus, fpn, …")(f)

    return decorate


def bundle_input_options(f: F) -> F:
    """What a new bundle takes in and how it normalizes it (``model init``, ``model import``):
    ``--bands``, ``--classes``, ``--dtype``, ``--stats-from``, ``--mean``, ``--std``. Not
    config options: a bundle records them."""
    for option in reversed((
        click.option("--bands", required=True,
                     help="Input band names in the model's channel order, e.g. B02,B03,B04,B08."),
        click.option("--classes", required=True,
                     help="Class names in the model's output order, optionally name:#rrggbb, "
                          "e.g. water:#1f78b4,trees,crops."),
        click.option("--dtype", "input_dtype", default="uint16", show_default=True,
                     type=click.Choice(["uint8", "uint16", "int16", "float32"]),
                     help="Pixel dtype of the scenes the model runs on."),
        click.option("--stats-from", type=click.Path(exists=True, path_type=Path),
                     help="Per-band mean/std measured on this scene (decimated read, in its "
                          "units)."),
        click.option("--mean", help="Per-band means (comma list), if not --stats-from."),
        click.option("--std", help="Per-band standard deviations (comma list), if not "
                                   "--stats-from."),
    )):
        f = option(f)
    return f


def config_options(f: F) -> F:
    """``--config`` and every option that overrides the config of a batch run."""
    for group in (cluster_options, run_options, predict_options, config_option):
        f = group(f)
    return f


def config_overrides(ctx: click.Context | None = None) -> dict[str, dict[str, Any]]:
    """Nested config overrides (``{section: {key: value}}``) from the options given to the
    command of ``ctx`` (default: the current one); options left out are None, ignored."""
    ctx = ctx or click.get_current_context()
    out: dict[str, dict[str, Any]] = {}
    for param in ctx.command.params:
        if not isinstance(param, SharedOption) or param.config_key is None:
            continue
        value = ctx.params.get(param.name) if param.name else None
        if value is None:
            continue
        section, key = param.config_key.split(".")
        out.setdefault(section, {})[key] = param.to_config(value) if param.to_config else value
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
