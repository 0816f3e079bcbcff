"""Issue 15, hostile input: bundles that cannot give a meaningful answer, bad `geoseg model
init` options, and user strings (class names, descriptions) that carry rich markup or terminal
escape sequences.

A NaN/infinite normalization value, a std ≤ 0, a non-finite weight or two classes with one name
(ignoring case and surrounding spaces) is refused when a bundle is loaded (a BundleError naming
the file and the field or tensor) and when one is created (nothing is written). `geoseg model
info` shows user strings literally: no markup is interpreted, no escape byte reaches the
terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geoseg.cli import main
from geoseg.errors import BundleError
from geoseg.models.bundle import (
    BandSpec,
    ClassSpec,
    init_bundle,
    load_bundle,
    read_bundle_meta,
    save_bundle,
)

META_KEY = "geoseg.bundle"
NAN, INF = math.nan, math.inf


def rewrite(src: Path, dst: Path, meta: Callable[[dict], Any] | None = None,
            weights: Callable[[dict], Any] | None = None) -> Path:
    """Copy bundle ``src`` to ``dst`` after editing its metadata dict and/or its tensors in
    place (a hand-edited or damaged bundle; ``json.dumps`` writes NaN and Infinity as such)."""
    with safe_open(str(src), framework="pt") as handle:
        data = json.loads(handle.metadata()[META_KEY])
    tensors = load_file(str(src))
    if meta is not None:
        meta(data)
    if weights is not None:
        weights(tensors)
    save_file(tensors, str(dst), metadata={META_KEY: json.dumps(data)})
    return dst


def set_band(k: int, **values: float) -> Callable[[dict], None]:
    return lambda data: data["bands"][k].update(values)


def set_class_names(*names: str) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        for cls, name in zip(data["classes"], names, strict=False):
            cls["name"] = name
    return edit


def poison(value: float, name: str | None = None) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        key = name or next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = value
    return edit


FIRST_FLOAT = "encoder.conv1.weight"  # the first floating tensor of the tiny U-Net's file

META_CASES = {
    "nan-mean": (set_band(0, mean=NAN), r"bands\[0\] 'B02'\.mean: mean must be a finite number"),
    "inf-mean": (set_band(1, mean=-INF), r"bands\[1\] 'B03'\.mean: mean must be a finite"),
    "nan-std": (set_band(2, std=NAN), r"bands\[2\] 'B04'\.std: std must be a finite number > 0"),
    "inf-std": (set_band(3, std=INF), r"bands\[3\] 'B08'\.std: std must be a finite number > 0"),
    "zero-std": (set_band(0, std=0.0), r"bands\[0\] 'B02'\.std: .* got 0\.0"),
    "negative-std": (set_band(0, std=-4.0), r"bands\[0\] 'B02'\.std: .* got -4\.0"),
    "null-std": (set_band(0, std=None), r"bands\[0\] 'B02'\.std: .*valid number"),
    "duplicate-class": (set_class_names("water", "trees", "water"),
                        r"class 0 'water' and class 2 'water' collide"),
    "duplicate-class-case": (set_class_names("A", "a "), r"class 0 'A' and class 1 'a ' collide"),
    "blank-class": (set_class_names("water", "  "), r"classes\[1\].*name: class name must not "
                    r"be blank"),
}


@pytest.fixture
def good_bundle(make_bundle) -> Path:
    return make_bundle()


@pytest.mark.parametrize("case", list(META_CASES))
def test_meaningless_metadata_is_refused_at_load(good_bundle: Path, tmp_path: Path,
                                                 case: str) -> None:
    edit, words = META_CASES[case]
    bad = rewrite(good_bundle, tmp_path / f"{case}.safetensors", meta=edit)
    for load in (read_bundle_meta, load_bundle):
        with pytest.raises(BundleError, match=words) as info:
            load(bad)
        message = str(info.value)
        assert message.startswith(f"{bad}: invalid bundle metadata: "), message
        assert "\n" not in message, message


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_weight_is_refused_at_load(good_bundle: Path, tmp_path: Path, value: float,
                                              dtype: torch.dtype) -> None:
    def cast_and_poison(tensors: dict) -> None:
        for k, v in tensors.items():
            if v.is_floating_point():
                tensors[k] = v.to(dtype)
        poison(value, FIRST_FLOAT)(tensors)
        poison(value, "segmentation_head.0.weight")(tensors)

    bad = rewrite(good_bundle, tmp_path / "bad.safetensors", weights=cast_and_poison)
    assert read_bundle_meta(bad).arch == "unet"  # the metadata alone is fine
    with pytest.raises(BundleError) as info:
        load_bundle(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: NaN or infinite weights in 2 tensor(s): "
                              f"'{FIRST_FLOAT}' (1 of 12544 values), "
                              "'segmentation_head.0.weight' (1 of "), message
    assert "retrain" in message and "\n" not in message


def test_finite_bundles_still_load_in_every_float_dtype(good_bundle: Path, tmp_path: Path) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        def cast(tensors: dict, dtype: torch.dtype = dtype) -> None:
            for k, v in tensors.items():
                if v.is_floating_point():
                    tensors[k] = v.to(dtype)

        path = rewrite(good_bundle, tmp_path / f"{dtype}.safetensors", weights=cast)
        assert load_bundle(path).state_dict[FIRST_FLOAT].dtype == dtype


def test_saving_refuses_non_finite_weights_and_invalid_meta(good_bundle: Path,
                                                            tmp_path: Path) -> None:
    bundle = load_bundle(good_bundle)
    model = bundle.build()
    out = tmp_path / "new" / "m.safetensors"
    bad_meta = bundle.meta.model_copy(update={"bands": (
        BandSpec.model_construct(name="B02", mean=1000.0, std=0.0), *bundle.meta.bands[1:])})
    with pytest.raises(BundleError, match=r"not written: invalid bundle metadata: bands\[0\] "
                                          r"'B02'\.std"):
        save_bundle(model, bad_meta, out)
    with torch.no_grad():
        model.segmentation_head[0].weight[0, 0, 0, 0] = math.nan  # a diverged training
    with pytest.raises(BundleError, match=rf"{out}: not written: NaN or infinite weights in 1 "
                                          r"tensor\(s\): 'segmentation_head\.0\.weight' \(1 of"):
        save_bundle(model, bundle.meta, out)
    assert not out.parent.exists()


def test_init_bundle_refuses_duplicate_class_names(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    with pytest.raises(BundleError, match="class 0 'Water' and class 1 ' water' collide"):
        init_bundle(out, arch="unet", encoder="resnet18",
                    bands=(BandSpec(name="B02", mean=0.0, std=1.0),), input_dtype="uint16",
                    classes=(ClassSpec(id=0, name="Water", color=(0, 0, 255)),
                             ClassSpec(id=1, name=" water", color=(0, 0, 200))),
                    tile_size=256, halo=0)
    assert not out.exists()
    with pytest.raises(ValueError, match="std must be a finite number > 0, got nan"):
        BandSpec(name="B02", mean=0.0, std=NAN)


def test_training_config_refuses_duplicate_class_names() -> None:
    from geoseg.train import TrainConfig

    with pytest.raises(ValueError, match="class 1 'Trees' and class 2 'trees' collide"):
        TrainConfig(classes=tuple(ClassSpec(id=i, name=n, color=(0, 0, 0))
                                  for i, n in enumerate(["water", "Trees", "trees"])))


# --- geoseg model init: one line, exit status 1, nothing written --------------------------------

INIT = ["model", "init", "--arch", "unet", "--encoder", "resnet18", "--encoder-depth", "3",
        "--bands", "B02,B03"]
GOOD_STATS = ["--mean", "1000,1100", "--std", "400,410"]
INIT_CASES = {
    "mean-abc": (["--classes", "a,b", "--mean", "abc,1", "--std", "1,1"], "--mean: 'abc'"),
    "mean-nan": (["--classes", "a,b", "--mean", "1,nan", "--std", "1,1"], "--mean: 'nan'"),
    "mean-inf": (["--classes", "a,b", "--mean", "inf,1", "--std", "1,1"], "--mean: 'inf'"),
    "std-zero": (["--classes", "a,b", "--mean", "1,1", "--std", "0,1"], "--std: '0'"),
    "std-negative": (["--classes", "a,b", "--mean", "1,1", "--std", "1,-2"], "--std: '-2'"),
    "std-nan": (["--classes", "a,b", "--mean", "1,1", "--std", "NaN,1"], "--std: 'NaN'"),
    "std-count": (["--classes", "a,b", "--mean", "1,1", "--std", "1"], "--std '1'"),
    "colour": (["--classes", "a:#zzzzzz,b", *GOOD_STATS], "colour '#zzzzzz'"),
    "colour-short": (["--classes", "a:#fff,b", *GOOD_STATS], "colour '#fff'"),
    "empty-class": (["--classes", "a,,b", *GOOD_STATS], "--classes 'a,,b': item 2 is empty"),
    "unnamed-class": (["--classes", "a,:#00ff00", *GOOD_STATS], "item 2 ':#00ff00' has no "
                      "class name"),
    "duplicate-class": (["--classes", "a,a", *GOOD_STATS], "class 0 'a' and class 1 'a'"),
    "duplicate-class-case": (["--classes", "A,a ", *GOOD_STATS], "class 0 'A' and class 1 'a'"),
    "empty-band": (["--bands", "B02,,B03", "--classes", "a,b", *GOOD_STATS],
                   "--bands 'B02,,B03': item 2 is empty"),
}


@pytest.mark.parametrize("case", list(INIT_CASES))
def test_model_init_refuses_bad_options_in_one_line(tmp_path: Path, case: str) -> None:
    args, words = INIT_CASES[case]
    out = tmp_path / "out" / "m.safetensors"
    result = CliRunner().invoke(main, [*INIT, *args, "-o", str(out)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert words in lines[0] and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_model_init_with_good_options_writes_a_loadable_bundle(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, [*INIT, "--classes", "water:#1F78B4,trees", *GOOD_STATS,
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    meta = load_bundle(out).meta
    assert [(c.name, c.color) for c in meta.classes] == [("water", (31, 120, 180)),
                                                         ("trees", (51, 160, 44))]
    assert [(b.mean, b.std) for b in meta.bands] == [(1000.0, 400.0), (1100.0, 410.0)]


# --- geoseg model info: user strings shown literally ---------------------------------------------

HOSTILE_CLASSES = ("[bold]water", "trees[/]", "[link=https://e.test]crops", "\x1b[31mred",
                   "bell\x07")
HOSTILE_DESCRIPTION = ("trained on [/] [red]S2[/red]\nsee \x1b]8;;https://evil.test\x07here"
                       "\x1b]8;;\x07 \x9b2J \x1b[2J done\r")


def test_model_info_shows_markup_and_escapes_literally(good_bundle: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(data: dict) -> None:
        set_class_names(*HOSTILE_CLASSES)(data)
        data["description"] = HOSTILE_DESCRIPTION
        data["bands"][0]["name"] = "B02[/]"

    rewrite(good_bundle, tmp_path / "hostile[bold].safetensors", meta=edit)
    monkeypatch.chdir(tmp_path)  # a short path: no line of the 80-column output wraps
    path = Path("hostile[bold].safetensors")
    result = CliRunner().invoke(main, ["model", "info", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert not any(ch in out for ch in "\x1b\x07\x9b\r"), repr(out)
    for text in ("[bold]water", "trees[/]", "[link=https://e.test]crops", "\\x1b[31mred",
                 "bell\\x07", "B02[/]", "hostile[bold].safetensors",
                 "trained on [/] [red]S2[/red]",
                 "see \\x1b]8;;https://evil.test\\x07here\\x1b]8;;\\x07 \\x9b2J \\x1b[2J done\\r"):
        assert text in out, (text, out)
    as_json = CliRunner().invoke(main, ["model", "info", str(path), "--json"])
    assert as_json.exit_code == 0 and "\x1b" not in as_json.output
    assert json.loads(as_json.output)["classes"][3]["name"] == "\x1b[31mred"


def test_terminal_safe_helper() -> None:
    """Embedded in markup, the string renders as written (control characters as visible
    escapes) and adds no style and no escape byte of its own."""
    from rich.console import Console
    from rich.text import Text

    from geoseg.cli.render import terminal_safe

    console = Console(force_terminal=True, width=200, color_system="truecolor")
    for text in ("[bold]x[/bold]", "a\\", "\\[b]", "[/]", "e\x1b[1mx\x1b]8;;u\x07y\u202e\x85",
                 "[link=https://e.test]l[/link]", "[#ff0000]"):
        literal = text.translate({0x1B: "\\x1b", 0x07: "\\x07", 0x202E: "\\u202e",
                                  0x85: "\\x85"})
        rendered = Text.from_markup(f"[green]{terminal_safe(text)}[/]")
        assert rendered.plain == literal and len(rendered.spans) == 1, (text, rendered)
        with console.capture() as cap:
            console.print(f"[green]{terminal_safe(text)}[/]", end="", highlight=False)
        assert cap.get().count("\x1b") == 2, (text, cap.get())  # the green style's on and off
    assert terminal_safe("a\nb") == "a\\nb" and terminal_safe("a\nb", newlines=True) == "a\nb"
    assert terminal_safe("tab\there") == "tab\there"
