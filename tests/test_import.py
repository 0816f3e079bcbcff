"""``geoseg model import``: smp models trained elsewhere become bundles that give the same answer.

Every source kind is made here, offline, from seeded random-init smp models: state dicts
(.pth, .bin, .safetensors), a ``save_pretrained`` folder, Lightning checkpoints written by a
real ``lightning.Trainer`` (a custom LightningModule; TorchGeo's SemanticSegmentationTask).
Each import is checked three ways: the figure the command prints, the provenance it records
(and ``model info`` shows), and the mask geoseg predicts for a scene of one tile, which must be
the argmax of one whole-image forward pass of the source model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.config import PredictConfig
from geoseg.models.bundle import load_bundle, read_bundle_meta
from geoseg.normalize import normalize
from geoseg.pipeline import predict_scene

from .conftest import BANDS

#: A small U-Net (stride 8, 2.3 M weights: a ResNet-18 keeps all its 11 M at depth 3).
ENCODER = "mobilenet_v2"
TINY = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
ARCH = ["--arch", "unet", "--encoder", ENCODER, "--arch-kwargs", json.dumps(TINY)]
CLASSES = "water:#1f78b4,trees,built"
STATS = ["--mean", "1000,1100,1200,1300", "--std", "400,410,420,430"]
SCENE = (96, 128)  # rows, cols: one tile, a multiple of every model's stride


def invoke(*args: Any):
    return CliRunner().invoke(main, [str(a) for a in args])


def unet(in_channels: int = 4, classes: int = 3, seed: int = 1, **kwargs: Any) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = smp.Unet(ENCODER, encoder_weights=None, in_channels=in_channels, classes=classes,
                     **(kwargs or TINY))
    for m in model.modules():  # batch-norm statistics that a fresh model does not have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.05, 0.05)
            m.running_var.uniform_(0.8, 1.25)
    return model.eval()


def import_(source: Path, out: Path, *extra: Any):
    return invoke("model", "import", source, "--bands", ",".join(BANDS), "--classes", CLASSES,
                  *STATS, "-o", out, *extra)


def whole_image_mask(model: torch.nn.Module, scene: Path, bundle: Path) -> np.ndarray:
    """argmax of one forward pass of ``model`` over the whole scene, normalized as geoseg
    normalizes (the bundle's statistics, float32)."""
    with rasterio.open(scene) as src:
        raw = src.read()
    x = normalize(raw, np.ones(raw.shape[1:], bool), read_bundle_meta(bundle).bands)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)[None])
    return logits[0].argmax(0).numpy().astype(np.uint8)


def predicted(scene: Path, bundle: Path, out: Path) -> np.ndarray:
    predict_scene(scene, bundle, out, PredictConfig(), overwrite=True)
    with rasterio.open(out) as src:
        return src.read(1)


