"""Train a model on scenes and labels and write it as a bundle: the one entry point.

Steps: open and check the scenes → per-band statistics of the training scenes (or the resumed
bundle's) → labelled pixels counted per cell → validation blocks sized to the labelled area and
a seeded share held out → validation chips (fixed) and training areas (read once; chips drawn
at random positions every step) → fit for a number of optimizer steps →
bundle (written atomically whenever validation mIoU improves, so the file on disk is always
the best model so far and a stopped run leaves a usable bundle).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from geoseg.errors import BundleError, ConfigError, SceneError
from geoseg.labels import IGNORE, Grid, open_labels
from geoseg.models.bundle import (
    BandSpec,
    BundleMeta,
    InputEncoding,
    load_bundle,
    save_bundle,
    validation_message,
)
from geoseg.models.registry import build_model, model_align, recommended_halo
from geoseg.scene import Scene, open_scene, select_bands
from geoseg.tiling import ceil_to
from geoseg.train.chips import (
    ChipSet,
    TrainAreas,
    block_counts,
    choose_val_block,
    labelled_cells,
    read_chips,
    read_train_areas,
    split_blocks,
    validation_windows,
)
from geoseg.train.config import TrainConfig
from geoseg.train.loop import EpochRecord, fit
from geoseg.train.pretrained import load_encoder_weights, model_from_bundle

__all__ = ["TrainResult", "combine_statistics", "train_model"]

log = logging.getLogger(__name__)

#: ``(stage, done, total)``: stage is "labels …", "areas …", "validation …" (reading) or
#: "epoch N" (optimising).
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_model` did.

    Attributes:
        bundle: the bundle written (best epoch's weights).
        meta: its metadata.
        history: per-epoch metrics.
        best_epoch: epoch whose weights were kept.
        best_val_miou: its validation mIoU (None without validation chips).
        train_chips: training chips drawn (optimizer steps x batch size).
        val_chips: validation chips.
        seconds: wall-clock time.
        steps: optimizer steps taken (fewer than planned after an early stop).
        best_step: the step at which the kept weights were scored.
        planned_steps: the training length asked for.
        stopped_early: True when validation stopped improving for ``patience`` epochs.
        val_block: side of the validation blocks used, px.
        val_note: why there is no validation split, or how it was adapted (None when
            ``val_block`` was used as given).
        train_pixels: labelled training pixels.
    """

    bundle: Path
    meta: BundleMeta
    history: list[EpochRecord]
    best_epoch: int
    best_val_miou: float | None
    train_chips: int
    val_chips: int
    seconds: float
    steps: int = 0
    best_step: int = 0
    planned_steps: int = 0
    stopped_early: bool = False
    val_block: int = 0
    val_note: str | None = None
    train_pixels: int = 0


