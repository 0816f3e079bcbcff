"""Issue 15, hostile input: configs. Settings that are wrong for every scene, malformed files and
values in the wrong format are refused once, when the config is loaded, as a one-line
ConfigError naming the file and field (the CLI prints it and exits with status 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from geoseg.config import MAX_CONFIG_BYTES, load_config
from geoseg.errors import ConfigError


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` from ``"a.b"``."""
    *parents, leaf = dotted.split(".")
    out: dict[str, Any] = {leaf: value}
    for key in reversed(parents):
        out = {key: out}
    return out


def _refused(overrides: dict[str, Any], field: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    message = str(caught.value)
    assert field in message and "\n" not in message and "\r" not in message, message
    return message


# --- numbers ---------------------------------------------------------------------------------

INT_FIELDS = ["predict.tile_size", "predict.halo", "predict.block_size", "predict.batch_size",
              "vectorize.block_size", "run.quicklook_size", "cluster.workers",
              "cluster.threads_per_worker", "cluster.gpus", "cluster.gpu_tasks",
              "cluster.allowed_failures", "cluster.retries", "cluster.slurm.cpus",
              "cluster.slurm.gpus", "cluster.slurm.array_tasks", "cluster.slurm.array_parallel",
              "cluster.slurm.jobs", "cluster.slurm.processes", "cluster.pbs.cpus",
              "cluster.kubernetes.workers", "cluster.kubernetes.gpus",
              "cluster.kubernetes.array_tasks", "cluster.kubernetes.array_parallel",
              "cluster.cpu_task_threads", "cluster.cpu_workers", "run.scenes_in_flight"]


@pytest.mark.parametrize("field", INT_FIELDS)
def test_a_boolean_is_not_a_whole_number(field: str) -> None:
    assert "boolean" in _refused(_nested(field, True), field)
    _refused(_nested(field, "512"), field)  # no string → int either
    _refused(_nested(field, 512.5), field)


@pytest.mark.parametrize("field", ["vectorize.min_area_m2", "vectorize.simplify_m",
                                   "run.band_fill", "cluster.stall_timeout"])
def test_a_boolean_is_not_a_number(field: str) -> None:
    assert "boolean" in _refused(_nested(field, True), field)
    load_config(None, _nested(field, 2))  # ints still are


def test_tile_size_true_in_a_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("predict:\n  tile_size: true\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*predict\.tile_size: got true"):
        load_config(path)


@pytest.mark.parametrize(("tile", "halo", "ok"), [(512, 255, True), (512, 256, False),
                                                 (512, 400, False), (33, 16, True),
                                                 (33, 17, False)])
def test_halo_must_leave_a_core(tile: int, halo: int, ok: bool) -> None:
    overrides = {"predict": {"tile_size": tile, "halo": halo}}
    if ok:
        load_config(None, overrides)
    else:
        assert "tile_size" in _refused(overrides, "predict.halo")
    load_config(None, {"predict": {"halo": 4096}})  # tile_size from the bundle: checked later


# --- device and layer ----------------------------------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_known_devices_load(device: str) -> None:
    assert load_config(None, {"predict": {"device": device}}).predict.device == device


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", " cpu", "cpu\n",
                                    "", "tpu", "cuda:0;rm"])
def test_unknown_devices_are_refused(device: str) -> None:
    assert "auto, cpu, cuda" in _refused({"predict": {"device": device}}, "predict.device")


@pytest.mark.parametrize("layer", ["landcover", "land cover", "Landnutzung_2024", "couverture-sol",
                                   "x" * 63])
def test_plain_layer_names_load(layer: str) -> None:
    assert load_config(None, {"vectorize": {"layer": layer}}).vectorize.layer == layer


@pytest.mark.parametrize("layer", ["", " landcover", "landcover ", "land\ncover", "land\tcover",
                                   "a\x00b", "gpkg_contents", "GPKG_SPATIAL_REF_SYS",
                                   "rtree_landcover_geom", "sqlite_master", "layer_styles",
                                   "x" * 64])
def test_bad_layer_names_are_refused(layer: str) -> None:
    _refused({"vectorize": {"layer": layer}}, "vectorize.layer")


# --- memory, durations and scheduler names -------------------------------------------------


@pytest.mark.parametrize("memory", ["16GiB", "32GB", "500MB", "1.5 GiB", "2048"])
def test_memory_sizes_load(memory: str) -> None:
    load_config(None, {"cluster": {"slurm": {"memory": memory}, "pbs": {"memory": memory}}})


@pytest.mark.parametrize("memory", ["16 gigs", "", "GiB", "0", "0GiB", "-4GiB", "nan", "inf",
                                    "16GiB\n", "1e3MB", "16GiB;x"])
