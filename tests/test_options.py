"""The command line's options: declared once (geoseg/cli/options.py) and shared by the scene
commands, each mapped to one config key; the cluster set-up the commands share; inspect's rows."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pyogrio
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.cli.options import SharedOption
from geoseg.config import ClusterConfig, Config, VectorizeConfig

from .conftest import TINY_UNET

#: The commands whose options all come from geoseg/cli/options.py (but ``--out``: what each
#: command writes, a file for one and a folder for another).
COMMANDS = ("predict", "run", "inspect", "vectorize", "config show")
OWN = {"out", "out_dir", "help", "scratch"}  # run --scratch: where a store --out is staged

#: Every option each command had before the options were shared: none may go away.
BEFORE = {
    "predict": "--allocator --batch-size --block-size --cluster --confidence --config --device "
               "--halo --model --no-confidence --no-probabilities --out --overwrite --precision "
               "--probabilities --scheduler --stitch --tile-size --workers -c -m -o",
    "run": "--allocator --batch-size --block-size --cluster --confidence --config --connectivity "
           "--device --halo --layer --min-area --model --no-confidence --no-vectorize --on-error "
           "--out --overwrite --precision --scheduler --simplify --split --stitch --tile-size "
           "--vectorize --workers -c -m -o",
    "inspect": "--allocator --batch-size --block-size --cluster --confidence --config "
               "--connectivity --device --halo --json --layer --min-area --model --no-confidence "
               "--no-vectorize --on-error --precision --scheduler --simplify --split --stitch "
               "--tile-size --vectorize --workers -c -m",
    "vectorize": "--block-size --connectivity --layer --min-area --out --overwrite --scheduler "
                 "--simplify --workers",
    "config show": "--allocator --batch-size --block-size --cluster --confidence --config "
                   "--connectivity --device --halo --layer --min-area --no-confidence "
                   "--no-vectorize --on-error --precision --scheduler --simplify --stitch "
                   "--tile-size --vectorize --workers -c",
}


def command(name: str) -> click.Command:
    ctx = click.Context(main)
    cmd: click.Command | None = main
    for part in name.split():
        assert isinstance(cmd, click.Group)
        cmd = cmd.get_command(ctx, part)
    assert cmd is not None
    return cmd


def options(name: str) -> list[click.Option]:
    return [p for p in command(name).params if isinstance(p, click.Option)]


def invoke(*args: object) -> click.testing.Result:
    return CliRunner().invoke(main, [str(a) for a in args])


# --- declared once ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_comes_from_the_shared_groups(name: str) -> None:
    for opt in options(name):
        if opt.name in OWN:
            continue
        assert isinstance(opt, SharedOption), f"geoseg {name} {opt.opts} is declared in place"


def test_an_option_has_one_help_text_everywhere() -> None:
    helps: dict[str, set[str]] = {}
    for name in COMMANDS:
        for opt in options(name):
            if opt.name not in OWN:
                for flag in opt.opts + opt.secondary_opts:
                    helps.setdefault(flag, set()).add(opt.help or "")
    assert helps and {flag: h for flag, h in helps.items() if len(h) > 1} == {}
    assert all(h != {""} for h in helps.values())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_before_is_still_there(name: str) -> None:
    now = {flag for opt in options(name) for flag in opt.opts + opt.secondary_opts}
    assert set(BEFORE[name].split()) <= now


def test_new_options_where_the_issue_asked() -> None:
    flags = {name: {f for o in options(name) for f in o.opts} for name in COMMANDS}
    assert "--probabilities" in flags["run"] and "--config" in flags["vectorize"]


@pytest.mark.parametrize("name", COMMANDS)
def test_config_keys_name_real_fields_and_help_states_their_defaults(name: str) -> None:
    defaults = Config()
    for opt in options(name):
        key = getattr(opt, "config_key", None)
        if key is None:
            continue
        section, field = key.split(".")
        assert field in type(getattr(defaults, section)).model_fields, key
        value = getattr(getattr(defaults, section), field)
        if value is not None and not isinstance(value, bool):
            stated = f"[{value:g}]" if isinstance(value, float) else f"[{value}]"
            assert stated in (opt.help or ""), (key, opt.help)


# every option of `config show` (all of those of a batch run) → where it lands in the config
GIVEN = {
    ("--tile-size", "512"): ("predict", "tile_size", 512),
    ("--scenes-in-flight", "3"): ("run", "scenes_in_flight", 3),
    ("--halo", "32"): ("predict", "halo", 32),
    ("--block-size", "1024"): ("predict", "block_size", 1024),
    ("--batch-size", "2"): ("predict", "batch_size", 2),
    ("--stitch", "blend"): ("predict", "stitch", "blend"),
    ("--device", "cpu"): ("predict", "device", "cpu"),
    ("--precision", "bf16"): ("predict", "precision", "bf16"),
    ("--confidence",): ("predict", "confidence", True),
    ("--probabilities",): ("predict", "probabilities", True),
    ("--no-vectorize",): ("vectorize", "enabled", False),
    ("--min-area", "5"): ("vectorize", "min_area_m2", 5.0),
    ("--simplify", "2.5"): ("vectorize", "simplify_m", 2.5),
    ("--connectivity", "8"): ("vectorize", "connectivity", 8),
    ("--layer", "lc"): ("vectorize", "layer", "lc"),
    ("--on-error", "fail"): ("run", "on_error", "fail"),
    ("--workers", "3"): ("cluster", "workers", 3),
    ("--scheduler", "synchronous"): ("cluster", "scheduler", "synchronous"),
    ("--cluster", "slurm"): ("cluster", "kind", "slurm"),
    ("--allocator", "glibc"): ("cluster", "allocator", "glibc"),
}


def test_each_option_overrides_its_config_key_over_the_file(tmp_path: Path) -> None:
    keys = {o.config_key for o in options("config show") if getattr(o, "config_key", None)}
    assert keys == {f"{s}.{k}" for s, k, _ in GIVEN.values()}
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("predict:\n  block_size: 4096\n  halo: 16\nvectorize:\n  layer: file\n")
    result = invoke("config", "show", "-c", cfg_file, *[a for args in GIVEN for a in args])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    for section, key, value in GIVEN.values():
        assert shown[section][key] == value, (section, key)
    kept = yaml.safe_load(invoke("config", "show", "-c", cfg_file).output)
    assert kept["predict"]["block_size"] == 4096 and kept["vectorize"]["layer"] == "file"


# --- geoseg run --probabilities ----------------------------------------------------------------

def test_run_writes_the_probabilities_raster(make_scene, make_bundle, tmp_path: Path) -> None:
    scene = make_scene(height=64, width=96)
    bundle = make_bundle(TINY_UNET, n_classes=3)
    out = tmp_path / "maps"
    result = invoke("run", scene, "-m", bundle, "-o", out, "--scheduler", "synchronous",
                    "--no-vectorize", "--probabilities")
    assert result.exit_code == 0, result.output
    probs = out / "scene" / "scene.probabilities.tif"
    with rasterio.open(probs) as src:
        assert src.count == 3 and src.shape == (64, 96) and src.dtypes[0] == "uint8"
    assert not (out / "scene" / "scene.confidence.tif").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["scenes"][0]["status"] == "ok"


# --- geoseg vectorize --config -----------------------------------------------------------------

@pytest.fixture
def mask(make_scene, make_bundle, tmp_path: Path) -> Path:
    path = tmp_path / "mask.tif"
    result = invoke("predict", make_scene(height=64, width=96), "-m", make_bundle(TINY_UNET),
                    "-o", path, "--scheduler", "synchronous")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def captured(monkeypatch) -> dict:
    """Stand in for vectorize_mask and keep the keyword arguments it was called with."""
    import geoseg.vectorize

    calls: dict = {}

    def fake(mask, out, **kwargs):
        calls.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(geoseg.vectorize, "vectorize_mask", fake)
    return calls


def test_vectorize_defaults_come_from_vectorize_config(captured, tmp_path: Path) -> None:
    result = invoke("vectorize", tmp_path / "m.tif", "-o", tmp_path / "v.gpkg", "--scheduler",
                    "synchronous")
    assert result.exit_code == 0, result.output
    defaults = VectorizeConfig().model_dump(exclude={"enabled"})
    assert {k: captured[k] for k in defaults} == defaults
    assert captured["policy"].resources == {} and captured["client"] is None


def test_vectorize_takes_the_config_and_options_override_it(captured, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("vectorize:\n  min_area_m2: 500\n  connectivity: 8\n  layer: from_config\n"
                   "  block_size: 64\ncluster:\n  scheduler: synchronous\n")
    result = invoke("vectorize", tmp_path / "m.tif", "-o", tmp_path / "v.gpkg", "-c", cfg,
                    "--layer", "from_cli", "--block-size", "32")
    assert result.exit_code == 0, result.output
    assert {k: captured[k] for k in ("min_area_m2", "connectivity", "layer", "block_size")} == {
        "min_area_m2": 500, "connectivity": 8, "layer": "from_cli", "block_size": 32}
    assert captured["client"] is None  # cluster.scheduler of the file


def test_vectorize_with_a_config_writes_the_layer(mask: Path, tmp_path: Path) -> None:
    from geoseg.vectorize import vectorize_mask

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("vectorize:\n  min_area_m2: 2000\n  connectivity: 8\n  layer: from_config\n")
    out = tmp_path / "v.gpkg"
    result = invoke("vectorize", mask, "-o", out, "-c", cfg, "--layer", "from_cli",
                    "--block-size", "32", "--scheduler", "synchronous")
    assert result.exit_code == 0, result.output
    assert "from_cli" in result.output
    assert "from_config" not in [name for name, _ in pyogrio.list_layers(out)]
    same = vectorize_mask(mask, tmp_path / "same.gpkg", min_area_m2=2000, connectivity=8,
                          block_size=32, layer="from_cli")
    assert pyogrio.read_info(out, layer="from_cli")["features"] == same.n_features


def test_vectorize_bad_config_value_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("vectorize:\n  connectivity: 6\n")
    result = invoke("vectorize", tmp_path / "m.tif", "-o", tmp_path / "v.gpkg", "-c", cfg)
    assert result.exit_code == 1 and "vectorize.connectivity" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- the cluster set-up the commands share ------------------------------------------------------

def test_session_is_set_up_before_the_cluster_starts() -> None:
    from geoseg.cluster import session

    sync = session(ClusterConfig(scheduler="synchronous"))
    assert (sync.gpus, sync.threads, sync.policy.resources) == (0, None, {})
    with sync.connect() as client:
        assert client is None
    jobs = ClusterConfig(kind="slurm", gpu_tasks=2, slurm={"gpus": 1, "cpus": 8}, retries=3)
    gpu = session(jobs, "auto")
    assert (gpu.gpus, gpu.threads, gpu.policy.retries) == (1, 8, 3)
    assert 0.49 < gpu.policy.resources["GPU"] < 0.5
    cpu = session(jobs, "cpu")
    assert (cpu.gpus, cpu.policy.resources) == (0, {})
    with pytest.raises(AttributeError):
        gpu.threads = 1  # type: ignore[misc]


# --- inspect: the library returns the rows the command prints -----------------------------------

def test_inspect_rows_are_the_library_rows(make_scene, make_bundle, tmp_path: Path) -> None:
    from geoseg.batch import plan_batch
    from geoseg.batch.inspect import inspect_batch, memory_bound

    folder = tmp_path / "scenes"
    folder.mkdir()
    good = make_scene(height=64, width=96)
    good.rename(folder / "good.tif")
    bad = make_scene("int16.tif", dtype="int16", height=32, width=32)
    bad.rename(folder / "int16.tif")
    bundle = make_bundle(TINY_UNET)
    args = ("--block-size", "64", "--tile-size", "256", "--probabilities")
    result = invoke("inspect", folder, "-m", bundle, "--json", *args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    plan = plan_batch([folder], bundle, None, None,
                      {"predict": {"block_size": 64, "tile_size": 256, "probabilities": True}})
    rows = inspect_batch(plan)
    assert printed == {"scenes_found": 2, "scenes": [r.as_dict() for r in rows],
                       "memory": memory_bound(plan, rows)}
    ok, failed = rows
    assert ok.size == (64, 96) and ok.dtype == "uint16" and ok.blocks == 1 and ok.tiles
    assert ok.bands == {b: f"good.tif#{i}" for i, b in enumerate(("B02", "B03", "B04", "B08"), 1)}
    assert failed.error and "int16" in failed.error and failed.size is None
    table = invoke("inspect", folder, "-m", bundle, *args)
    assert table.exit_code == 0, table.output
    for text in ("good", "96×64", "uint16", str(ok.peak_memory_mib), "int16", "error"):
        assert text in table.output