def combine_statistics(stats: Sequence[Sequence[tuple[float, float]]],
                       weights: Sequence[float]) -> list[tuple[float, float]]:
    """Pool per-scene ``(mean, std)`` per band into one ``(mean, std)`` per band.

    ``weights`` are the scenes' pixel counts.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = []
    for band in range(len(stats[0])):
        means = np.array([s[band][0] for s in stats])
        stds = np.array([s[band][1] for s in stats])
        mean = float((w * means).sum())
        var = float((w * (stds**2 + means**2)).sum() - mean**2)
        out.append((mean, max(math.sqrt(max(var, 0.0)), 1e-6)))
    return out


def _open_scenes(paths: Sequence[Path], bands: Sequence[str] | None) -> list[tuple[Scene, tuple]]:
    opened = []
    for path in paths:
        scene = open_scene(path)
        names = list(bands) if bands else [b.name for b in scene.bands]
        opened.append((scene, select_bands(scene, names, str(path))))
    dtypes = {s.dtype for s, _ in opened}
    if len(dtypes) > 1:
        raise SceneError(f"training scenes have different dtypes ({', '.join(sorted(dtypes))}); "
                         "convert them to one dtype so one normalization fits all")
    return opened


def _shared_encodings(opened: Sequence[tuple[Scene, tuple]], paths: Sequence[Path]
                      ) -> tuple[tuple[float, float] | None, ...]:
    """Each band's encoding, the same in every training scene (the model learns one meaning
    of its input values; chips of all scenes are pooled and normalized alike).

    Raises:
        SceneError: two scenes declare different encodings for a band (both files named).
    """
    first = opened[0][1]
    for (_, bands), path in zip(opened[1:], paths[1:], strict=True):
        for a, b in zip(first, bands, strict=True):
            if a.encoding != b.encoding:
                def text(e: tuple[float, float] | None) -> str:
                    return "none" if e is None else f"scale {e[0]:.10g} offset {e[1]:.10g}"
                raise SceneError(
                    f"training scenes declare different encodings for band {a.name}: "
                    f"{paths[0]} {text(a.encoding)}, {path} {text(b.encoding)}; bring them to "
                    "one (e.g. gdal_translate -unscale, or train on one processing baseline)")
    return tuple(b.encoding for b in first)


def _measured_halo(model: Any, n_bands: int, arch: str, tile_size: int, align: int) -> int:
    """The receptive-field radius rounded up to the stride, capped (see TrainConfig.halo)."""
    from geoseg.models.receptive import receptive_field_radius

    probe = ceil_to(512, align)
    radius = receptive_field_radius(model, n_bands, probe, trials=1)
    halo = min(ceil_to(radius, align), recommended_halo(arch))
    while halo and tile_size - 2 * halo < align:
        halo -= align
    log.info("receptive field radius %d px → halo %d px", radius, halo)
    return halo


def _build_meta(cfg: TrainConfig, bands: tuple[BandSpec, ...], dtype: str, halo: int,
                tile_size: int, training: dict[str, Any], base: BundleMeta | None) -> BundleMeta:
    description = cfg.description or (base.description if base else "") or (
        "trained with geoseg train")
    try:
        if base is not None:
            return base.model_copy(update={"description": description, "training": training})
        return BundleMeta(arch=cfg.arch, encoder=cfg.encoder, arch_kwargs=cfg.arch_kwargs,
                          bands=bands, input_dtype=dtype, classes=cfg.classes,  # type: ignore[arg-type]
                          tile_size=tile_size, halo=halo, description=description,
                          training=training)
    except ValidationError as exc:
        raise ConfigError(f"invalid bundle settings: {validation_message(exc)}") from exc


def train_model(
    scenes: Sequence[str | os.PathLike[str]],
    labels: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    cfg: TrainConfig,
    *,
    resume: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    encoder_weights: str | os.PathLike[str] | None = None,
    weights_bands: Sequence[str] | None = None,
    class_field: str | None = None,
    ignore_value: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: Callable[[EpochRecord, bool], None] | None = None,
    on_setup: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a segmentation model and write it to ``out`` as a bundle.

    Args:
        scenes: training scenes (any GDAL raster with a CRS; one dtype for all).
        labels: one label file per scene: a raster of class ids (nodata / ``ignore_value``
            unlabelled; warped onto the scene grid if needed) or polygons with ``class_field``.
        out: bundle to write (``.safetensors``), atomically, whenever validation improves.
        cfg: the settings.
        resume: a bundle to continue from (its architecture, bands, normalization and classes
            are kept; ``cfg``'s are ignored).
        init: a bundle to start a new training from (fine-tuning): its architecture,
            encoder, bands, normalization, tile size and halo are kept; when ``cfg.classes``
            differ from its classes the segmentation head is re-initialised. Provenance goes
            into the new bundle's ``training["init"]``.
        encoder_weights: a state-dict file of pretrained encoder weights for a new model
            (see :func:`geoseg.train.pretrained.load_encoder_weights`); ``weights_bands``
            names the file's input channels in order.
        on_setup: called with each note the user should see before training starts (no
            validation split and why, validation blocks shrunk, deprecated settings).

    Raises:
        ConfigError, SceneError, BundleError, OutputExistsError: bad input, before training.
    """
    import torch

    from geoseg.predict import resolve_device
    from geoseg.writers import check_writable

    start = time.perf_counter()
    out = Path(out)
    if len(scenes) != len(labels) or not scenes:
        raise ConfigError(f"give one label file per scene ({len(scenes)} scenes, "
                          f"{len(labels)} label files)")
    if resume is None or Path(resume).resolve() != out.resolve():
        check_writable(out, overwrite)
    if init is not None and resume is not None:
        raise ConfigError("give --init (a new training from a bundle's weights) or --resume "
                          "(continue a bundle's training), not both")
    if encoder_weights is not None and (init is not None or resume is not None):
        raise ConfigError("--encoder-weights sets a new model's encoder; --init and --resume "
                          "already bring all of a model's weights")

    def note(text: str) -> None:
        log.warning("%s", text)
        if on_setup is not None:
            on_setup(text)

    start_from = resume if resume is not None else init
    base = load_bundle(start_from) if start_from is not None else None
    if base is None and not cfg.classes:
        raise ConfigError("name the classes (--classes water,trees,…): label value k is class k")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    device = torch.device(resolve_device(cfg.device))
    if cfg.precision != "fp32" and device.type != "cuda":
        log.warning("precision %s needs CUDA; training in fp32 on %s", cfg.precision, device)

    band_names = base.meta.band_names if base else cfg.bands
    opened = _open_scenes([Path(s) for s in scenes], band_names)
    encodings = _shared_encodings(opened, [Path(s) for s in scenes])
    dtype = opened[0][0].dtype
    fit_specs: tuple[BandSpec, ...] | None = None  # the specs chips are normalized with
    if base is not None:
        meta0 = base.meta
        if dtype != meta0.input_dtype:
            raise SceneError(f"{scenes[0]}: pixels are {dtype} but {start_from} was trained "
                             f"on {meta0.input_dtype}")
        band_specs = meta0.bands
        from geoseg.normalize import band_conversions, folded_statistics

        conversions = band_conversions(opened[0][1], band_specs, str(start_from))
        if any(c.converts for c in conversions):  # the scenes' DN, brought to the bundle's
            fit_specs = tuple(BandSpec(name=b.name, mean=m, std=sd) for b, (m, sd) in zip(
                band_specs, folded_statistics(band_specs, conversions), strict=True))
        if init is None:
            model, classes, meta_base = base.build(), meta0.classes, meta0
        else:
            classes = cfg.classes or meta0.classes
            model, init_report = model_from_bundle(base, classes)
            note(init_report.summary())
            try:
                meta_base = BundleMeta.model_validate(meta0.model_dump() | {
                    "classes": [c.model_dump() for c in classes], "training": {},
                    "description": f"fine-tuned with geoseg train from {base.path.name}"})
            except ValidationError as exc:
                raise ConfigError(f"invalid bundle settings: {validation_message(exc)}") from exc
    else:
        from geoseg.normalize import band_statistics

        per_scene = [band_statistics(b, s.height, s.width) for s, b in opened]
        stats = combine_statistics(per_scene, [s.height * s.width for s, _ in opened])
        try:
            band_specs = tuple(
                BandSpec(name=b.name, mean=m, std=sd,
                         encoding=None if e is None else InputEncoding(scale=e[0], offset=e[1]))
                for b, (m, sd), e in zip(opened[0][1], stats, encodings, strict=True))
        except ValidationError as exc:  # e.g. float pixels so large their variance overflows
            raise SceneError(f"{', '.join(map(str, scenes))}: no usable normalization "
                             f"statistics ({validation_message(exc)}); check the pixel values "
                             "(`gdalinfo -stats`)") from exc
        classes = cfg.classes
        model = build_model(cfg.arch, cfg.encoder, len(band_specs), len(classes),
                            cfg.arch_kwargs)
        meta_base = None
        if encoder_weights is not None:
            encoder_report = load_encoder_weights(model, encoder_weights,
                                                  [b.name for b in band_specs], weights_bands)
            note(encoder_report.summary())
    align = model_align(model)
    names = [c.name for c in classes]

    if cfg.epochs is not None and cfg.steps is None:
        note(f"training length: {cfg.epochs} epochs x {cfg.steps_per_epoch} steps per epoch = "
             f"{cfg.total_steps} optimizer steps (an epoch is a validation interval now, no "
             "longer a pass over fixed chips; --steps gives the length directly)")
    if cfg.max_chips is not None:
        note("max_chips (--max-chips) is deprecated and has no effect: training reads the "
             "labelled area once and draws chips from it at random positions")
    rng = np.random.default_rng(cfg.seed)
    sources = []
    try:
        cells = []
        for i, ((scene, _), label_path) in enumerate(zip(opened, labels, strict=True)):
            grid = Grid(scene.crs_wkt, scene.transform, scene.height, scene.width)
            source = open_labels(label_path, grid, class_field=class_field, class_names=names,
                                 ignore_value=ignore_value)
            sources.append(source)
            if not source.overlaps():
                raise SceneError(f"{label_path} does not overlap {scenes[i]}; check its CRS "
                                 "and extent")
            cells.append(labelled_cells(source, scene.height, scene.width))
        if not any(c.any() for c in cells):
            raise ConfigError("no labelled pixel inside the scenes; check that the labels "
                              "cover the scenes (CRS, extent, --class-field, --ignore-value)")
        block, n_blocks = choose_val_block(cells, cfg.val_block, cfg.val_fraction,
                                           cfg.min_labelled)
        val_note = _val_note(cfg, block, n_blocks)
        if val_note:
            note(val_note)
        # blocks named (scene, i, j) so one seeded draw splits all scenes together
        need = max(1, int(cfg.min_labelled * block * block))
        labelled = [(s_i, int(i), int(j)) for s_i, c in enumerate(cells)
                    for i, j in zip(*np.nonzero(block_counts(c, block) >= need), strict=True)]
        held_all = split_blocks(labelled, cfg.val_fraction if n_blocks >= 2 else 0.0, rng)
        val_parts, areas = [], []
        stride = cfg.chip_stride or cfg.chip_size
        for i, ((scene, bands), label_path) in enumerate(zip(opened, labels, strict=True)):
            held = [(h[1], h[2]) for h in held_all if h[0] == i]
            windows = validation_windows(held, block, cfg.chip_size, stride)
            val_parts.append(read_chips(
                i, bands, scene.height, scene.width, sources[i], windows, cfg.min_labelled,
                functools.partial(progress, f"validation {scene.name}") if progress else None))
            mine = read_train_areas(
                i, bands, scene.height, scene.width, sources[i], cells[i], block, held,
                margin=cfg.chip_size // 2,
                progress=functools.partial(progress, f"areas {scene.name}") if progress else None)
            top = max([int(a.labels[a.labels != IGNORE].max(initial=0)) for a in mine]
                      + [int(val_parts[-1].labels[val_parts[-1].labels != IGNORE].max(initial=0))])
            if top >= len(classes):
                raise ConfigError(f"{label_path}: label value {top} but only "
                                  f"{len(classes)} classes ({', '.join(names)})")
            areas += mine
            log.info("%s: %d validation blocks of %d px (%d chips), %d training areas",
                     scene.name, len(held), block, len(val_parts[-1]),
                     sum(a.scene == i for a in areas))
    finally:
        for source in sources:
            source.close()
    train = TrainAreas(areas)
    val = ChipSet.concat([p for p in val_parts if len(p)] or val_parts)
    if not train.areas:
        raise ConfigError("no labelled training pixels outside the validation blocks; check "
                          "that the labels cover the scenes, or lower --val-fraction")

    if base is not None:
        halo, tile_size = base.meta.halo, base.meta.tile_size
    else:
        tile_size = ceil_to(cfg.tile_size, align)
        halo = cfg.halo if cfg.halo is not None else _measured_halo(
            model, len(band_specs), cfg.arch, tile_size, align)
    # the bundle's metadata must validate before an epoch is spent (written only after one)
    _build_meta(cfg, band_specs, dtype, halo, tile_size, {}, meta_base)
    previous = list(base.meta.training.get("history", [])) if resume is not None and base else []
    record: dict[str, Any] = {
        "scenes": [Path(s).name for s in scenes],
        "labels": [Path(p).name for p in labels],
        "config": cfg.model_dump(mode="json", exclude={"classes", "description"}),
        "resumed_from": base.sha256 if resume is not None and base else None,
        "train_pixels": train.labelled,
        "val_chips": len(val),
        "val_block": block,
        "planned_steps": cfg.total_steps,
        **({"init": init_report.record()} if init is not None else {}),
        **({"encoder_weights": encoder_report.record()} if encoder_weights is not None else {}),
        "torch": torch.__version__,
    }

    def save(rec: EpochRecord, improved: bool) -> None:
        history.append(rec.to_dict())
        if improved:
            training = record | {"history": previous + history, "best_epoch": rec.epoch,
                                 "best_step": rec.step, "best_val_miou": rec.val_miou,
                                 "seconds": round(time.perf_counter() - start, 1)}
            save_bundle(model, _build_meta(cfg, band_specs, dtype, halo, tile_size, training,
                                           meta_base), out)
        if on_epoch is not None:
            on_epoch(rec, improved)

    history: list[dict[str, Any]] = []
    def draw(generator: np.random.Generator, n: int) -> ChipSet:
        return train.draw(generator, n, cfg.chip_size, cfg.min_labelled)

    result = fit(
        model, draw, train.class_counts(len(classes)), val, fit_specs or band_specs, names,
        steps=cfg.total_steps, steps_per_epoch=cfg.steps_per_epoch, batch_size=cfg.batch_size,
        lr=cfg.lr, weight_decay=cfg.weight_decay, weighting=cfg.class_weighting,
        patience=cfg.patience, seed=cfg.seed, device=device, precision=cfg.precision,
        on_step=(lambda e, s, t: progress(f"epoch {e}", s, t)) if progress else None,
        on_epoch=save,
    )
    seconds = time.perf_counter() - start
    training = record | {"history": previous + history, "best_epoch": result.best_epoch,
                         "best_step": result.best_step, "best_val_miou": result.best_score,
                         "epochs_run": len(result.history), "steps": result.steps,
                         "train_chips": result.steps * cfg.batch_size,
                         "stopped_early": result.stopped_early, "seconds": round(seconds, 1)}
    meta = _build_meta(cfg, band_specs, dtype, halo, tile_size, training,
                       meta_base)
    save_bundle(model, meta, out)  # best weights (fit restored them) + the full history
    try:
        load_bundle(out)
    except BundleError as exc:  # pragma: no cover - would be a bug in save_bundle
        raise BundleError(f"{out}: the bundle just written does not load: {exc}") from exc
    return TrainResult(out, meta, result.history, result.best_epoch, result.best_score,
                       result.steps * cfg.batch_size, len(val), seconds, steps=result.steps,
                       best_step=result.best_step, planned_steps=cfg.total_steps,
                       stopped_early=result.stopped_early, val_block=block, val_note=val_note,
                       train_pixels=train.labelled)


def _val_note(cfg: TrainConfig, block: int, n_blocks: int) -> str | None:
    """Why there is no validation split, or how the blocks were adapted; None when the
    validation blocks are as asked."""
    if cfg.val_fraction == 0:
        return "no validation (--val-fraction 0): the last epoch is kept, no early stopping"
    if n_blocks < 2:
        return (f"no validation: the labelled area fits in {n_blocks} block of {block} px "
                f"(the smallest validation block), so nothing can be held out; the last epoch "
                "is kept, no early stopping. Label a larger or second area, or give a "
                "separate check with `geoseg evaluate`")
    if block != cfg.val_block:
        return (f"validation blocks of {block} px instead of {cfg.val_block} px: the "
                f"labelled area spans {n_blocks} blocks of {block} px")
    return None
