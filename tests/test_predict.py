"""Prediction end to end on synthetic scenes: the invariants that matter.

* the mask does not depend on tile or block size (halo >= receptive field);
* output grid == input grid; nodata in → nodata out; nothing lost or doubled at the edges;
* a valid COG with a colour table; blocks without data never reach the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.config import PredictConfig
from geoseg.pipeline import CLASSES_TAG, predict_scene
from geoseg.predict import _CACHE

from .conftest import TINY_DEEPLAB, TINY_UNET


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def run(scene: Path, bundle: Path, out: Path, **cfg) -> np.ndarray:
    predict_scene(scene, bundle, out, PredictConfig(**cfg), overwrite=True)
    with rasterio.open(out) as src:
        return src.read(1)


@pytest.mark.parametrize("size", [
    # 300 rows still give two rows of blocks in every configuration but the 880-px ones
    # (tile 1024, halo 72); 1001 columns two columns of those. make_scene's default in slow.
    pytest.param((300, 1001), id="300x1001"),
    pytest.param((777, 1001), id="777x1001", marks=pytest.mark.slow),
])
def test_unet_mask_does_not_depend_on_tiling(make_scene, make_bundle, tmp_path, size) -> None:
    scene = make_scene(height=size[0], width=size[1])
    bundle = make_bundle(TINY_UNET)  # receptive field 65 px, halo 72 px
    configs = [
        dict(tile_size=208, block_size=1, batch_size=3),     # smallest tiles, one per block
        dict(tile_size=400, block_size=5000, batch_size=4),  # one block for the whole scene
        dict(tile_size=1024, block_size=700, batch_size=1),  # tiles larger than blocks
        dict(tile_size=256, block_size=200, batch_size=3),   # 2x2 tiles a block: 3 + 1
    ]
    configs.append({})  # the defaults: the auto tile (1024 here) and batch (1)
    masks = [run(scene, bundle, tmp_path / f"m{i}.tif", **c) for i, c in enumerate(configs)]
    assert len(np.unique(masks[0])) >= 3  # a real, varied mask, not a constant
    for config, mask in zip(configs[1:], masks[1:], strict=True):
        assert np.array_equal(mask, masks[0]), f"{config}: {(mask != masks[0]).sum()} px differ"


@pytest.mark.parametrize(
    ("spec", "bundle_tile", "cfg", "tile", "batch"),
    [
        (TINY_UNET, 256, {}, 1024, 1),                            # halo 72: at least 1024
        (TINY_UNET, 1536, {}, 1536, 1),                           # never below the bundle's
        (TINY_UNET, 256, {"halo": 400}, 1600, 1),                 # at least 4 · halo
        (TINY_UNET, 256, {"tile_size": 512}, 512, 4),             # configured: kept, 1 Mpx batch
        (TINY_UNET, 256, {"tile_size": 512, "batch_size": 3}, 512, 3),
        (TINY_DEEPLAB, 256, {}, 256, 16),                         # whole-tile pooling: bundle's
    ],
)
def test_default_tile_and_batch_size(make_scene, make_bundle, tmp_path, spec, bundle_tile, cfg,
                                     tile, batch) -> None:
    from geoseg.pipeline import plan_prediction

    plan = plan_prediction(make_scene(), make_bundle(spec, tile_size=bundle_tile),
                           tmp_path / "m.tif", PredictConfig(**cfg))
    assert (plan.grid.lattice.tile_size, plan.job.batch_size) == (tile, batch)


@pytest.mark.parametrize(("size", "middle"), [
    pytest.param((301, 433), 200, id="301x433"),  # blocks of 128 (3x4), 256 (2x2), the scene
    pytest.param((777, 1001), 400, id="777x1001", marks=pytest.mark.slow),  # 128, 512, scene
])
def test_deeplab_mask_does_not_depend_on_block_size(make_scene, make_bundle, tmp_path, size,
                                                    middle) -> None:
    # DeepLabV3+ pools over the whole tile, so only the tile size is fixed (the bundle's).
    scene = make_scene(height=size[0], width=size[1])
    bundle = make_bundle(TINY_DEEPLAB, tile_size=256)
    masks = [run(scene, bundle, tmp_path / f"d{b}.tif", block_size=b, batch_size=bs)
             for b, bs in ((1, 2), (middle, 4), (5000, 3))]
    assert len(np.unique(masks[0])) >= 2
    assert all(np.array_equal(m, masks[0]) for m in masks[1:])


def test_blend_mask_does_not_depend_on_block_size(make_scene, make_bundle, tmp_path) -> None:
    scene, bundle = make_scene(height=301, width=433), make_bundle(TINY_UNET)
    masks = [run(scene, bundle, tmp_path / f"b{b}.tif", stitch="blend", block_size=b)
             for b in (1, 200, 5000)]
    assert all(np.array_equal(m, masks[0]) for m in masks[1:])


def test_output_grid_nodata_colours_and_cog(make_scene, make_bundle, tmp_path) -> None:
    from rio_cogeo.cogeo import cog_validate

    scene, bundle = make_scene(nodata_box=(0, 0, 60, 90)), make_bundle()
    out = tmp_path / "out" / "mask.tif"
    result = predict_scene(scene, bundle, out, PredictConfig(block_size=300, confidence=True,
                                                             probabilities=True))
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        assert dst.dtypes == ("uint8",) and dst.nodata == 255
        assert dst.colormap(1)[1] == (50, 170, 90, 255)
        assert dst.overviews(1), "internal overviews"
        assert dst.compression is not None
        classes = json.loads(dst.tags()[CLASSES_TAG])
        assert [c["name"] for c in classes] == [f"class{i}" for i in range(5)]
        mask = dst.read(1)
        src_valid = src.dataset_mask() > 0
    assert np.array_equal(mask == 255, ~src_valid)  # nodata in ↔ nodata out, nothing else
    assert mask[~(mask == 255)].max() < 5
    assert cog_validate(out)[0], cog_validate(out)
    assert sum(result.class_pixels.values()) + result.nodata_pixels == 777 * 1001
    with rasterio.open(result.outputs["confidence"]) as c, \
         rasterio.open(result.outputs["probabilities"]) as p:
        conf, probs = c.read(1), p.read()
        assert p.count == 5 and p.transform == c.transform
    valid = mask != 255
    assert (conf[~valid] == 255).all() and (conf[valid] >= 20).all() and (conf[valid] <= 100).all()
    total = probs[:, valid].astype(int).sum(axis=0)
    assert np.abs(total - 100).max() <= 3  # percentages, rounded per class
    # the class is the most probable one (ties after rounding to whole percent aside)
    assert (probs[:, valid].argmax(axis=0) == mask[valid]).mean() > 0.99
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "mask.confidence.tif", "mask.probabilities.tif", "mask.qml", "mask.tif",
        "mask.tif.aux.xml"]


def test_nodata_blocks_never_reach_the_model(make_scene, make_bundle, tmp_path) -> None:
    from geoseg.models.bundle import load_bundle
    from geoseg.pipeline import plan_prediction, run_prediction
    from geoseg.predict import cache_model

    # 256x512 px, left half nodata; 128 px blocks with one tile each: 8 blocks, 4 with data
    scene = make_scene(height=256, width=512, nodata_box=(0, 0, 256, 256))
    bundle = make_bundle(TINY_UNET)
    plan = plan_prediction(scene, bundle, tmp_path / "m.tif", PredictConfig(block_size=128,
                                                                            tile_size=272))
    assert len(plan.grid) == 8
    model = load_bundle(bundle).build()
    seen: list[int] = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    cache_model(plan.job.model, model)  # the process cache the block tasks use
    try:
        run_prediction(plan)
    finally:
        _CACHE.clear()
    assert sum(seen) == 4
    with rasterio.open(tmp_path / "m.tif") as src:
        mask = src.read(1)
    assert (mask[:, :256] == 255).all() and (mask[:, 256:] != 255).all()


def test_odd_sizes_and_every_edge_pixel(make_scene, make_bundle, tmp_path) -> None:
    for height, width in ((1, 1), (33, 97), (257, 129)):
        scene = make_scene(f"s{height}.tif", height=height, width=width, nodata_box=None)
        mask = run(scene, make_bundle(), tmp_path / f"m{height}.tif", block_size=64)
        assert mask.shape == (height, width) and (mask != 255).all()


def test_uint8_and_float32_scenes(make_scene, make_bundle, tmp_path) -> None:
    for dtype in ("uint8", "float32", "int16"):
        scene = make_scene(f"{dtype}.tif", dtype=dtype, height=64, width=64, nodata_box=None)
        bundle = make_bundle(dtype=dtype, name=f"{dtype}.safetensors")
        assert (run(scene, bundle, tmp_path / f"{dtype}_mask.tif") != 255).all()


def test_failure_leaves_no_file(make_scene, make_bundle, tmp_path) -> None:
    scene, bundle = make_scene(height=64, width=64), make_bundle()
    out = tmp_path / "mask.tif"
    # a failure inside the run: torch refuses an unknown device type (the config refuses it at
    # load, so the value is put past validation here)
    cfg = PredictConfig().model_copy(update={"device": "no-such-device"})
    with pytest.raises(RuntimeError):
        predict_scene(scene, bundle, out, cfg)
    assert list(tmp_path.glob("*mask*")) == []


DEVICES = ["cpu"] + [pytest.param("cuda", marks=pytest.mark.gpu)] * _cuda_available()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stitch", ["trim", "blend"])
def test_blocks_predicted_in_parallel_threads_are_the_same(make_scene, make_bundle, tmp_path,
                                                           device, stitch) -> None:
    """Tasks sharing a worker's model run in threads at once (``cluster.gpu_tasks`` on a GPU,
    each on its own CUDA stream with pinned batches): every block comes out as when the blocks
    run one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from geoseg.pipeline import plan_prediction
    from geoseg.predict import predict_block

    scene = make_scene(height=250, width=300, nodata_box=None)
    plan = plan_prediction(scene, make_bundle(TINY_UNET), tmp_path / "m.tif",
                           PredictConfig(device=device, block_size=128, tile_size=208,
                                         batch_size=2, stitch=stitch))
    blocks = list(plan.grid.blocks())
    alone = [predict_block(b, plan.job).classes for b in blocks]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda b: predict_block(b, plan.job).classes, blocks * 2))
    assert len(blocks) >= 6 and len(np.unique(np.concatenate([a.ravel() for a in alone]))) >= 3
    for n, out in enumerate(together):
        assert np.array_equal(out, alone[n % len(blocks)]), f"block {n % len(blocks)} differs"
