"""Train a model on scenes and labels and write it as a bundle: the one entry point.

Steps: open and check the scenes → per-band statistics of the training scenes (or the resumed
bundle's) → candidate chips where labels exist → spatial train/validation split → fit →
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
from geoseg.labels import Grid, open_labels
from geoseg.models.bundle import (
    BandSpec,
    BundleMeta,
    load_bundle,
    save_bundle,
    validation_message,
)
from geoseg.models.registry import build_model, model_align, recommended_halo
from geoseg.scene import Scene, open_scene, select_bands
from geoseg.tiling import ceil_to
from geoseg.train.chips import ChipSet, chip_windows, read_chips, split_chips
from geoseg.train.config import TrainConfig
from geoseg.train.loop import EpochRecord, fit

__all__ = ["TrainResult", "combine_statistics", "train_model"]

log = logging.getLogger(__name__)

#: ``(stage, done, total)``: stage is "chips" (reading) or "epoch N" (optimising).
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
        train_chips, val_chips: chips used.
        seconds: wall-clock time.
    """

    bundle: Path
    meta: BundleMeta
    history: list[EpochRecord]
    best_epoch: int
    best_val_miou: float | None
    train_chips: int
    val_chips: int
    seconds: float


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
    class_field: str | None = None,
    ignore_value: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: Callable[[EpochRecord, bool], None] | None = None,
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
    base = load_bundle(resume) if resume is not None else None
    if base is None and not cfg.classes:
        raise ConfigError("name the classes (--classes water,trees,…): label value k is class k")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    device = torch.device(resolve_device(cfg.device))
    if cfg.precision != "fp32" and device.type != "cuda":
        log.warning("precision %s needs CUDA; training in fp32 on %s", cfg.precision, device)

    band_names = base.meta.band_names if base else cfg.bands
    opened = _open_scenes([Path(s) for s in scenes], band_names)
    dtype = opened[0][0].dtype
    if base is not None:
        meta0 = base.meta
        if dtype != meta0.input_dtype:
            raise SceneError(f"{scenes[0]}: pixels are {dtype} but {resume} was trained on "
                             f"{meta0.input_dtype}")
        model = base.build()
        band_specs, classes = meta0.bands, meta0.classes
    else:
        from geoseg.normalize import band_statistics

        per_scene = [band_statistics(b, s.height, s.width) for s, b in opened]
        stats = combine_statistics(per_scene, [s.height * s.width for s, _ in opened])
        try:
            band_specs = tuple(BandSpec(name=b.name, mean=m, std=sd)
                               for b, (m, sd) in zip(opened[0][1], stats, strict=True))
        except ValidationError as exc:  # e.g. float pixels so large their variance overflows
            raise SceneError(f"{', '.join(map(str, scenes))}: no usable normalization "
                             f"statistics ({validation_message(exc)}); check the pixel values "
                             "(`gdalinfo -stats`)") from exc
        classes = cfg.classes
        model = build_model(cfg.arch, cfg.encoder, len(band_specs), len(classes),
                            cfg.arch_kwargs)
    align = model_align(model)
    names = [c.name for c in classes]

    rng = np.random.default_rng(cfg.seed)
    stride = cfg.chip_stride or max(cfg.chip_size // 2, 1)
    train_parts, val_parts = [], []
    for i, ((scene, bands), label_path) in enumerate(zip(opened, labels, strict=True)):
        grid = Grid(scene.crs_wkt, scene.transform, scene.height, scene.width)
        source = open_labels(label_path, grid, class_field=class_field, class_names=names,
                             ignore_value=ignore_value)
        try:
            if not source.overlaps():
                raise SceneError(f"{label_path} does not overlap {scenes[i]}; check its CRS "
                                 "and extent")
            windows = chip_windows(scene.height, scene.width, cfg.chip_size, stride)
            stage = f"chips {scene.name}"
            chips = read_chips(i, bands, scene.height, scene.width, source, windows,
                               cfg.min_labelled,
                               functools.partial(progress, stage) if progress else None)
        finally:
            source.close()
        if chips.labels.size and int(chips.labels[chips.labels != 255].max(initial=0)) >= len(
                classes):
            raise ConfigError(f"{label_path}: label value "
                              f"{int(chips.labels[chips.labels != 255].max())} but only "
                              f"{len(classes)} classes ({', '.join(names)})")
        tr, va = split_chips([w for _, w in chips.origin], cfg.val_block, cfg.val_fraction, rng)
        train_parts.append(chips.subset(tr))
        val_parts.append(chips.subset(va))
        log.info("%s: %d chips with labels → %d train, %d validation", scene.name, len(chips),
                 len(tr), len(va))
    train = _cap(ChipSet.concat([p for p in train_parts if len(p)] or train_parts), cfg.max_chips,
                 rng)
    val = ChipSet.concat([p for p in val_parts if len(p)] or val_parts)
    if len(train) == 0:
        raise ConfigError(f"no training chip has ≥ {cfg.min_labelled:.0%} labelled pixels; "
                          "check that the labels cover the scenes, or lower --min-labelled")
    if len(val) == 0 and cfg.val_fraction > 0:
        log.warning("no validation chips (too few labelled blocks of %d px); training without "
                    "validation or early stopping — try a smaller --val-block", cfg.val_block)

    if base is not None:
        halo, tile_size = base.meta.halo, base.meta.tile_size
    else:
        tile_size = ceil_to(cfg.tile_size, align)
        halo = cfg.halo if cfg.halo is not None else _measured_halo(
            model, len(band_specs), cfg.arch, tile_size, align)
    # the bundle's metadata must validate before an epoch is spent (written only after one)
    _build_meta(cfg, band_specs, dtype, halo, tile_size, {}, base.meta if base else None)
    previous = list(base.meta.training.get("history", [])) if base else []
    record: dict[str, Any] = {
        "scenes": [Path(s).name for s in scenes],
        "labels": [Path(p).name for p in labels],
        "config": cfg.model_dump(mode="json", exclude={"classes", "description"}),
        "resumed_from": base.sha256 if base else None,
        "train_chips": len(train),
        "val_chips": len(val),
        "torch": torch.__version__,
    }

    def save(rec: EpochRecord, improved: bool) -> None:
        history.append(rec.to_dict())
        if improved:
            training = record | {"history": previous + history, "best_epoch": rec.epoch,
                                 "best_val_miou": rec.val_miou,
                                 "seconds": round(time.perf_counter() - start, 1)}
            save_bundle(model, _build_meta(cfg, band_specs, dtype, halo, tile_size, training,
                                           base.meta if base else None), out)
        if on_epoch is not None:
            on_epoch(rec, improved)

    history: list[dict[str, Any]] = []
    result = fit(
        model, train, val, band_specs, names,
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, weighting=cfg.class_weighting, patience=cfg.patience,
        seed=cfg.seed, device=device, precision=cfg.precision,
        steps_per_epoch=cfg.steps_per_epoch,
        on_step=(lambda e, s, t: progress(f"epoch {e}", s, t)) if progress else None,
        on_epoch=save,
    )
    seconds = time.perf_counter() - start
    training = record | {"history": previous + history, "best_epoch": result.best_epoch,
                         "best_val_miou": result.best_score, "epochs_run": len(result.history),
                         "stopped_early": result.stopped_early, "seconds": round(seconds, 1)}
    meta = _build_meta(cfg, band_specs, dtype, halo, tile_size, training,
                       base.meta if base else None)
    save_bundle(model, meta, out)  # best weights (fit restored them) + the full history
    try:
        load_bundle(out)
    except BundleError as exc:  # pragma: no cover - would be a bug in save_bundle
        raise BundleError(f"{out}: the bundle just written does not load: {exc}") from exc
    return TrainResult(out, meta, result.history, result.best_epoch, result.best_score,
                       len(train), len(val), seconds)


def _cap(chips: ChipSet, limit: int, rng: np.random.Generator) -> ChipSet:
    if len(chips) <= limit:
        return chips
    log.info("using %d of %d training chips (--max-chips)", limit, len(chips))
    return chips.subset(np.sort(rng.choice(len(chips), limit, replace=False)).tolist())
