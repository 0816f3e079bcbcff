"""An easy segmentation task for training tests: three classes separable by band values alone,
in smooth blobs, as a real 4-band uint16 GeoTIFF and a label raster; and a tiny, quick
training configuration. Shared by ``test_train.py`` and the GPU test of mixed precision (which
needs a model with decisive logits: a random-init model's are near-tied everywhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from geoseg.labels import IGNORE
from geoseg.models.bundle import ClassSpec
from geoseg.train import TrainConfig

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
