"""geoseg train: real chips from real GeoTIFFs/GeoPackages, a real smp model, real bundles."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from shapely.geometry import box

from geoseg.cli import main
from geoseg.config import PredictConfig
from geoseg.evaluate import evaluate_mask
from geoseg.labels import IGNORE
from geoseg.models.bundle import ClassSpec, load_bundle
from geoseg.pipeline import predict_scene
from geoseg.tiling import Window
from geoseg.train import TrainConfig, train_model
from geoseg.train.chips import chip_windows, split_chips, touched_blocks
from geoseg.train.loop import class_weights
from geoseg.train.run import combine_statistics

ORIGIN = (420000.0, 4150000.0)
TINY = {"arch": "unet", "encoder": "resnet18",
        "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}
CLASSES = tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in [
    (0, "water", (0, 0, 255)), (1, "trees", (0, 128, 0)), (2, "bare", (200, 180, 120))])
#: per-class band means (DN) for B02, B03, B04, B08: separable by value alone.
MEANS = np.array([[900, 800, 500, 300], [700, 900, 600, 3000], [1500, 1600, 1800, 2000]],
                 dtype=np.float32)


def class_map(height: int, width: int, seed: int) -> np.ndarray:
    """``(H, W)`` uint8 blobs of classes 0..2 (smooth boundaries, every class present)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    f = np.sin(x / rng.uniform(12, 20) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(12, 20))
    return np.digitize(f, [-0.5, 0.5]).astype(np.uint8)


