"""Fine-tuning: ``geoseg train --init BUNDLE`` and ``--encoder-weights FILE`` (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.errors import BundleError, ConfigError
from geoseg.models.bundle import load_bundle
from geoseg.models.registry import build_model
from geoseg.train.pretrained import SENTINEL2_BANDS, band_key, load_encoder_weights
from tests.test_train import class_map, write_labels, write_scene

BANDS = ["B02", "B03", "B04", "B08"]
SMALL = ["--encoder-depth", "3", "--chip-size", "64", "--tile-size", "128", "--halo", "32",
         "--threads", "1", "--steps", "2", "--steps-per-epoch", "1"]


def torchvision_resnet18(path: Path, seed: int = 0, channels: int = 3) -> dict:
    """A torchvision ``resnet18(weights=None)`` state dict, seeded, saved with torch.save;
    ``channels`` other than 3 widens conv1 (as TorchGeo's 13-band Sentinel-2 weights)."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    if channels != 3:
        state["conv1.weight"] = torch.randn(64, channels, 7, 7)
    torch.save(state, path)
    return state


def test_band_names_match_in_either_spelling() -> None:
    assert band_key("B1") == band_key("b01") == "B01"
    assert band_key("B8a") == "B8A" and band_key("B08") == "B08" and band_key("nir") == "NIR"
    assert len(SENTINEL2_BANDS) == 13 and SENTINEL2_BANDS[8] == "B8A"


def test_encoder_weights_keep_the_bundle_bands_channels(tmp_path: Path) -> None:
    # a 13-channel conv1 in TorchGeo's Sentinel-2 order: B02,B03,B04,B08 are channels 1,2,3,7
    source = torchvision_resnet18(tmp_path / "s2.pth", channels=13)
    model = build_model("unet", "resnet18", 4, 3, {"encoder_depth": 3,
                                                    "decoder_channels": [32, 16, 8]})
    report = load_encoder_weights(model, tmp_path / "s2.pth", BANDS)
    conv1 = model.encoder.state_dict()["conv1.weight"]
    assert torch.equal(conv1, source["conv1.weight"][:, [1, 2, 3, 7]])
    assert report.channels == {"B02": "B02", "B03": "B03", "B04": "B04", "B08": "B08"}
    # every encoder tensor (conv1, bn1, layer1..layer4, counters) came from the file; fc did not
    assert len(report.matched) == 120 and report.missing == () and not report.mismatched
    assert report.unexpected == ("fc.bias", "fc.weight")
    assert torch.equal(model.encoder.state_dict()["layer1.0.conv1.weight"],
                       source["layer1.0.conv1.weight"])
    # the same channels named in another order and spelling with --weights-bands
    order = ["B8", "B4", "B3", "B2", "B1", "B5", "B6", "B7", "B8a", "B9", "B10", "B11", "B12"]
    report = load_encoder_weights(model, tmp_path / "s2.pth", BANDS, order)
    conv1 = model.encoder.state_dict()["conv1.weight"]
    assert torch.equal(conv1, source["conv1.weight"][:, [3, 2, 1, 0]])
    # RGB weights: named bands copied, the band the file lacks gets the channels' mean
    rgb = torchvision_resnet18(tmp_path / "rgb.pth", seed=1)
    report = load_encoder_weights(model, tmp_path / "rgb.pth", BANDS, ["B04", "B03", "B02"])
    conv1 = model.encoder.state_dict()["conv1.weight"]
    assert torch.equal(conv1[:, :3], rgb["conv1.weight"][:, [2, 1, 0]])
    assert torch.allclose(conv1[:, 3], rgb["conv1.weight"].mean(dim=1))
    assert report.channels["B08"] is None and "B08←(mean" in report.summary()
    with pytest.raises(ConfigError, match="takes 3 input channels and the model 4"):
        load_encoder_weights(model, tmp_path / "rgb.pth", BANDS)
    with pytest.raises(ConfigError, match="none of the model's bands"):
        load_encoder_weights(model, tmp_path / "rgb.pth", BANDS, ["R", "G", "B"])
    # nothing matched: refused
    torch.save({"backbone.whatever": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(BundleError, match="none of its 1 tensors fits"):
        load_encoder_weights(model, tmp_path / "other.pth", BANDS)


def test_train_cli_encoder_weights_and_init_report(tmp_path: Path) -> None:
    truth = class_map(192, 192, seed=7)
    scene = write_scene(tmp_path / "scene.tif", truth)
    labels = write_labels(tmp_path / "labels.tif", truth)
    torchvision_resnet18(tmp_path / "s2.pth", channels=13)
    first = tmp_path / "first.safetensors"
    args = ["train", "-s", str(scene), "-l", str(labels), *SMALL]
    result = CliRunner().invoke(main, [*args, "-o", str(first), "--classes", "water,trees,bare",
                                       "--encoder-weights", str(tmp_path / "s2.pth")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--encoder-weights s2.pth: 120 tensors matched, 0 missing, 2 unexpected" in text
    assert "B02←B02, B03←B03, B04←B04, B08←B08" in text
    assert "\\n" not in result.output  # two console lines, not an escaped newline
    record = load_bundle(first).meta.training["encoder_weights"]
    assert record["matched"] == 120 and record["unexpected"] == ["fc.bias", "fc.weight"]
    # --init with other classes: the head is reset, the rest kept, provenance recorded
    second = tmp_path / "second.safetensors"
    result = CliRunner().invoke(main, [*args, "-o", str(second), "--init", str(first),
                                       "--classes", "water,trees,bare,snow"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    kept = len(load_bundle(first).state_dict) - 2
    assert f"--init first.safetensors: kept {kept} tensors" in text
    assert ("reset the segmentation head for the new classes: 2 tensors (580 parameters) in "
            "segmentation_head.0 (Conv2d 16→4)") in text  # 4 x 16 x 3 x 3 + 4
    meta = load_bundle(second).meta
    assert [c.name for c in meta.classes] == ["water", "trees", "bare", "snow"]
    assert meta.bands == load_bundle(first).meta.bands  # normalization kept
    init = meta.training["init"]
    assert init["bundle"] == "first.safetensors" and init["sha256"] == load_bundle(first).sha256
    assert init["reset"] == ["segmentation_head.0.bias", "segmentation_head.0.weight"]
    # same classes: nothing reset
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "third.safetensors"),
                                       "--init", str(first)])
    assert result.exit_code == 0 and "nothing reset" in result.output
    # bad combinations and files: one line, exit 1
    both = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "x.safetensors"), "--init",
                                     str(first), "--resume", str(first)])
    assert both.exit_code == 1 and "not both" in both.output
    pickled = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    refused = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "y.safetensors"),
                                        "--classes", "a,b,c", "--encoder-weights", str(pickled)])
    assert refused.exit_code == 1 and "refused, not read" in refused.output
    info = json.loads(CliRunner().invoke(main, ["model", "info", str(second), "--json"]).output)
    assert info["training"]["init"]["reset"]


