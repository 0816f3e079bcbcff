"""Model bundles: round trip, validation, corrupt and mismatched files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from geoseg.errors import BundleError
from geoseg.models import build_model, load_bundle, read_bundle_meta
from geoseg.models.bundle import BandSpec, BundleMeta, ClassSpec, save_bundle

from .conftest import TINY_DEEPLAB, TINY_UNET


@pytest.mark.parametrize("spec", [TINY_UNET, TINY_DEEPLAB], ids=["unet", "deeplabv3plus"])
def test_round_trip(make_bundle, spec) -> None:
    path = make_bundle(spec)
    bundle = load_bundle(path)
    assert bundle.meta.arch == spec["arch"]
    assert bundle.meta.band_names == ("B02", "B03", "B04", "B08")
    assert bundle.meta.colormap[1] == (50, 170, 90, 255)
    assert len(bundle.sha256) == 64
    model = bundle.build()
    out = model(torch.zeros(1, 4, 64, 64))
    assert out.shape == (1, 5, 64, 64)
    # the same seed gives the same weights
    again = load_bundle(make_bundle(spec, name="again.safetensors"))
    assert again.sha256 == bundle.sha256


@pytest.mark.parametrize("spec", [TINY_UNET, TINY_DEEPLAB], ids=["unet", "deeplabv3plus"])
def test_built_model_holds_the_file_weights(make_bundle, spec) -> None:
    """Built on the meta device and handed the file's tensors (no random initialization): the
    saved weights exactly, in float32 also from a float16 file, nothing left uninitialized, and
    the outputs of an ordinary build."""
    from geoseg.models.bundle import _model_with_weights

    bundle = load_bundle(make_bundle(spec))
    meta = bundle.meta
    ordinary = build_model(meta.arch, meta.encoder, 4, 5, meta.arch_kwargs)
    ordinary.load_state_dict(bundle.state_dict)
    x = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    half = {k: v.half() if v.is_floating_point() else v for k, v in bundle.state_dict.items()}
    for weights in (bundle.state_dict, half):
        model = _model_with_weights(meta, weights, bundle.path)
        state = model.state_dict()
        assert not any(t.is_meta for t in state.values())
        assert {str(t.dtype) for t in state.values()} <= {"torch.float32", "torch.int64"}
        assert all(torch.equal(state[k], v.to(state[k].dtype)) for k, v in weights.items())
        assert not model.training
    with torch.inference_mode():
        built = bundle.build()(x)
        assert torch.equal(built, ordinary.eval()(x))


def test_a_model_that_cannot_be_built_on_the_meta_device_loads(tmp_path: Path) -> None:
    """SegFormer's MiT encoder calls ``.item()`` in its constructor, which the meta device
    refuses: the bundle is built the ordinary way and holds the file's weights."""
    from geoseg.models.bundle import init_bundle

    bands = tuple(BandSpec(name=n, mean=0.0, std=1.0) for n in ("B02", "B03", "B04"))
    classes = (ClassSpec(id=0, name="a", color=(1, 2, 3)),
               ClassSpec(id=1, name="b", color=(3, 2, 1)))
    path = tmp_path / "segformer.safetensors"
    init_bundle(path, arch="segformer", encoder="mit_b0", bands=bands, input_dtype="float32",
                classes=classes, tile_size=256, halo=64)
    bundle = load_bundle(path)
    state = bundle.build().state_dict()
    assert all(torch.equal(state[k], v) for k, v in bundle.state_dict.items())
    assert bundle.build()(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_not_a_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04this is a pickle, not safetensors")
    with pytest.raises(BundleError, match="not a readable safetensors"):
        load_bundle(junk)
    with pytest.raises(BundleError, match="no such model bundle"):
        load_bundle(tmp_path / "missing.safetensors")


def test_truncated_bundle(make_bundle, tmp_path: Path) -> None:
    data = make_bundle().read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        load_bundle(cut)


def _rewrite_meta(path: Path, out: Path, **changes) -> None:
    """Edit the JSON metadata inside a safetensors header (as a careless user might)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["geoseg.bundle"])
    meta.update(changes)
    header["__metadata__"]["geoseg.bundle"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    out.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def test_mismatched_weights_are_named(make_bundle, tmp_path: Path) -> None:
    edited = tmp_path / "edited.safetensors"
    _rewrite_meta(make_bundle(), edited, encoder="resnet34")
    assert read_bundle_meta(edited).encoder == "resnet34"
    with pytest.raises(BundleError, match="do not fit a unet/resnet34"):
        load_bundle(edited)


def test_invalid_metadata(make_bundle, tmp_path: Path) -> None:
    edited = tmp_path / "edited.safetensors"
    _rewrite_meta(make_bundle(), edited, tile_size=-5, colour="x")
    with pytest.raises(BundleError, match="invalid bundle metadata"):
        load_bundle(edited)


def test_plain_safetensors_without_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(BundleError, match="without geoseg metadata"):
        load_bundle(path)


def test_meta_validation() -> None:
    bands = (BandSpec(name="a", mean=0, std=1),)
    with pytest.raises(ValueError, match="class ids"):
        BundleMeta(arch="unet", encoder="resnet18", bands=bands, input_dtype="uint8",
                   classes=(ClassSpec(id=1, name="x", color=(0, 0, 0)),), tile_size=256, halo=0)
    with pytest.raises(ValueError, match="unknown architecture"):
        BundleMeta(arch="nope", encoder="resnet18", bands=bands, input_dtype="uint8",
                   classes=(ClassSpec(id=0, name="x", color=(0, 0, 0)),), tile_size=256, halo=0)
    with pytest.raises(ValueError):
        ClassSpec(id=0, name="x", color=(0, 0, 300))
    with pytest.raises(BundleError, match="unknown encoder"):
        build_model("unet", "no-such-encoder", 3, 2)


def test_save_is_atomic(make_bundle, tmp_path: Path) -> None:
    meta = load_bundle(make_bundle()).meta
    model = build_model("unet", "resnet18", 4, 5, dict(meta.arch_kwargs))
    out = save_bundle(model, meta, tmp_path / "sub" / "m.safetensors")
    assert load_bundle(out).meta == meta
    assert [p.name for p in out.parent.iterdir()] == ["m.safetensors"]