def write_scene(path: Path, classes: np.ndarray, seed: int = 0, nodata_rows: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = MEANS[classes].transpose(2, 0, 1) + rng.normal(0, 60, (4, *classes.shape))
    data = data.clip(1, 30000).astype(np.uint16)
    data[:, :nodata_rows] = 0
    profile = dict(driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=4,
                   dtype="uint16", crs="EPSG:32618", nodata=0,
                   transform=from_origin(*ORIGIN, 10.0, 10.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(("B02", "B03", "B04", "B08"), start=1):
            dst.set_band_description(i, name)
    return path


def write_labels(path: Path, labels: np.ndarray, crs: str = "EPSG:32618") -> Path:
    profile = dict(driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1,
                   dtype="uint8", crs=crs, nodata=IGNORE,
                   transform=from_origin(*ORIGIN, 10.0, 10.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels, 1)
    return path


def quick_config(**extra) -> TrainConfig:
    base = dict(**TINY, classes=CLASSES, chip_size=64, chip_stride=32, val_block=64,
                val_fraction=0.25, tile_size=128, halo=32, batch_size=8, epochs=2,
                steps_per_epoch=3, lr=3e-3, threads=1)
    return TrainConfig(**(base | extra))


# --- pure parts -------------------------------------------------------------------------------

def test_chip_windows_cover_scene_flush_with_edges() -> None:
    wins = chip_windows(100, 150, 64, 32)
    assert {w.row for w in wins} == {0, 32, 36} and {w.col for w in wins} == {0, 32, 64, 86}
    assert all(w.shape == (64, 64) for w in wins)
    assert chip_windows(40, 50, 64, 32) == [Window(0, 0, 64, 64)]


def test_split_never_mixes_train_and_validation_blocks() -> None:
    wins = chip_windows(512, 512, 64, 32)
    train, val = split_chips(wins, 128, 0.25, np.random.default_rng(0))
    assert train and val
    val_blocks = set().union(*(touched_blocks(wins[k], 128) for k in val))
    for k in train:
        assert not touched_blocks(wins[k], 128) & val_blocks
    assert len(val_blocks) == 4  # 25 % of 16 blocks
    again = split_chips(wins, 128, 0.25, np.random.default_rng(0))
    assert again == (train, val)  # seeded


def test_class_weights_balanced_and_statistics_pooling() -> None:
    labels = np.array([0] * 90 + [1] * 10 + [IGNORE] * 50, dtype=np.uint8)
    w = class_weights(labels, 3, "balanced")
    assert w[2] == 0 and w[1] / w[0] == pytest.approx(3.0, rel=1e-5)
    assert np.all(class_weights(labels, 3, "none") == 1)
    pooled = combine_statistics([[(0.0, 1.0)], [(2.0, 1.0)]], [1, 1])
    assert pooled[0] == pytest.approx((1.0, np.sqrt(2.0)))


# --- training ---------------------------------------------------------------------------------

def test_train_raster_labels_writes_bundle_that_predicts(tmp_path: Path) -> None:
    truth = class_map(192, 256, seed=1)
    scene = write_scene(tmp_path / "scene.tif", truth, nodata_rows=10)
    labels = truth.copy()
    labels[100:140, 50:120] = IGNORE  # an unlabelled patch
    label_path = write_labels(tmp_path / "labels.tif", labels)
    out = tmp_path / "model.safetensors"
    result = train_model([scene], [label_path], out, quick_config())
    bundle = load_bundle(out)
    meta = bundle.meta
    assert meta.band_names == ("B02", "B03", "B04", "B08") and meta.classes == CLASSES
    assert meta.input_dtype == "uint16" and (meta.tile_size, meta.halo) == (128, 32)
    # statistics come from the training scene's valid pixels
    with rasterio.open(scene) as src:
        b08 = src.read(4)
    assert meta.bands[3].mean == pytest.approx(b08[b08 > 0].mean(), rel=0.02)
    assert len(result.history) == 2 and result.train_chips > 0 and result.val_chips > 0
    assert meta.training["history"][0]["epoch"] == 1 and "best_val_miou" in meta.training
    mask = tmp_path / "mask.tif"
    predict_scene(scene, out, mask, PredictConfig(block_size=128))
    with rasterio.open(mask) as src:
        pred = src.read(1)
    assert pred.shape == truth.shape and np.all(pred[:10] == 255) and pred[10:].max() < 3


def test_train_polygon_labels_in_another_crs(tmp_path: Path) -> None:
    truth = class_map(160, 160, seed=2)
    scene = write_scene(tmp_path / "scene.tif", truth)
    # three rectangles, in lon/lat: reprojected onto the UTM scene grid before burning
    x0, y0 = ORIGIN
    rects = [box(x0 + 50, y0 - 750, x0 + 750, y0 - 50),
             box(x0 + 850, y0 - 1550, x0 + 1550, y0 - 850),
             box(x0 + 50, y0 - 1550, x0 + 750, y0 - 850)]
    frame = gpd.GeoDataFrame({"cover": ["water", "Trees", "bare"]}, geometry=rects,
                             crs="EPSG:32618").to_crs("EPSG:4326")
    gpkg = tmp_path / "labels.gpkg"
    frame.to_file(gpkg, driver="GPKG")
    out = tmp_path / "model.safetensors"
    result = train_model([scene], [gpkg], out, quick_config(val_fraction=0.0, min_labelled=0.2),
                         class_field="cover")
    assert result.val_chips == 0 and len(result.history) == 2
    mask = tmp_path / "mask.tif"
    predict_scene(scene, out, mask, PredictConfig())
    with rasterio.open(mask) as src:
        assert src.read(1).max() < 3


def test_training_learns_an_easy_task_and_resumes(tmp_path: Path) -> None:
    truth = class_map(256, 256, seed=3)
    scene = write_scene(tmp_path / "scene.tif", truth)
    label_path = write_labels(tmp_path / "labels.tif", truth)
    out = tmp_path / "model.safetensors"
    cfg = quick_config(epochs=8, steps_per_epoch=6, patience=8)  # val mIoU 0.98 by epoch 6
    result = train_model([scene], [label_path], out, cfg)
    assert result.best_val_miou is not None and result.best_val_miou > 0.9, result.history
    # the whole scene, through the prediction pipeline, agrees with the truth
    mask = tmp_path / "mask.tif"
    predict_scene(scene, out, mask, PredictConfig())
    report = evaluate_mask(mask, label_path)
    assert report.scores.mean_iou > 0.9 and report.scores.overall_accuracy > 0.95
    # resume: continues from the bundle, keeps its normalization, extends the history
    resumed = tmp_path / "resumed.safetensors"
    again = train_model([scene], [label_path], resumed, quick_config(epochs=1),
                        resume=out)
    meta0, meta1 = load_bundle(out).meta, load_bundle(resumed).meta
    assert meta1.bands == meta0.bands and meta1.halo == meta0.halo
    assert len(meta1.training["history"]) == len(meta0.training["history"]) + 1
    assert meta1.training["resumed_from"] == load_bundle(out).sha256
    assert again.best_val_miou is not None and again.best_val_miou > 0.85


def test_train_cli_and_bad_input(tmp_path: Path) -> None:
    truth = class_map(128, 128, seed=4)
    scene = write_scene(tmp_path / "scene.tif", truth)
    label_path = write_labels(tmp_path / "labels.tif", truth)
    out = tmp_path / "cli.safetensors"
    args = ["train", "--scene", str(scene), "--labels", str(label_path), "-o", str(out),
            "--classes", "water,trees,bare", "--arch", "unet", "--encoder", "resnet18",
            "--encoder-depth", "3", "--chip-size", "64", "--val-block", "64", "--epochs", "1",
            "--steps-per-epoch", "2", "--tile-size", "128", "--halo", "32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert load_bundle(out).meta.classes[1].name == "trees"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists already" in again.output
    bad = write_labels(tmp_path / "bad.tif", np.full((128, 128), 7, np.uint8))
    result = CliRunner().invoke(main, [*args[:3], "--labels", str(bad), *args[5:], "--overwrite"])
    assert result.exit_code == 1 and "label value 7" in result.output, result.output
    nolabels = CliRunner().invoke(main, [a if a != str(label_path) else str(tmp_path / "x.tif")
                                         for a in args] + ["--overwrite"])
    assert nolabels.exit_code == 1 and "no such label file" in nolabels.output
    info = CliRunner().invoke(main, ["model", "info", str(out), "--json"])
    assert json.loads(info.output)["training"]["epochs_run"] == 1
