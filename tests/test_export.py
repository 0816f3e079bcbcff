"""``geoseg model export --onnx``: ONNX Runtime gives torch's classes at any size, the file
carries the bundle's metadata, and a refused or failed export leaves nothing behind."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.models.bundle import BandSpec, BundleMeta, ClassSpec, init_bundle, load_bundle
from geoseg.models.export import (
    INPUT_NAME,
    MIN_AGREEMENT,
    OUTPUT_NAME,
    compare_onnx,
    export_onnx,
)

from .conftest import TINY_DEEPLAB, TINY_UNET

#: conftest's DeepLabV3+ without the last encoder stage (dilated at stride 16 it holds half the
#: compute): half the time, the same image-pooling branch whose upsampling must follow the input
DEEPLAB = TINY_DEEPLAB | {"arch_kwargs": TINY_DEEPLAB["arch_kwargs"] | {"encoder_depth": 4}}

BANDS = (BandSpec(name="B04", mean=1200.0, std=450.0), BandSpec(name="B08", mean=2500.0,
                                                                 std=800.0),
         BandSpec(name="SCL", mean=4.5, std=2.0))
CLASSES = (ClassSpec(id=0, name="water", color=(31, 120, 180)),
           ClassSpec(id=1, name="trees", color=(51, 160, 44)),
           ClassSpec(id=2, name="[bold]built", color=(227, 26, 28)))


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_bundle(path: Path, spec: dict, seed: int = 3) -> Path:
    init_bundle(path, arch=spec["arch"], encoder=spec["encoder"], arch_kwargs=spec["arch_kwargs"],
                bands=BANDS, input_dtype="uint16", classes=CLASSES, tile_size=256,
                halo=spec["halo"], seed=seed)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """arch → (bundle, ONNX file, what the export printed): the U-Net exported by the
    command, the DeepLabV3+ by the library."""
    folder = tmp_path_factory.mktemp("export")
    unet = write_bundle(folder / "unet.safetensors", TINY_UNET)
    result = invoke("model", "export", unet, "--onnx", folder / "out" / "unet.onnx")
    assert result.exit_code == 0, result.output
    deeplab = write_bundle(folder / "deeplab.safetensors", DEEPLAB)
    done = export_onnx(deeplab, folder / "deeplab.onnx")
    assert done.agreement is not None and done.agreement.fraction >= MIN_AGREEMENT
    assert done.size_bytes == (folder / "deeplab.onnx").stat().st_size
    return {"unet": (unet, folder / "out" / "unet.onnx", result.output),
            "deeplabv3plus": (deeplab, done.path, "")}


def test_export_prints_file_size_and_agreement(exported) -> None:
    _, onnx_path, output = exported["unet"]
    text = " ".join(output.split())
    assert f"wrote {onnx_path}" in text
    size = float(re.search(r"([\d.]+) MB", text).group(1))  # type: ignore[union-attr]
    assert size == pytest.approx(onnx_path.stat().st_size / 1e6, abs=0.06)
    assert "H and W multiples of 8 px, output logits" in text  # the tiny U-Net: 3 stages
    agree = re.search(r"random 512x512 tile: same class on ([\d.]+) %", text)
    assert agree and float(agree.group(1)) >= 100 * MIN_AGREEMENT
    assert "max |logits difference|" in text
    assert sorted(p.name for p in onnx_path.parent.iterdir()) == ["unet.onnx"]


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_onnx_runtime_gives_torch_classes_at_two_sizes(exported, arch: str) -> None:
    bundle_path, onnx_path, _ = exported[arch]
    bundle = load_bundle(bundle_path)
    model = bundle.build()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == (INPUT_NAME, "tensor(float)",
                                               ["batch", 3, "height", "width"])
    assert (out.name, out.type, out.shape) == (OUTPUT_NAME, "tensor(float)",
                                               ["batch", 3, "height", "width"])
    rng = np.random.default_rng(7)
    for shape in [(2, 3, 256, 384), (1, 3, 512, 512)]:  # neither is the traced example's
        image = rng.standard_normal(shape, dtype=np.float32)
        check = compare_onnx(session, model, image)  # also: the logits' shape is torch's
        assert check.shape == shape
        assert check.fraction >= MIN_AGREEMENT, (shape, check)
        assert check.max_abs_diff < 1e-3, (shape, check)


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_metadata_round_trip(exported, arch: str) -> None:
    bundle_path, onnx_path, _ = exported[arch]
    bundle = load_bundle(bundle_path)
    meta = bundle.meta
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}

    assert BundleMeta.model_validate(props["geoseg.bundle"]) == meta
    assert props["geoseg.bundle_format"] == meta.format == "geoseg-bundle/1"
    assert props["geoseg.bundle_sha256"] == bundle.sha256
    assert props["geoseg.bands"] == ["B04", "B08", "SCL"]
    assert props["geoseg.mean"] == [1200.0, 2500.0, 4.5]
    assert props["geoseg.std"] == [450.0, 800.0, 2.0]
    assert props["geoseg.input_dtype"] == "uint16"
    assert props["geoseg.classes"] == [
        {"id": 0, "name": "water", "color": [31, 120, 180]},
        {"id": 1, "name": "trees", "color": [51, 160, 44]},
        {"id": 2, "name": "[bold]built", "color": [227, 26, 28]}]
    assert (props["geoseg.tile_size"], props["geoseg.halo"]) == (256, meta.halo)
    assert props["geoseg.size_divisor"] == bundle.align == {"unet": 8, "deeplabv3plus": 16}[arch]
    assert props["geoseg.input_size"] is None
    assert (props["geoseg.input"], props["geoseg.output"]) == (INPUT_NAME, OUTPUT_NAME)

    # what the QGIS plugin Deepness reads, and that its preprocessing (x / 255, then
    # standardization) gives the bundle's normalization
    assert props["model_type"] == "Segmentor"
    assert props["class_names"] == {"0": "water", "1": "trees", "2": "[bold]built"}
    assert props["tile_size"] == 256
    assert props["tiles_overlap"] == -(-200 * meta.halo // 256)
    x = np.array([0.0, 1234.0, 65535.0])
    for band, m, s in zip(meta.bands, props["standardization_mean"],
                          props["standardization_std"], strict=True):
        np.testing.assert_allclose((x / 255 - m) / s, (x - band.mean) / band.std, rtol=1e-12)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    result = invoke("model", "export", tmp_path / "missing.safetensors", "--onnx", out)
    assert result.exit_code == 1
    assert "exists already; pass --overwrite" in " ".join(result.output.split())
    assert out.read_bytes() == b"keep me"
    folder = invoke("model", "export", tmp_path / "missing.safetensors", "--onnx", tmp_path)
    assert folder.exit_code == 1 and "is a folder" in folder.output


def test_without_onnx_one_line_says_what_to_install(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    bundle = write_bundle(tmp_path / "unet.safetensors", TINY_UNET)
    result = invoke("model", "export", bundle, "--onnx", tmp_path / "model.onnx")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        'error: ONNX export needs onnxscript: pip install "geoseg[onnx]"']
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.safetensors"]


def test_failed_export_leaves_nothing_behind(tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    bundle = write_bundle(tmp_path / "unet.safetensors", TINY_UNET)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous export")
    # opset 7 has no Resize with a run-time size: torch refuses the U-Net's upsampling
    result = invoke("model", "export", bundle, "--onnx", out, "--opset", "7", "--overwrite")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "torch cannot export unet/resnet18 to ONNX" in text and "--opset" in text
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "unet.safetensors"]
    printed = capfd.readouterr()  # torch's C++ graph dump on failure stays out of the terminal
    assert "Torch IR graph" not in printed.out + printed.err


def test_deepness_export_has_a_fixed_size_and_gives_probabilities(tmp_path: Path) -> None:
    """Deepness takes its tile size from the input's shape and thresholds the output before
    its argmax: the --deepness file has H = W = the tile size and outputs probabilities."""
    bundle = write_bundle(tmp_path / "unet.safetensors", TINY_UNET)
    out = tmp_path / "qgis.onnx"
    result = invoke("model", "export", bundle, "--onnx", out, "--deepness")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "input 256x256 px, output probabilities" in text
    assert re.search(r"random 256x256 tile: same class on (100|99\.99)", text), text

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 256, 256]
    output = session.get_outputs()[0]
    assert (output.name, output.shape) == ("probabilities", ["batch", 3, 256, 256])
    image = np.random.default_rng(1).standard_normal((2, 3, 256, 256), dtype=np.float32)
    (probs,) = session.run(None, {INPUT_NAME: image})
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model = load_bundle(bundle).build()
    with torch.inference_mode():
        logits = model(torch.from_numpy(image)).numpy()
    assert (probs.argmax(axis=1) == logits.argmax(axis=1)).mean() >= MIN_AGREEMENT
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert (meta["tile_size"], meta["seg_thresh"], meta["model_type"]) == (256, 0.0, "Segmentor")
    assert meta["geoseg.input_size"] == [256, 256]
    assert meta["geoseg.output"] == "probabilities"
