"""Issue 19, a light client: `geoseg run` checks the bundle from its safetensors header and never
imports torch; the workers check it in full (one small task) before any block is submitted.

The end-to-end tests run real `geoseg` commands in a child Python process (a real LocalCluster
of worker processes, as `geoseg run` starts by default) that reports at the end whether torch or
smp were ever imported, and its peak RSS (VmHWM); a scheduler preload there records every task
key the scheduler saw, so "no block was submitted" is observed, not assumed.
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from safetensors import safe_open

from geoseg.errors import BundleError
from geoseg.models.bundle import BandSpec, ClassSpec, check_bundle, init_bundle, read_bundle_meta
from geoseg.models.header import parse_header, read_header
from geoseg.models.registry import (
    ARCHITECTURES,
    HEAD_KEY,
    INPUT_CONV_KEYS,
    model_align,
    static_align,
)

from .conftest import BANDS, REPO, TINY_DEEPLAB, TINY_UNET, cli_env, write_raster
from .test_hostile_bundles import poison, rewrite
from .test_run import geoseg, pixels, tiny_bundle

#: Peak RSS (VmHWM) of the child through `geoseg inspect` and a whole small `geoseg run`, MiB: a
#: sanity bound only (measured 290-325 MiB on 2 cores; 1080 MiB while the client imported torch).
CLIENT_RSS_BOUND_MIB = 600


# --- the header reader -----------------------------------------------------------------------

def _file(tmp_path: Path, header: Any, data: bytes, name: str = "x.safetensors",
          length: int | None = None) -> Path:
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def test_header_is_what_safetensors_reads(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "tiny.safetensors")
    header = read_header(path)
    with safe_open(str(path), framework="numpy") as handle:
        assert dict(header.metadata) == handle.metadata()
        names = handle.keys()
        assert set(header.tensors) == set(names)
        for name in names:
            assert header.tensors[name].shape == tuple(handle.get_slice(name).get_shape())
    conv = header.tensors["encoder.conv1.weight"]
    assert (conv.dtype, conv.shape, conv.nbytes) == ("F32", (64, 4, 7, 7), 64 * 4 * 49 * 4)


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED = {
    "not json": (b"{nope", 8, "header is not JSON"),
    "not an object": ([1, 2], 8, "header is a JSON list, not an object"),
    "unknown dtype": ({"w": {**F32, "dtype": "F33"}}, 8, "unknown dtype 'F33'"),
    "negative size": ({"w": {**F32, "shape": [-2]}}, 8, "is not a list of sizes >= 0"),
    "bad offsets": ({"w": {**F32, "data_offsets": [8, 0]}}, 8, "is not [begin, end]"),
    "wrong size": ({"w": {**F32, "shape": [3]}}, 8, "F32 [3] needs 12 bytes but its "
                   "data_offsets hold 8"),
    "gap": ({"a": F32, "b": {**F32, "data_offsets": [12, 20]}}, 20, "a gap between tensors"),
    "overlap": ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, 12,
                "an overlap between tensors"),
    "truncated data": ({"w": F32}, 4, "cover 8 bytes of data but the file holds 4"),
    "trailing bytes": ({"w": F32}, 16, "cover 8 bytes of data but the file holds 16"),
    "metadata not strings": ({"__metadata__": {"a": 1}, "w": F32}, 8,
                             "__metadata__ is not a map of strings"),
    "duplicate key": (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                      b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8,
                      "key 'w' appears twice"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_headers_say_what_is_wrong(tmp_path: Path, case: str) -> None:
    header, data, words = MALFORMED[case]
    path = _file(tmp_path, header, bytes(data))
    with pytest.raises(ValueError, match=re.escape(words)):
        read_header(path)
    with pytest.raises(BundleError, match=rf"^{path}: not a readable safetensors model bundle \("):
        check_bundle(path)


def test_header_lengths_are_checked_before_reading(tmp_path: Path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="2 bytes: too short"):
        read_header(short)
    with pytest.raises(ValueError, match=r"header length 1000000000000 > 100000000 bytes"):
        read_header(_file(tmp_path, {"w": F32}, bytes(8), length=10**12))
    with pytest.raises(ValueError, match="runs past the end of the file"):
        read_header(_file(tmp_path, {"w": F32}, b"", length=500))
    # sub-byte dtypes: 3 F4 values do not fill whole bytes
    with pytest.raises(ValueError, match="needs 1.5 bytes"):
        parse_header(json.dumps({"w": {"dtype": "F4", "shape": [3],
                                       "data_offsets": [0, 2]}}).encode(), 100)


def test_read_bundle_meta_reads_the_header_only(tmp_path: Path) -> None:
    """A bundle whose weights are garbage still has readable metadata (same as safetensors)."""
    path = tiny_bundle(tmp_path / "tiny.safetensors")
    data = bytearray(path.read_bytes())
    data[-4000:] = b"\xff" * 4000  # NaN bytes in the last tensor
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    assert read_bundle_meta(damaged) == read_bundle_meta(path)
    assert check_bundle(damaged).meta == read_bundle_meta(path)


# --- what the client knows without building the model ---------------------------------------

def _meta_model(arch: str, encoder: str, bands: int, kwargs: dict[str, Any]) -> Any:
    import segmentation_models_pytorch as smp
    import torch

    with torch.device("meta"):
        return smp.create_model(arch, encoder_name=encoder, encoder_weights=None,
                                in_channels=bands, classes=7, **kwargs)


ALIGN_CASES = [(arch, kwargs) for arch in ARCHITECTURES if arch != "dpt"  # needs tu- encoders
               for kwargs in ({}, {"encoder_depth": 4}, {"encoder_depth": 3},
                              {"encoder_output_stride": 8}, {"encoder_output_stride": 16})
               if not (arch in {"unet", "unetplusplus", "manet"} and "encoder_depth" in kwargs)
               and not (arch == "pan" and kwargs.get("encoder_output_stride") == 8)]


def test_static_align_is_the_built_models() -> None:
    """smp's encoders report min(output stride, 2 ** depth); geoseg works it out unbuilt."""
    for arch, kwargs in ALIGN_CASES:
        model = _meta_model(arch, "resnet18", 4, kwargs)
        assert static_align(arch, kwargs) == model_align(model), (arch, kwargs)
    for spec in (TINY_UNET, TINY_DEEPLAB):
        model = _meta_model(spec["arch"], "mobilenet_v2", 4, spec["arch_kwargs"])
        assert static_align(spec["arch"], spec["arch_kwargs"]) == model_align(model)