@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_bad_memory_sizes_are_refused_with_an_example(kind: str, memory: str) -> None:
    message = _refused({"cluster": {kind: {"memory": memory}}}, f"cluster.{kind}.memory")
    assert "16GiB" in message


@pytest.mark.parametrize(("field", "value"), [
    ("cluster.slurm.walltime", "1 hour"), ("cluster.slurm.walltime", "04:00:00\n#SBATCH -x"),
    ("cluster.slurm.driver_walltime", "1:2:3:4"), ("cluster.slurm.lifetime", "soon"),
    ("cluster.slurm.lifetime_stagger", "0s"), ("cluster.slurm.partition", "gpu a100"),
    ("cluster.slurm.partition", "gpu,"), ("cluster.slurm.account", "eo;id"),
    ("cluster.slurm.qos", "-x"), ("cluster.slurm.gpu_type", "a100:2"),
    ("cluster.slurm.directives", ["constraint=ib"]), ("cluster.slurm.directives", ["--x\n-y"]),
    ("cluster.slurm.log_directory", "my logs"), ("cluster.slurm.log_directory", "$(id)"),
    ("cluster.slurm.python", "python; id"), ("cluster.slurm.interface", "eth0 lo"),
    ("cluster.pbs.queue", "gpu queue"), ("cluster.pbs.resource_spec", "select=1 -W x"),
    ("cluster.resources", {"GPU=1,X": 1}),
])
def test_scheduler_values_in_the_wrong_format_are_refused(field: str, value: Any) -> None:
    _refused(_nested(field, value), field)


def test_scheduler_values_in_their_format_load() -> None:
    cfg = load_config(None, {"cluster": {"slurm": {
        "walltime": "30", "driver_walltime": "2-12", "lifetime": "55m", "partition": "gpu,cpu",
        "account": "eo-project.2", "gpu_type": "a100_80g", "log_directory": "/scratch/%u/logs",
        "directives": ["--constraint=a100&ib", "-C ib", "--comment=\"a b\""],
        "interface": "ib0"}, "pbs": {"queue": "gpu@server", "resource_spec": "select=1:ncpus=8"}}})
    assert cfg.cluster.slurm.partition == "gpu,cpu"


# --- job ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "argv"), [
    ("geoseg", ["geoseg"]), ("python -m geoseg", ["python", "-m", "geoseg"]),
    ("'/opt/my tools/geoseg' -v", ["/opt/my tools/geoseg", "-v"]),
    (["python", "-m", "geoseg"], ["python", "-m", "geoseg"]),
    (["/opt/geoseg $(v2)/geoseg"], ["/opt/geoseg $(v2)/geoseg"]),  # a list is taken literally
])
def test_commands_are_argv_lists(command: Any, argv: list[str]) -> None:
    assert load_config(None, {"cluster": {"job": {"command": command}}}).cluster.job.command == argv


@pytest.mark.parametrize("command", ["geoseg; id", "geoseg && id", "$HOME/bin/geoseg",
                                     "`which geoseg`", "geoseg > log", "~/bin/geoseg",
                                     "'geoseg", "", [], [""], ["-x"], ["X=1", "geoseg"],
                                     ["geoseg", ""], "geoseg\nid", ["geo\rseg"]])
def test_commands_needing_a_shell_or_not_a_program_are_refused(command: Any) -> None:
    _refused({"cluster": {"job": {"command": command}}}, "cluster.job.command")


@pytest.mark.parametrize("line", ["module load cuda/12.4", "source \"$HOME/.venv/bin/activate\"",
                                  "export PATH=/opt/bin:$PATH  # ours first",
                                  "cd \"$(mktemp -d)\"", "cat <<< here-string"])
def test_setup_lines_are_shell(line: str) -> None:
    load_config(None, {"cluster": {"job": {"setup": [line]}}})


@pytest.mark.parametrize("line", ["echo 'open", "echo \"open", "line \\", "cat <<EOF", "",
                                  "a\nb", "a\rb", "a\x1b[2Jb", "a\u2028b"])
def test_setup_entries_must_be_one_complete_line(line: str) -> None:
    _refused({"cluster": {"job": {"setup": ["module load x", line]}}}, "cluster.job.setup")


@pytest.mark.parametrize(("field", "value"), [
    ("cluster.job.name", "../escape"), ("cluster.job.name", "a/b"), ("cluster.job.name", ".hidden"),
    ("cluster.job.name", "-x"), ("cluster.job.name", "x" * 65), ("cluster.job.name", "näme"),
    ("cluster.job.inputs", ["--scheduler=tcp://elsewhere"]), ("cluster.job.inputs", []),
    ("cluster.job.model", "-m"), ("cluster.job.out", ""), ("cluster.job.config", "--help"),
    ("cluster.job.out", "out\n"),
])
def test_job_names_and_paths_are_refused(field: str, value: Any) -> None:
    _refused(_nested(field, value), field)