def check_import(result, source_model: torch.nn.Module, bundle: Path, weights: Path, kind: str,
                 prefix: str, scene: Path) -> None:
    """The import succeeded, printed its figure, recorded and shows its provenance, and the
    bundle maps the scene exactly as the source model does."""
    assert result.exit_code == 0, result.output
    assert "logits match the source: max |Δ| " in result.output
    assert " on a 2×4×64×64 batch" in result.output
    meta = read_bundle_meta(bundle)
    source = meta.training["source"]
    assert meta.training["init"] == "import"
    assert source["file"].endswith(weights.name) and source["kind"] == kind
    assert source["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert source["prefix"] == prefix
    assert 0 <= meta.training["logits_max_abs_diff"] <= 1e-5
    info = invoke("model", "info", bundle)
    assert f"imported from {source['file']} ({kind}" in info.output, info.output
    assert f"sha256 {source['sha256'][:16]}" in info.output
    mask = predicted(scene, bundle, bundle.with_suffix(".tif"))
    expected = whole_image_mask(source_model, scene, bundle)
    assert len(np.unique(expected)) >= 2  # a real mask, not a constant
    assert np.array_equal(mask, expected), f"{(mask != expected).sum()} px differ"


@pytest.fixture
def scene(make_scene) -> Path:
    return make_scene(height=SCENE[0], width=SCENE[1], nodata=None)


@pytest.mark.parametrize("form", [".pth", ".bin", ".safetensors", ".pt"])
def test_state_dict_files(form: str, scene: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = unet()
    weights = tmp_path / f"unet{form}"
    state = model.state_dict()
    if form == ".pt":  # float16 weights: the source model is the float32 one holding them
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state)
    if form == ".safetensors":
        save_file(state, weights)
    else:
        torch.save(state, weights)
    out = tmp_path / "b.safetensors"
    result = import_(weights, out, *ARCH)
    check_import(result, model, out, weights, "state_dict", "", scene)
    assert read_bundle_meta(out).arch_kwargs == TINY


def test_save_pretrained_folder(scene: Path, tmp_path: Path) -> None:
    model = unet(seed=4)
    folder = tmp_path / "hub"
    model.save_pretrained(folder)
    out = tmp_path / "b.safetensors"
    check_import(import_(folder, out), model, out, folder / "model.safetensors", "hf_folder",
                 "", scene)
    meta = read_bundle_meta(out)
    assert (meta.arch, meta.encoder, meta.arch_kwargs) == ("unet", ENCODER, TINY)
    # the folder says what it is: options that contradict it are refused
    clash = import_(folder, tmp_path / "c.safetensors", "--encoder", "resnet34")
    assert clash.exit_code == 1 and f"config.json says '{ENCODER}'" in clash.output
    before = (folder / "model.safetensors").read_bytes()
    onto = import_(folder, folder / "model.safetensors", "--overwrite")
    assert onto.exit_code == 1 and "is the source's weights file" in onto.output
    assert (folder / "model.safetensors").read_bytes() == before


def test_custom_lightning_module_prefix_detected(scene: Path, tmp_path: Path) -> None:
    import lightning

    class Segmenter(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.segmenter = unet(seed=5)
            self.loss = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            return self.loss(self.segmenter(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    task = Segmenter()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.randn(2, 4, 32, 32), torch.randint(0, 3, (2, 32, 32))), batch_size=2)
    trainer = lightning.Trainer(max_steps=1, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(task, data)
    ckpt = tmp_path / "custom.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "b.safetensors"
    result = import_(ckpt, out, *ARCH)
    check_import(result, task.segmenter.eval(), out, ckpt, "lightning", "segmenter.", scene)
    # a wrong prefix, given: no weights under it
    wrong = import_(ckpt, tmp_path / "c.safetensors", *ARCH, "--prefix", "model.")
    assert wrong.exit_code == 1 and "no weights under the prefix 'model.'" in wrong.output


@pytest.mark.slow
def test_torchgeo_checkpoint(scene: Path, tmp_path: Path) -> None:
    import lightning
    from torchgeo.trainers import SemanticSegmentationTask

    torch.manual_seed(3)
    task = SemanticSegmentationTask(model="unet", backbone="resnet18", weights=None,
                                    in_channels=4, num_classes=3)
    class Chips(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"image": torch.randn(4, 64, 64), "mask": torch.randint(0, 3, (64, 64))}

    chips = torch.utils.data.DataLoader(Chips(), batch_size=2)
    trainer = lightning.Trainer(max_steps=1, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0,
                                limit_val_batches=1)
    trainer.fit(task, chips, chips)  # the task's plateau scheduler needs a val_loss
    ckpt = tmp_path / "torchgeo.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "b.safetensors"
    result = import_(ckpt, out)  # architecture, channels, classes from hyper_parameters
    check_import(result, task.model.eval(), out, ckpt, "lightning", "model.", scene)
    meta = read_bundle_meta(out)
    assert (meta.arch, meta.encoder, meta.arch_kwargs) == ("unet", "resnet18", {})
    assert "hyper_parameters" in meta.training["source"]["architecture_from"]
    five = invoke("model", "import", ckpt, "--bands", ",".join(BANDS), "--classes",
                  "a,b,c,d,e", *STATS, "-o", tmp_path / "c.safetensors")
    assert five.exit_code == 1
    assert "the weights give 3 classes (" in five.output and "--classes names 5" in five.output


def assert_refused(result, text: str, out: Path) -> None:
    """Exit status 1, one line naming the problem, and no file (not even a temporary one)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert text in " ".join(result.output.split()), result.output
    assert not [p.name for p in out.parent.iterdir() if out.name in p.name]  # temporaries too


def test_channel_and_class_mismatches_name_the_layer(tmp_path: Path) -> None:
    three = tmp_path / "rgb.pth"
    torch.save(unet(in_channels=3).state_dict(), three)
    out = tmp_path / "b.safetensors"
    assert_refused(import_(three, out, *ARCH),
                   "the weights take 3 input channels; --bands names 4 (encoder.features.0.0"
                   ".weight is (32, 3, 3, 3), (32, 4, 3, 3) for 4 bands)", out)
    seven = tmp_path / "seven.pth"
    torch.save(unet(classes=7).state_dict(), seven)
    result = invoke("model", "import", seven, "--bands", ",".join(BANDS), "--classes",
                    "a,b,c,d,e", *STATS, "-o", out, *ARCH)
    assert_refused(result, "the weights give 7 classes; --classes names 5", out)
    one = invoke("model", "import", seven, "--bands", ",".join(BANDS), "--classes", "water",
                 *STATS, "-o", out, *ARCH)  # argmax over one logit: class 0 everywhere
    assert_refused(one, "--classes names one class", out)
    # another architecture: the first layer of another shape, and how many keys fit
    assert_refused(import_(seven, out, "--arch", "unet", "--encoder", ENCODER),
                   "layer decoder.blocks.0.conv1.0.weight is (32, 56, 3, 3) in the weights "
                   f"but (256, 1376, 3, 3) in a unet/{ENCODER}", out)
    assert_refused(import_(seven, out), "a state dict does not say which model it is for; "
                   "give --arch and --encoder", out)


def test_unknown_and_missing_keys_are_listed(tmp_path: Path) -> None:
    state = unet().state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["encoder.features.0.0.weight"]
    weights = tmp_path / "odd.pth"
    torch.save(state, weights)
    out = tmp_path / "b.safetensors"
    assert_refused(import_(weights, out, *ARCH),
                   "1 missing ('encoder.features.0.0.weight'), 1 unexpected ('extra.weight')", out)


class _Payload:
    """Unpickled, this would create ``marker``; pickling only records the call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("form", [".pth", ".ckpt"])
def test_pickles_beyond_tensors_are_refused_unread(form: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{form}"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, evil)
    out = tmp_path / "b.safetensors"
    assert_refused(import_(evil, out, "--arch", "unet", "--encoder", ENCODER),
                   "refused, not read", out)
    assert not marker.exists()
    whole = tmp_path / "whole.pt"
    torch.save(unet(), whole)  # a whole pickled model
    result = import_(whole, out, "--arch", "unet", "--encoder", ENCODER)
    assert_refused(result, "it holds segmentation_models_pytorch", out)
    assert "torch.save(model.state_dict(), 'model.pth')" in result.output
    assert not marker.exists()


def test_scale_is_folded_into_the_statistics(scene: Path, tmp_path: Path) -> None:
    model = unet(seed=3)
    weights = tmp_path / "reflectance.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "b.safetensors"
    m, s = [0.10, 0.11, 0.12, 0.13], [0.04, 0.041, 0.042, 0.043]
    result = invoke("model", "import", weights, "--bands", ",".join(BANDS), "--classes", CLASSES,
                    "--mean", ",".join(map(str, m)), "--std", ",".join(map(str, s)),
                    "--scale", "0.0001", *ARCH, "-o", out)
    assert result.exit_code == 0, result.output
    bands = read_bundle_meta(out).bands
    assert [b.mean for b in bands] == pytest.approx([v * 1e4 for v in m], rel=1e-12)
    assert [b.std for b in bands] == pytest.approx([v * 1e4 for v in s], rel=1e-12)
    # the model sees (x · scale − m) / s, as in the notebook it was trained in
    with rasterio.open(scene) as src:
        raw = src.read().astype(np.float32)
    x = (raw * np.float32(1e-4) - np.float32(m)[:, None, None]) / np.float32(s)[:, None, None]
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)[None])[0].argmax(0).numpy()
    mask = predicted(scene, out, tmp_path / "m.tif")
    assert (mask == expected).mean() >= 0.999  # float32 rounding differs, ties may flip
    # --scale alone: the model saw x · scale (mean 0, std 1 in those units)
    alone = invoke("model", "import", weights, "--bands", ",".join(BANDS), "--classes", CLASSES,
                   "--scale", "0.0001", *ARCH, "-o", tmp_path / "c.safetensors")
    assert alone.exit_code == 0, alone.output
    bands = read_bundle_meta(tmp_path / "c.safetensors").bands
    assert all(b.mean == 0 and b.std == pytest.approx(1e4) for b in bands)
    both = import_(weights, tmp_path / "d.safetensors", "--stats-from", scene, "--scale", "2")
    assert both.exit_code == 1 and "leave --scale out" in both.output


def test_a_failed_check_writes_nothing(monkeypatch, tmp_path: Path) -> None:
    from geoseg.models import importer

    weights = tmp_path / "unet.pth"
    torch.save(unet().state_dict(), weights)
    out = tmp_path / "b.safetensors"
    monkeypatch.setattr(importer, "TOLERANCE", -1.0)  # no difference is small enough
    assert_refused(import_(weights, out, *ARCH),
                   "not imported: the bundle's logits differ from the source's", out)


def test_hugging_face_style_folder_and_aux_head(tmp_path: Path) -> None:
    # a Hugging Face-style folder: its own config keys, weights in pytorch_model.bin
    model = unet(seed=1)
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    config = {"architecture": "Unet", "encoder": ENCODER, "in_channels": 4, "num_classes": 3,
              **TINY, "transformers_version": "4.0", "[bold]id\x1b[31m": {"water": 0}}
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "b.safetensors"
    result = import_(folder, out)
    assert result.exit_code == 0, result.output
    # keys smp does not take are listed, literally (no markup, no escape sequences)
    assert ("not smp arguments, ignored: [bold]id\\x1b[31m, transformers_version"
            in result.output), result.output
    meta = read_bundle_meta(out)
    assert meta.training["source"]["file"] == "hf/pytorch_model.bin"
    assert meta.arch_kwargs == TINY
    # smp's save_pretrained with an image-level classification head: the head stays behind
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    aux = smp.Unet(ENCODER, encoder_weights=None, in_channels=4, classes=3,
                   aux_params={"classes": 2}, **TINY).eval()
    aux.save_pretrained(tmp_path / "aux")
    result = import_(tmp_path / "aux", tmp_path / "c.safetensors")
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "c.safetensors")
    assert not any(k.startswith("classification_head.") for k in bundle.state_dict)
    assert "aux_params" not in bundle.meta.arch_kwargs
    x = torch.randn(1, 4, 64, 64)
    with torch.inference_mode():
        assert (bundle.build()(x) - aux(x)[0]).abs().max() <= 1e-5