#: One encoder of each family smp 0.6 has (mit only builds off the meta device).
FAMILIES = ["resnet18", "se_resnet50", "densenet121", "dpn68", "vgg11", "inceptionv4",
            "mobilenet_v2", "inceptionresnetv2", "efficientnet-b0", "timm-efficientnet-b0",
            "mobileone_s0", "xception", "timm-skresnet18"]


@pytest.mark.parametrize("encoder", FAMILIES)
def test_input_conv_keys_name_each_families_first_convolution(encoder: str) -> None:
    import torch

    model = _meta_model("unet", encoder, 4, {})
    first = next(name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    state = model.state_dict()
    found = next(k for k in INPUT_CONV_KEYS if k in state and state[k].ndim == 4)
    assert found == f"{first}.weight" and state[found].shape[1] == 4
    assert state[HEAD_KEY].shape[0] == 7


def test_input_conv_key_of_mix_transformer() -> None:
    import segmentation_models_pytorch as smp

    model = smp.create_model("segformer", encoder_name="mit_b0", encoder_weights=None,
                             in_channels=4, classes=3)
    assert "encoder.patch_embed1.proj.weight" in INPUT_CONV_KEYS
    assert model.state_dict()["encoder.patch_embed1.proj.weight"].shape[1] == 4
    assert model.state_dict()[HEAD_KEY].shape[0] == 3


# --- bad bundles, each caught where it can be ---------------------------------------------------

def _three_band_weights(tmp_path: Path) -> Path:
    """Weights made for 3 bands, metadata edited to list the 4 of the scenes."""
    src = tmp_path / "three.safetensors"
    init_bundle(src, arch="unet", encoder="resnet18", arch_kwargs=TINY_UNET["arch_kwargs"],
                bands=tuple(BandSpec(name=b, mean=1000.0, std=400.0) for b in BANDS[:3]),
                input_dtype="uint16",
                classes=tuple(ClassSpec(id=i, name=f"class {i}", color=(9, 9, 9))
                              for i in range(4)),
                tile_size=256, halo=TINY_UNET["halo"])
    return rewrite(src, tmp_path / "channels.safetensors", meta=lambda d: d["bands"].append(
        {"name": "B08", "mean": 1000.0, "std": 400.0}))


def bad_bundles(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """case → (bundle, what its one-line error starts with after the path)."""
    good = tiny_bundle(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {
        "nan": (rewrite(good, tmp_path / "nan.safetensors",
                        weights=poison(math.nan, "encoder.conv1.weight")),
                "NaN or infinite weights in 1 tensor(s): 'encoder.conv1.weight' (1 of 12544 "
                "values)"),
        "channels": (_three_band_weights(tmp_path),
                     "the weights do not fit 4 bands: the first convolution "
                     "'encoder.conv1.weight' takes 3 input channels"),
        "classes": (rewrite(good, tmp_path / "classes.safetensors",
                            meta=lambda d: d["classes"].pop()),
                    "the weights do not fit 3 classes: the segmentation head "
                    "'segmentation_head.0.weight' gives 4 channels"),
        "truncated": (truncated, "not a readable safetensors model bundle (the tensors cover"),
    }


def test_header_checks_and_the_full_check_agree(tmp_path: Path) -> None:
    """What the client refuses from the header, load_bundle refuses too; NaN weights only the
    full check sees."""
    from geoseg.models.bundle import load_bundle

    for case, (path, words) in bad_bundles(tmp_path).items():
        with pytest.raises(BundleError) as full:
            load_bundle(path)
        assert "\n" not in str(full.value)
        if case == "nan":
            assert check_bundle(path).meta.arch == "unet"
            assert str(full.value).startswith(f"{path}: {words}")
            continue
        with pytest.raises(BundleError) as light:
            check_bundle(path)
        assert str(light.value).startswith(f"{path}: {words}"), str(light.value)
        assert "\n" not in str(light.value)


# --- the real thing, in a child process ----------------------------------------------------------

PRELOAD = '''
"""Scheduler preload: records every task key the scheduler sees, in order."""
from distributed.diagnostics.plugin import SchedulerPlugin

SEEN = []


class Recorder(SchedulerPlugin):
    def transition(self, key, start, finish, *args, **kwargs):
        SEEN.append((str(key), start, finish))


def dask_setup(scheduler):
    scheduler.add_plugin(Recorder())
'''

CHILD = '''
import contextlib, io, json, resource, sys

def main():
    import dask
    import light_preload

    dask.config.set({"distributed.scheduler.preload": ["light_preload"]})
    from geoseg.cli import main as geoseg

    results = []
    for argv in json.loads(sys.argv[1]):
        del light_preload.SEEN[:]
        out = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                geoseg(argv)
            except SystemExit as exc:
                code = exc.code
        results.append({"code": code, "output": out.getvalue(),
                        "tasks": list(light_preload.SEEN)})
    # ru_maxrss keeps the peak of the image this process was exec'ed from (the test process,
    # torch and all); VmHWM is this process's own peak
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"results": results, "torch": "torch" in sys.modules,
                      "smp": "segmentation_models_pytorch" in sys.modules,
                      "rss_mib": hwm / 1024,
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))

if __name__ == "__main__":
    main()
'''


def run_in_child(tmp_path: Path, *commands: list[str]) -> dict[str, Any]:
    """Run geoseg ``commands`` one after another in one fresh Python process."""
    folder = tmp_path / "child"
    folder.mkdir(exist_ok=True)
    (folder / "light_preload.py").write_text(textwrap.dedent(PRELOAD))
    (folder / "child.py").write_text(textwrap.dedent(CHILD))
    argv = [[str(a) for a in c] for c in commands]
    done = subprocess.run([sys.executable, str(folder / "child.py"), json.dumps(argv)],
                          capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_raster(folder / "a.tif", pixels(1, 300, 400), names=BANDS)
    return folder


RUN = ("--no-vectorize", "--workers", "1", "--block-size", "128")
INSPECT = ("--block-size", "128")


def _mask(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    with rasterio.open(path) as src:
        return src.read(), src.tags()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_run_never_imports_torch_and_maps_as_before(scenes: Path, tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "tiny.safetensors")
    out = tmp_path / "light"
    child = run_in_child(tmp_path, ["inspect", scenes, "-m", bundle, "--json", *INSPECT],
                         ["run", scenes, "-m", bundle, "-o", out, *RUN])
    inspected, ran = child["results"]
    assert not child["torch"] and not child["smp"]
    assert child["rss_mib"] < CLIENT_RSS_BOUND_MIB, child["rss_mib"]

    # inspect: the same answer as a process that has torch loaded (its child measured it)
    code, text = geoseg("inspect", scenes, "-m", bundle, "--json", *INSPECT)
    assert inspected["code"] == code == 0, inspected["output"]
    assert json.loads(inspected["output"]) == json.loads(text)

    # run: the usual outputs (those of a synchronous run in this process, which has torch)
    assert ran["code"] == 0, ran["output"]
    ref = tmp_path / "usual"
    code, text = geoseg("run", scenes, "-m", bundle, "-o", ref, "--scheduler", "synchronous",
                        *RUN)
    assert code == 0, text
    light_mask, usual_mask = _mask(out / "a" / "a.tif"), _mask(ref / "a" / "a.tif")
    assert np.array_equal(light_mask[0], usual_mask[0]) and light_mask[1] == usual_mask[1]
    assert (out / "a" / "a.tif").read_bytes() == (ref / "a" / "a.tif").read_bytes()
    light, usual = (json.loads((o / "a" / "scene.json").read_text()) for o in (out, ref))
    assert light["classes"] == usual["classes"] and light["bundle_sha256"] == usual[
        "bundle_sha256"]

    # the model was checked once, on a worker, before the first block was submitted
    keys = [key for key, _, _ in ran["tasks"]]
    checks = {k for k in keys if "_built_align" in k}
    assert len(checks) == 1, checks
    check_done = next(i for i, (k, _, end) in enumerate(ran["tasks"])
                      if k in checks and end == "memory")
    first_block = next(i for i, k in enumerate(keys) if "geoseg-predict" in k)
    assert check_done < first_block


@pytest.mark.slow
def test_bad_bundles_fail_early_in_one_line(scenes: Path, tmp_path: Path) -> None:
    bad = bad_bundles(tmp_path)
    commands = [["run", scenes, "-m", path, "-o", tmp_path / f"out-{case}", *RUN]
                for case, (path, _) in bad.items()]
    child = run_in_child(tmp_path, *commands)
    assert not child["torch"] and not child["smp"]
    for (case, (path, words)), result in zip(bad.items(), child["results"], strict=True):
        lines = result["output"].strip().splitlines()
        assert result["code"] == 1, (case, result["output"])
        assert lines[-1].startswith(f"error: {path}: {words}"), (case, lines)
        assert not any(k for k, _, _ in result["tasks"] if "geoseg-predict" in k), case
        assert not any(line.startswith(("[1/1]", "ok ", "failed ")) for line in lines), case
        if case == "nan":  # seen by the workers, after the cluster started
            assert len(lines) <= 3, lines
        else:  # seen in the header: before anything started
            assert len(lines) == 1, lines
        assert not (tmp_path / f"out-{case}").exists(), case


def test_a_bundle_replaced_after_its_check_is_refused_where_it_loads(make_bundle) -> None:
    """The client plans with the header it checked; a file replaced before the model loads
    (in this process, or sent to workers) is refused, not run with another model's weights."""
    from geoseg.config import PredictConfig
    from geoseg.pipeline import load_model, model_ref

    path = make_bundle(seed=0)
    checked = check_bundle(path)
    make_bundle(seed=1)  # same name, other weights
    with pytest.raises(BundleError, match="changed since it was checked"):
        load_model(checked, model_ref(checked, PredictConfig()))
    load_model(check_bundle(path), model_ref(check_bundle(path), PredictConfig()))  # as it is now
