"""Input encodings (physical = DN × scale + offset): recorded in the bundle, converted on read.

The issue's test: the same reflectances written once with offset 0 and once with offset
−1000 DN (Sentinel-2 L2A since processing baseline 04.00) give the same mask, to the bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.config import PredictConfig
from geoseg.errors import SceneError
from geoseg.models.bundle import (
    BandSpec,
    ClassSpec,
    InputEncoding,
    init_bundle,
    load_bundle,
    read_bundle_meta,
)
from geoseg.models.header import read_header
from geoseg.normalize import band_conversions, normalize
from geoseg.pipeline import plan_prediction, predict_scene
from geoseg.scene import open_band_files, open_scene, read_window
from geoseg.tiling import Window

from .conftest import BANDS, TINY_UNET, coherent_field, write_raster

L2A = InputEncoding(scale=1e-4, offset=0.0)  # reflectance = DN / 10000


def reflectance(seed: int = 3, shape: tuple[int, int] = (160, 224)) -> np.ndarray:
    """``(4, H, W)`` smooth reflectances around 0.12 (0.02-0.22)."""
    return 0.12 + 0.05 * coherent_field(*shape, seed=seed)


def write_scene(path: Path, dn: np.ndarray, encoding: tuple[float, float] | None) -> Path:
    """A 4-band uint16 GeoTIFF of ``dn``, declaring ``encoding`` (scale, offset) per band."""
    write_raster(path, dn, names=BANDS[: len(dn)], nodata=0)
    if encoding is not None:
        with rasterio.open(path, "r+") as dst:
            dst.scales = (encoding[0],) * dst.count
            dst.offsets = (encoding[1],) * dst.count
    return path


def make_bundle(path: Path, encoding: InputEncoding | None, seed: int = 1) -> Path:
    """A tiny U-Net (same weights for the same seed) whose bands record ``encoding``.

    Statistics in the bundle's DN: mean 1200, std 500 (exact in float32, as are the
    scenes' DN, so the converted and unconverted paths round the same way).
    """
    init_bundle(path, arch="unet", encoder="resnet18", arch_kwargs=TINY_UNET["arch_kwargs"],
                bands=tuple(BandSpec(name=b, mean=1200.0, std=500.0, encoding=encoding)
                            for b in BANDS),
                input_dtype="uint16",
                classes=tuple(ClassSpec(id=i, name=f"c{i}", color=(i, i, i)) for i in range(4)),
                tile_size=128, halo=TINY_UNET["halo"], seed=seed)
    return path


def mask_of(scene: Path, bundle: Path, out: Path) -> np.ndarray:
    predict_scene(scene, bundle, out, PredictConfig(device="cpu"), overwrite=True)
    with rasterio.open(out) as src:
        return src.read(1)


def test_offset_1000_dn_gives_the_same_mask(tmp_path: Path) -> None:
    refl = reflectance()
    dn = np.round(refl * 10000).astype(np.uint16)
    old = write_scene(tmp_path / "baseline-0400-before.tif", dn, (1e-4, 0.0))
    new = write_scene(tmp_path / "baseline-0400-after.tif", dn + np.uint16(1000), (1e-4, -0.1))
    with rasterio.open(old) as a, rasterio.open(new) as b:  # what the files hold differs
        assert b.offsets == (-0.1,) * 4 and a.offsets == (0.0,) * 4
        assert np.all(b.read().astype(np.int32) - a.read() == 1000)
    bundle = make_bundle(tmp_path / "l2a.safetensors", L2A)

    mask_old = mask_of(old, bundle, tmp_path / "old.tif")
    mask_new = mask_of(new, bundle, tmp_path / "new.tif")
    assert np.array_equal(mask_old, mask_new)
    assert len(np.unique(mask_old)) > 1  # a mask that says something

    # without the conversion the model would see values 1000 DN (2 std) off: another mask
    raw = write_scene(tmp_path / "after-undeclared.tif", dn + np.uint16(1000), None)
    plain = make_bundle(tmp_path / "plain.safetensors", None)
    assert not np.array_equal(mask_of(raw, plain, tmp_path / "raw.tif"), mask_old)


def test_plan_records_the_conversion(tmp_path: Path) -> None:
    dn = np.round(reflectance() * 10000).astype(np.uint16) + np.uint16(1000)
    new = write_scene(tmp_path / "after.tif", dn, (1e-4, -0.1))
    bundle = make_bundle(tmp_path / "l2a.safetensors", L2A)
    plan = plan_prediction(new, bundle, tmp_path / "m.tif", PredictConfig(device="cpu"))
    conv = {"from": {"scale": 1e-4, "offset": -0.1}, "to": {"scale": 1e-4, "offset": 0.0},
            "gain": 1.0, "bias": -1000.0}
    assert plan.job.converted == {b: conv for b in BANDS}
    same = write_scene(tmp_path / "before.tif", dn - np.uint16(1000), (1e-4, 0.0))
    assert plan_prediction(same, bundle, tmp_path / "m2.tif",
                           PredictConfig(device="cpu")).job.converted == {}


def test_conversion_happens_after_the_cast_and_keeps_nodata(tmp_path: Path) -> None:
    """uint16 DN below the offset turn negative (no wrap to 65xxx); nodata (0) stays nodata."""
    dn = np.full((4, 8, 8), 500, dtype=np.uint16)  # 500 DN with offset -1000: reflectance -0.05
    dn[:, 0, 0] = 0
    path = write_scene(tmp_path / "dark.tif", dn, (1e-4, -0.1))
    bands = open_scene(path).bands
    specs = [BandSpec(name=b, mean=0.0, std=1.0, encoding=L2A) for b in BANDS]
    conversions = band_conversions(bands, specs)
    raw, valid = read_window(bands, Window(0, 0, 8, 8), 8, 8)
    assert raw.dtype == np.uint16 and not valid[0, 0] and valid[0, 1]
    x = normalize(raw, valid, specs, conversions)
    assert x[0, 0, 1] == -500.0 and x[0, 0, 0] == 0.0  # 500 − 1000 DN, not 65036


def test_band_files_carry_their_encoding(tmp_path: Path) -> None:
    dn = np.round(reflectance(shape=(32, 48)) * 10000).astype(np.uint16)
    files = {}
    for k, b in enumerate(BANDS):
        files[b] = write_scene(tmp_path / f"T_{b}.tif", dn[k : k + 1] + np.uint16(1000),
                               (1e-4, -0.1))
    scene = open_band_files("T", files)
    assert {band.encoding for band in scene.bands} == {(1e-4, -0.1)}


def test_old_bundle_on_an_undeclared_scene_is_unchanged(tmp_path: Path) -> None:
    """A bundle without encodings keeps the header it had, and predicts the very mask it did.

    The digest is that of the mask geoseg gave at b01096b (before encodings existed) for this
    scene and bundle: same scene, same seed, same settings, on the CPU with this torch.
    """
    dn = np.round(reflectance() * 10000).astype(np.uint16)
    scene = write_scene(tmp_path / "a.tif", dn, None)
    with rasterio.open(scene) as src:
        assert (src.scales, src.offsets) == ((1.0,) * 4, (0.0,) * 4)
    assert all(b.encoding is None for b in open_scene(scene).bands)
    bundle = make_bundle(tmp_path / "m.safetensors", None)
    header = json.loads(read_header(bundle).metadata["geoseg.bundle"])
    assert all(set(b) == {"name", "mean", "std"} for b in header["bands"])
    mask = mask_of(scene, bundle, tmp_path / "mask.tif")
    assert np.bincount(mask.ravel(), minlength=4).tolist() == [9044, 563, 656, 25577]
    assert hashlib.sha256(mask.tobytes()).hexdigest() == (
        "8bea7256136982597ec8239b300c1e91f95eef7dbf62782e5d9da02e45f8eac5")


def test_normalization_is_bitwise_unchanged_without_a_conversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(1, 30000, size=(4, 16, 16)).astype(np.uint16)
    valid = rng.random((16, 16)) > 0.1
    specs = [BandSpec(name=b, mean=1234.5678 + k, std=456.789 * (k + 1))
             for k, b in enumerate(BANDS)]
    before = (raw.astype(np.float32) - np.array([s.mean for s in specs], np.float32)[:, None,
              None]) * np.array([1.0 / s.std for s in specs], np.float32)[:, None, None]
    before[:, ~valid] = 0
    path = write_scene(tmp_path / "s.tif", raw, None)
    conversions = band_conversions(open_scene(path).bands, specs)
    assert not any(c.converts for c in conversions)
    assert normalize(raw, valid, specs).tobytes() == before.tobytes()
    assert normalize(raw, valid, specs, conversions).tobytes() == before.tobytes()


def test_undeclared_bundle_refuses_a_declared_scene(tmp_path: Path) -> None:
    dn = np.round(reflectance() * 10000).astype(np.uint16) + np.uint16(1000)
    scene = write_scene(tmp_path / "after.tif", dn, (1e-4, -0.1))
    bundle = make_bundle(tmp_path / "plain.safetensors", None)
    with pytest.raises(SceneError) as err:
        plan_prediction(scene, bundle, tmp_path / "m.tif", PredictConfig(device="cpu"))
    msg = str(err.value)
    assert str(scene) in msg and "band B02" in msg
    assert "scale 0.0001 offset -0.1" in msg and "geoseg model set-encoding" in msg
    assert not (tmp_path / "m.tif").exists()


def test_declared_bundle_refuses_an_undeclared_integer_scene(tmp_path: Path) -> None:
    dn = np.round(reflectance() * 10000).astype(np.uint16)
    scene = write_scene(tmp_path / "raw.tif", dn, None)
    bundle = make_bundle(tmp_path / "l2a.safetensors", L2A)
    with pytest.raises(SceneError) as err:
        plan_prediction(scene, bundle, tmp_path / "m.tif", PredictConfig(device="cpu"))
    msg = str(err.value)
    assert str(scene) in msg and "band B02" in msg and "declares no scale/offset" in msg
    assert "scale 0.0001 offset 0" in msg and "gdal_edit.py -scale 0.0001 -offset 0" in msg


def test_declared_identity_bundle_takes_undeclared_scenes(tmp_path: Path) -> None:
    dn = np.round(reflectance(shape=(16, 16)) * 10000).astype(np.uint16)
    bands = open_scene(write_scene(tmp_path / "raw.tif", dn, None)).bands
    specs = [BandSpec(name=b, mean=0.0, std=1.0, encoding=InputEncoding(scale=1.0))
             for b in BANDS]
    assert not any(c.converts for c in band_conversions(bands, specs))


def test_encoding_survives_save_and_load_and_model_info_shows_it(tmp_path: Path) -> None:
    enc = InputEncoding(scale=1e-4, offset=-0.1)
    bundle = make_bundle(tmp_path / "m.safetensors", enc)
    assert all(b.encoding == enc for b in load_bundle(bundle).meta.bands)
    assert all(b.encoding == enc for b in read_bundle_meta(bundle).bands)
    result = CliRunner().invoke(main, ["model", "info", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "scale 0.0001 offset -0.1" in result.output
    data = json.loads(CliRunner().invoke(main, ["model", "info", str(bundle), "--json"]).output)
    assert data["bands"][0]["encoding"] == {"scale": 1e-4, "offset": -0.1}


def test_set_encoding_command(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "m.safetensors", None)
    out = tmp_path / "l2a.safetensors"
    result = CliRunner().invoke(main, ["model", "set-encoding", str(bundle), "--scale",
                                       "0.0001", "--offset", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    before, after = load_bundle(bundle), load_bundle(out)
    assert all(b.encoding is None for b in before.meta.bands)
    assert all(b.encoding == L2A for b in after.meta.bands)
    assert all(np.array_equal(before.state_dict[k].numpy(), v.numpy())
               for k, v in after.state_dict.items())
    one = CliRunner().invoke(main, ["model", "set-encoding", str(out), "--bands", "B08",
                                    "--none"])
    assert one.exit_code == 0, one.output
    assert [b.encoding for b in load_bundle(out).meta.bands] == [L2A, L2A, L2A, None]
    bad = CliRunner().invoke(main, ["model", "set-encoding", str(out), "--scale", "0"])
    assert bad.exit_code != 0 and "--scale" in bad.output


# --- training records the encoding of the scenes it trained on -------------------------------

def _tag(path: Path, encoding: tuple[float, float]) -> Path:
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (encoding[0],) * dst.count, (encoding[1],) * dst.count
    return path


def test_training_records_and_converts_encodings(tmp_path: Path) -> None:
    from geoseg.train.run import train_model

    from .test_train import class_map, quick_config, write_labels
    from .test_train import write_scene as training_scene

    truth = class_map(96, 128, seed=1)
    labels = write_labels(tmp_path / "labels.tif", truth)
    new = _tag(training_scene(tmp_path / "new.tif", truth), (1e-4, -0.1))
    cfg = quick_config(epochs=1, steps_per_epoch=2, val_fraction=0.0)
    out = tmp_path / "m.safetensors"
    train_model([new], [labels], out, cfg)
    trained = load_bundle(out).meta
    assert trained.encodings == (InputEncoding(scale=1e-4, offset=-0.1),) * 4

    old = _tag(training_scene(tmp_path / "old.tif", truth, seed=2), (1e-4, 0.0))
    with pytest.raises(SceneError, match="different encodings for band B02") as err:
        train_model([new, old], [labels, labels], tmp_path / "mixed.safetensors", cfg)
    assert str(new) in str(err.value) and str(old) in str(err.value)

    # fine-tuning on the other baseline: its DN are brought to the bundle's, which it keeps
    tuned = tmp_path / "tuned.safetensors"
    train_model([old], [labels], tuned, cfg, init=out)
    meta = load_bundle(tuned).meta
    assert meta.encodings == trained.encodings
    assert [(b.mean, b.std) for b in meta.bands] == [(b.mean, b.std) for b in trained.bands]


def test_onnx_metadata_holds_the_encoding(tmp_path: Path) -> None:
    from geoseg.models.export import onnx_metadata

    bundle = make_bundle(tmp_path / "m.safetensors", InputEncoding(scale=1e-4, offset=-0.1))
    props = onnx_metadata(load_bundle(bundle))
    assert json.loads(props["geoseg.input_encoding"]) == [{"scale": 1e-4, "offset": -0.1}] * 4
    assert json.loads(props["geoseg.bundle"])["bands"][0]["encoding"]["offset"] == -0.1
    plain = onnx_metadata(load_bundle(make_bundle(tmp_path / "p.safetensors", None)))
    assert json.loads(plain["geoseg.input_encoding"]) == [None] * 4


def test_model_import_records_the_input_encoding(tmp_path: Path) -> None:
    import torch

    from geoseg.models.registry import build_model

    source = tmp_path / "unet.pth"
    torch.save(build_model("unet", "resnet18", 4, 2, TINY_UNET["arch_kwargs"]).state_dict(),
               source)
    args = ["model", "import", str(source), "--arch", "unet", "--encoder", "resnet18",
            "--arch-kwargs", json.dumps(TINY_UNET["arch_kwargs"]), "--bands", ",".join(BANDS),
            "--classes", "water,land", "--mean", "0.1,0.1,0.1,0.2", "--std", "0.05,0.05,0.05,0.1",
            "--scale", "0.0001", "-o", str(tmp_path / "m.safetensors")]
    result = CliRunner().invoke(main, [*args, "--input-encoding", "0.0001,-0.1"])
    assert result.exit_code == 0, result.output
    meta = load_bundle(tmp_path / "m.safetensors").meta
    assert meta.encodings == (InputEncoding(scale=1e-4, offset=-0.1),) * 4
    assert meta.bands[0].mean == pytest.approx(1000.0)  # --scale folds the statistics still
    bad = CliRunner().invoke(main, [*args, "--overwrite", "--input-encoding", "0,1"])
    assert bad.exit_code != 0 and "--input-encoding" in bad.output and "scale" in bad.output


def test_model_init_records_the_stats_scene_encoding(tmp_path: Path) -> None:
    dn = np.round(reflectance(shape=(32, 48)) * 10000).astype(np.uint16) + np.uint16(1000)
    scene = write_scene(tmp_path / "after.tif", dn, (1e-4, -0.1))
    args = ["model", "init", "--arch", "unet", "--encoder", "resnet18", "--encoder-depth", "3",
            "--bands", ",".join(BANDS), "--classes", "a,b", "--stats-from", str(scene)]
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    meta = load_bundle(out).meta
    assert meta.encodings == (InputEncoding(scale=1e-4, offset=-0.1),) * 4
    assert meta.bands[0].mean == pytest.approx(dn[0].mean(), rel=1e-3)  # in the file's DN
    bad = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "x.safetensors"),
                                    "--input-encoding", "0.0001,0"])
    assert bad.exit_code != 0 and "declares scale 0.0001 offset -0.1" in bad.output
    assert not (tmp_path / "x.safetensors").exists()


def test_a_band_declaring_a_zero_scale_is_refused_when_used(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "zero.tif", np.ones((4, 8, 8), np.uint16), (0.0, 0.0))
    bands = open_scene(path).bands  # opens: a band the model does not use may say anything
    assert bands[0].encoding == (0.0, 0.0)
    specs = [BandSpec(name=b, mean=0.0, std=1.0, encoding=L2A) for b in BANDS]
    with pytest.raises(SceneError, match=r"zero.tif: band B02 \(band 1 of the file\) declares "
                                         r"scale 0 offset 0; a scale must be finite and > 0"):
        band_conversions(bands, specs)
