"""The command line: bad input is one clear line, exit status 1, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner

from geoseg.cli import main

from .conftest import TINY_UNET


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def predict(scene, bundle, out, *extra):
    return invoke("predict", scene, "-m", bundle, "-o", out, "--scheduler", "synchronous", *extra)


@pytest.fixture
def good(make_scene, make_bundle):
    return make_scene(height=64, width=96), make_bundle(TINY_UNET)


def assert_failed(result, text: str, out: Path) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.output
    assert not any(p.name.startswith((out.name, f".{out.name}")) for p in out.parent.iterdir())


def test_predict_ok_then_exists(good, tmp_path: Path) -> None:
    scene, bundle = good
    out = tmp_path / "mask.tif"
    assert predict(scene, bundle, out).exit_code == 0
    with rasterio.open(out) as src:
        assert src.shape == (64, 96)
    before = out.stat().st_mtime_ns
    result = predict(scene, bundle, out)
    assert result.exit_code == 1 and "exists already; pass --overwrite" in result.output
    assert out.stat().st_mtime_ns == before
    assert predict(scene, bundle, out, "--overwrite").exit_code == 0


def test_not_a_raster(good, tmp_path: Path) -> None:
    text = tmp_path / "scene.txt"
    text.write_text("hello")
    out = tmp_path / "m.tif"
    assert_failed(predict(text, good[1], out), "not a readable raster", out)


def test_band_mismatch(make_scene, good, tmp_path: Path) -> None:
    scene = make_scene("rgb.tif", names=("red", "green", "blue"), height=32, width=32)
    out = tmp_path / "m.tif"
    assert_failed(predict(scene, good[1], out), "missing band(s) B02, B03, B04, B08", out)
    unnamed = make_scene("three.tif", names=None, count=3, height=32, width=32)
    assert_failed(predict(unnamed, good[1], out), "3 unnamed bands but the model needs 4", out)


def test_unsupported_and_mismatched_dtype(make_scene, good, tmp_path: Path) -> None:
    out = tmp_path / "m.tif"
    int32 = make_scene("i32.tif", dtype="int32", height=32, width=32)
    assert_failed(predict(int32, good[1], out), "int32 is not supported", out)
    u8 = make_scene("u8.tif", dtype="uint8", height=32, width=32)
    assert_failed(predict(u8, good[1], out), "normalization is for uint16", out)


def test_corrupt_bundle(good, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good[1].read_bytes()[:1000])
    out = tmp_path / "m.tif"
    assert_failed(predict(good[0], bad, out), "bad.safetensors", out)


def test_bad_option_values(good, tmp_path: Path) -> None:
    out = tmp_path / "m.tif"
    assert_failed(predict(good[0], good[1], out, "--batch-size", "0"), "predict.batch_size", out)


def test_model_init_and_info(make_scene, tmp_path: Path) -> None:
    scene = make_scene(height=64, width=64)
    out = tmp_path / "m.safetensors"
    result = invoke("model", "init", "--arch", "unet", "--encoder", "resnet18", "--bands",
                    "B02,B03,B04,B08", "--classes", "water,trees:#00aa00,crops", "--stats-from",
                    scene, "--encoder-depth", "3", "-o", out)
    assert result.exit_code == 0, result.output
    info = invoke("model", "info", out, "--json")
    assert '"name": "trees"' in info.output
    assert '"color": [\n        0,\n        170,' in info.output
    rf = invoke("model", "info", out, "--receptive-field")
    assert "receptive field radius 65 px" in rf.output, rf.output
    again = invoke("model", "init", "--bands", "B02", "--classes", "a", "--mean", "0",
                   "--std", "1", "-o", out)
    assert again.exit_code == 1 and "exists already" in again.output