@pytest.mark.parametrize(("field", "value"), [
    ("cluster.kubernetes.namespace", "EO"), ("cluster.kubernetes.namespace", "eo\nx: y"),
    ("cluster.kubernetes.namespace", "x" * 64), ("cluster.kubernetes.image", "geoseg:1\n  a: b"),
    ("cluster.kubernetes.image", "Registry/Geoseg"), ("cluster.kubernetes.image", "a b"),
    ("cluster.kubernetes.cpu", "eight"), ("cluster.kubernetes.cpu", "0"),
    ("cluster.kubernetes.memory", "16GB"), ("cluster.kubernetes.volume_claim", "Data"),
    ("cluster.kubernetes.mount_path", "data"), ("cluster.kubernetes.mount_path", "/data/../etc"),
    ("cluster.kubernetes.service_account", "a_b"),
    ("cluster.kubernetes.node_selector", {"a b": "c"}),
    ("cluster.kubernetes.node_selector", {"gpu": "x;y"}),
])
def test_kubernetes_values_in_the_wrong_format_are_refused(field: str, value: Any) -> None:
    _refused(_nested(field, value), field)


def test_kubernetes_values_in_their_format_load() -> None:
    k8s = load_config(None, {"cluster": {"kubernetes": {
        "image": "registry.example.org:5000/eo/geoseg:1.2.3@sha256:" + "a" * 64,
        "namespace": "eo-2", "cpu": "3500m", "memory": "1.5Gi", "volume_claim": "eo.scenes",
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "zone": ""},
    }}}).cluster.kubernetes
    assert (k8s.whole_cores, k8s.memory_bytes) == (3, int(1.5 * 2**30))


def test_every_string_refuses_control_characters() -> None:
    for field in ["cluster.scheduler", "cluster.memory_limit", "cluster.slurm.python"]:
        _refused(_nested(field, "x\ny"), field)


# --- files -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("predict:\n  tile_size: 512\n  block_size: 1\n  tile_size: 1024\n",
     r"line 4, column 3: duplicate key 'tile_size' \(first on line 2\)"),
    ("predict: {}\nrun: {}\npredict: {}\n", r"line 3, column 1: duplicate key 'predict'"),
    ("- predict\n- run\n", "top level is a list, not a mapping"),
    ("just text\n", "top level is a str, not a mapping"),
    ("predict: [\n", "line 2, column 1"),
    ("predict:\n  device: \"\x07\"\n", "U\\+0007 is not allowed"),
])
def test_malformed_yaml_is_one_line_naming_the_file(tmp_path: Path, text: str,
                                                    expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("cluster:\n  slurm: &jobs {cpus: 2, memory: 4GiB}\n"
                    "  pbs:\n    <<: *jobs\n    cpus: 8\n")
    assert load_config(path).cluster.pbs.cpus == 8


@pytest.mark.parametrize(("data", "expected"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"predict:\n  device: caf\xe9\n", r"not UTF-8 text \(byte 0xe9 at offset 22\)"),
    (b"\xff\xfep\x00r\x00", "UTF-16 text; save the config as UTF-8"),
    (b"# " + b"x" * MAX_CONFIG_BYTES, "larger than 1 MiB"),
])
def test_binary_and_non_utf8_files(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_a_utf8_bom_and_an_empty_file_load(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfpredict:\n  device: cpu\n")
    assert load_config(path).predict.device == "cpu"
    path.write_text("")
    assert load_config(path).predict.device == "auto"


def test_the_cli_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    # in this process (click's runner keeps stderr apart): what is printed, and the exit
    # status, are the command's own
    from click.testing import CliRunner

    from geoseg.cli import main

    for name, data in [("bin.yaml", b"\x00\x01\x02"), ("dup.yaml", b"run: {}\nrun: {}\n"),
                       ("bool.yaml", b"predict: {tile_size: true}\n")]:
        path = tmp_path / name
        path.write_bytes(data)
        done = CliRunner().invoke(main, ["config", "show", "-c", str(path)])
        assert done.exit_code == 1 and isinstance(done.exception, SystemExit), done.output
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), done.stderr
        assert "Traceback" not in done.stderr


def test_every_preset_dumps_and_reloads(tmp_path: Path) -> None:
    """What `geoseg config show` prints is a config that loads to the same thing."""
    for preset in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        cfg = load_config(preset)
        again = tmp_path / preset.name
        again.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        assert load_config(again) == cfg, preset.name