# --- fine-tuning the demo model on the Sentinel-2 sample (issue 17) ---------------------------

DEMO = Path(__file__).resolve().parents[1] / "models" / "s2-demo-landcover.safetensors"
#: Rule classes (geoseg.rules.RULE_CLASSES order) → water 0, vegetation 1, other 2. Wetland
#: (salt marsh, NDVI < 0.4 in this winter scene) counts as other.
MERGE = {"water": 0, "wetland": 2, "trees": 1, "crops/grass": 1, "bare soil": 2, "sand": 2,
         "built": 2}
#: Rows 1536-1920, columns 0-768 of the sample: inside the rows the demo model never trained
#: on (it trained on rows 0-1408), with all three classes (water 39 %, vegetation 29 %).
CROP = (1536, 0, 384, 768)
FINETUNE = dict(chip_size=128, batch_size=8, steps=120, steps_per_epoch=10, patience=12,
                lr=1e-3, seed=0, threads=1)


def s2_crop_with_merged_rule_labels(folder: Path) -> tuple[Path, Path]:
    """The sample's 10 m bands cropped to :data:`CROP` as one GeoTIFF, and its rule labels
    merged into water/vegetation/other."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    from geoseg.labels import IGNORE
    from geoseg.rules import RULE_BANDS, RULE_CLASSES, read_reflectance, rule_labels
    from geoseg.sample import S2_10M_BANDS, sentinel2_band_paths

    row, col, height, width = CROP
    paths = sentinel2_band_paths(RULE_BANDS)
    refl, valid, _ = read_reflectance(paths)
    rules = rule_labels(refl, valid)[row:row + height, col:col + width]
    del refl
    lut = np.full(256, IGNORE, np.uint8)
    for k, (name, _) in enumerate(RULE_CLASSES):
        lut[k] = MERGE[name]
    window = RioWindow(col, row, width, height)  # type: ignore[call-arg]
    with rasterio.open(paths["B02"]) as src:
        profile = dict(driver="GTiff", width=width, height=height, crs=src.crs,
                       transform=src.window_transform(window))
    bands = []
    for name in S2_10M_BANDS:
        with rasterio.open(paths[name]) as src:
            bands.append(src.read(1, window=window))
    scene, labels = folder / "s2_crop.tif", folder / "s2_crop_3class.tif"
    with rasterio.open(scene, "w", count=4, dtype="uint16", nodata=0, **profile) as dst:
        dst.write(np.stack(bands))
        for i, name in enumerate(S2_10M_BANDS, start=1):
            dst.set_band_description(i, name)
    with rasterio.open(labels, "w", count=1, dtype="uint8", nodata=IGNORE, **profile) as dst:
        dst.write(lut[rules], 1)
    return scene, labels


@pytest.mark.slow
def test_finetuning_the_demo_model_beats_training_from_scratch(tmp_path: Path) -> None:
    """Same seed, data, split and budget; the fine-tuned run (new 3-class head on the demo
    model) reaches the from-scratch run's best validation mIoU in at most half the epochs the
    scratch run needed for it."""
    from geoseg.models.bundle import ClassSpec
    from geoseg.train import TrainConfig, train_model

    scene, labels = s2_crop_with_merged_rule_labels(tmp_path)
    classes = tuple(ClassSpec(id=i, name=n, color=c) for i, (n, c) in enumerate(
        (("water", (31, 120, 180)), ("vegetation", (51, 160, 44)), ("other", (222, 184, 135)))))
    demo = load_bundle(DEMO).meta
    notes: list[str] = []
    tuned = train_model([scene], [labels], tmp_path / "tuned.safetensors",
                        TrainConfig(classes=classes, **FINETUNE), init=DEMO,
                        on_setup=notes.append)
    scratch = train_model([scene], [labels], tmp_path / "scratch.safetensors",
                          TrainConfig(classes=classes, arch=demo.arch, encoder=demo.encoder,
                                      arch_kwargs=demo.arch_kwargs, tile_size=demo.tile_size,
                                      halo=demo.halo, **FINETUNE))
    curves = {name: [round(h.val_miou, 4) for h in run.history if h.val_miou is not None]
              for name, run in (("init", tuned), ("scratch", scratch))}
    print(json.dumps({"curves": curves, "val_chips": scratch.val_chips,
                      "val_block": scratch.val_block, "init_note": notes[0]}))
    assert "reset the segmentation head" in notes[0]
    assert tuned.val_chips == scratch.val_chips > 0  # the same split
    assert len(curves["init"]) == len(curves["scratch"]) == 12
    best, best_epoch = scratch.best_val_miou, scratch.best_epoch
    assert best is not None
    reached = next((e for e, v in enumerate(curves["init"], start=1) if v >= best), None)
    assert reached is not None and reached <= best_epoch / 2, curves
