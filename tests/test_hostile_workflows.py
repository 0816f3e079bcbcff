"""Issue 15, hostile input: rendered workflows (`geoseg workflow render`). A matrix of hostile
values in every field that reaches a Slurm script or a Kubernetes manifest: each is either
refused when the config is loaded (a ConfigError naming the field), or rendered harmlessly:
`bash -n` accepts each sbatch script, every ``#SBATCH`` line stays in the header block before
the first command, the command's arguments come back exactly, and the YAML parses to the same
structure as the benign rendering with the value as a plain string. Files stay inside --out and
existing ones are only replaced with --overwrite."""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from geoseg.config import load_config
from geoseg.errors import ConfigError, OutputExistsError
from geoseg.workflows import render_workflow, write_workflow

from .conftest import REPO

FULL = REPO / "tests" / "golden" / "workflows" / "full.yaml"
BASE: dict[str, Any] = yaml.safe_load(FULL.read_text())

HOSTILE = ["a\nb", "a\rb", "x;id", "$(id)", "`id`", "it's", 'say "hi"', "a#b", "../x",
           "ünïcødé ✓", "-x", "a b", "a\u2028b", "a\x00b", "{a: b}", "*", "a: b", "${HOME}",
           "\\", "'; id; '"]

#: field (dotted; [0] indexes a list) → does it reach the Slurm scripts, the k8s manifests?
FIELDS = {
    "cluster.slurm.partition": "slurm", "cluster.slurm.account": "slurm",
    "cluster.slurm.qos": "slurm", "cluster.slurm.walltime": "slurm",
    "cluster.slurm.driver_walltime": "slurm", "cluster.slurm.gpu_type": "slurm",
    "cluster.slurm.directives[0]": "slurm", "cluster.slurm.log_directory": "slurm",
    "cluster.slurm.memory": "slurm",
    "cluster.job.name": "both", "cluster.job.command[0]": "both", "cluster.job.command": "both",
    "cluster.job.inputs[0]": "both", "cluster.job.model": "both", "cluster.job.out": "both",
    "cluster.job.config": "slurm", "cluster.job.setup[1]": "slurm",
    "cluster.kubernetes.image": "k8s", "cluster.kubernetes.namespace": "k8s",
    "cluster.kubernetes.volume_claim": "k8s", "cluster.kubernetes.mount_path": "k8s",
    "cluster.kubernetes.service_account": "k8s", "cluster.kubernetes.cpu": "k8s",
    "cluster.kubernetes.memory": "k8s",
    "cluster.kubernetes.node_selector[nvidia.com/gpu.product]": "k8s",
}


def _with(field: str, value: Any) -> tuple[dict[str, Any], Any]:
    """A copy of the full config with ``field`` set to ``value``, and the benign value."""
    data = copy.deepcopy(BASE)
    data["cluster"]["job"].setdefault("command", ["geoseg"])
    field, _, index = field.partition("[")
    *parents, leaf = field.split(".")
    node = data
    for key in parents:
        node = node[key]
    if index:
        node, leaf = node[leaf], int(index[:-1]) if index[:-1].isdigit() else index[:-1]
    benign = node[leaf]
    node[leaf] = value
    return data, benign


def _render(kind: str, data: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return render_workflow(kind, load_config(path), "job.yaml", path.read_text())


def _sbatch_header_holds(text: str) -> int:
    """The number of ``#SBATCH`` lines, all before the first command (sbatch stops there)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert not [line for line in lines[first:] if line.lstrip().startswith("#SBATCH")], text
    return sum(line.startswith("#SBATCH") for line in lines[:first])


def _geoseg_argv(text: str) -> list[str]:
    """The arguments of the script's last command (geoseg's), as bash splits them."""
    return shlex.split(text.replace("\\\n", " ").rstrip().splitlines()[-1])


def _k8s_expand(value: Any) -> Any:
    """What a container sees of a command argument: Kubernetes turns ``$$`` into ``$``."""
    return value.replace("$$", "\0").replace("\0", "$") if isinstance(value, str) else value


def _same_structure(benign: Any, hostile: Any, old: Any, new: Any, where: str = "") -> int:
    """Assert ``hostile`` is ``benign`` with ``old`` replaced by ``new`` in strings; count the
    strings that changed."""
    if isinstance(benign, dict):
        assert isinstance(hostile, dict) and list(benign) == list(hostile), where
        return sum(_same_structure(benign[k], hostile[k], old, new, f"{where}.{k}")
                   for k in benign)
    if isinstance(benign, list):
        assert isinstance(hostile, list) and len(benign) == len(hostile), where
        expand = where.endswith(".command")
        return sum(_same_structure(b, _k8s_expand(h) if expand else h, old, new, f"{where}[{i}]")
                   for i, (b, h) in enumerate(zip(benign, hostile, strict=True)))
    assert type(benign) is type(hostile), (where, benign, hostile)
    if benign == hostile:
        return 0
    assert isinstance(benign, str) and isinstance(old, str) and isinstance(new, str), where
    assert hostile == benign.replace(old, new), (where, benign, hostile)
    return 1


def _load_all(text: str) -> list[Any]:
    """The YAML documents of ``text`` (libyaml's parser where PyYAML has it: the same documents
    as ``yaml.safe_load_all``, several times faster)."""
    return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


BENIGN: dict[str, dict[str, str]] = {}
BENIGN_DOCS: dict[str, list[Any]] = {}


def _benign(kind: str, tmp_path: Path) -> dict[str, str]:
    if kind not in BENIGN:
        data, _ = _with("cluster.job.name", "geoseg-full")
        BENIGN[kind] = _render(kind, data, tmp_path)
    return BENIGN[kind]


def _benign_docs(name: str, text: str) -> list[Any]:
    """The documents of the benign rendering ``name`` (``text``), less the ConfigMaps' config
    files; parsed once. Callers do not change them."""
    if name not in BENIGN_DOCS:
        docs = _load_all(text)
        for doc in docs:
            doc.get("data", {}).pop("config.yaml", None)
        BENIGN_DOCS[name] = docs
    return BENIGN_DOCS[name]


#: Every field × every hostile value × (the value alone, the benign value + it): 1000 cases,
#: in `make test`. The fast tier (`-m "not slow"`) runs a fifth of them, spread so that every
#: field meets 8 and every value 10, in both forms; the rest are marked slow.
SPREAD = 5


def _matrix() -> list[Any]:
    cases = []
    for i, field in enumerate(sorted(FIELDS)):
        for j, value in enumerate(HOSTILE):
            for suffix in (False, True):
                fast = (i + j + suffix) % SPREAD == 0
                cases.append(pytest.param(
                    field, value, suffix, marks=() if fast else pytest.mark.slow,
                    id=f"{field}-{ascii(value)}-{'benign+value' if suffix else 'value'}"))
    return cases


@pytest.mark.parametrize(("field", "value", "suffix"), _matrix())
def test_hostile_values_are_refused_or_rendered_harmlessly(field: str, value: str, suffix: bool,
                                                           tmp_path: Path) -> None:
    data, old = _with(field, value)
    if suffix:
        if not isinstance(old, str):
            return
        data, old = _with(field, old + value)
        value = old + value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        name = field.split("[")[0]
        assert name in str(exc) and "\n" not in str(exc) and "\r" not in str(exc), str(exc)
        return
    assert not any(c in value for c in "\n\r\x00\u2028"), "a line break was let through"
    command = cfg.cluster.job.command
    kinds = ["slurm", "k8s"] if FIELDS[field] == "both" else [FIELDS[field]]
    for kind in kinds:
        try:
            files = render_workflow(kind, cfg, "job.yaml", path.read_text())
        except ConfigError as exc:  # whole-config checks: k8s names, setup lines bash rejects
            assert field.split("[")[0] in str(exc) and "\n" not in str(exc), str(exc)
            continue
        benign = _benign(kind, tmp_path)
        for name, text in files.items():
            benign_name = name.replace(cfg.cluster.job.name, "geoseg-full")
            same = benign[benign_name]
            if kind == "slurm":
                done = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
                assert done.returncode == 0, (name, done.stderr, text)
                assert _sbatch_header_holds(text) == _sbatch_header_holds(same), text
                argv = _geoseg_argv(text)
                assert argv[:len(command) + 1] == [*command, "run"], (argv, text)
                for arg in ("inputs", "model", "out", "config"):
                    if field.startswith(f"cluster.job.{arg}"):
                        assert value in argv, (argv, text)
                continue
            docs = _load_all(text)
            (config_map, *_) = [d for d in docs if d["kind"] == "ConfigMap"]
            assert config_map["data"].pop("config.yaml") == path.read_text()
            want = _benign_docs(benign_name, same)
            if field == "cluster.job.command":  # a legacy string, split like a shell would
                for doc in docs:
                    for pod in [doc["spec"]["template"]["spec"]] if "template" in str(doc) else []:
                        argv = [_k8s_expand(a) for a in pod["containers"][0]["command"]]
                        assert argv[0] == "dask" or argv[:len(command)] == command, argv
                continue
            assert _same_structure(want, docs, old, value) > 0, (field, value)


@pytest.mark.parametrize("line", ["fi", ";", "done", "echo $((", "if true; then"])
def test_setup_lines_bash_cannot_parse_are_refused_at_render(line: str, tmp_path: Path) -> None:
    data, _ = _with("cluster.job.setup[1]", line)
    with pytest.raises(ConfigError, match=r"cluster\.job\.setup: the rendered geoseg-full-"):
        _render("slurm", data, tmp_path)


@pytest.mark.parametrize("word", ["if", "then", "time", "while"])
def test_a_command_named_like_a_shell_keyword_stays_a_command(word: str, tmp_path: Path) -> None:
    data, _ = _with("cluster.job.command", [word, "-m", "geoseg"])
    for text in _render("slurm", data, tmp_path).values():
        assert f"\n'{word}' -m geoseg run " in text


def test_k8s_needs_a_dns_job_name(tmp_path: Path) -> None:
    data, _ = _with("cluster.job.name", "EO_run")
    _render("slurm", data, tmp_path)  # Slurm takes it
    with pytest.raises(ConfigError, match=r"cluster\.job\.name 'EO_run' cannot name Kubernetes"):
        _render("k8s", data, tmp_path)
    data, _ = _with("cluster.job.name", "x" * 51)
    with pytest.raises(ConfigError, match="at most 50 characters"):
        _render("k8s", data, tmp_path)


def test_the_privileged_container_example_is_refused(tmp_path: Path) -> None:
    image = "geoseg:1\n          securityContext: {privileged: true}"
    data, _ = _with("cluster.kubernetes.image", image)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"cluster\.kubernetes\.image"):
        load_config(tmp_path / "job.yaml")


def test_a_config_path_with_a_line_break_is_refused() -> None:
    with pytest.raises(ConfigError, match="config path"):
        render_workflow("slurm", load_config(FULL), "a\nb.yaml", FULL.read_text())


def test_dollar_is_literal_in_k8s_commands(tmp_path: Path) -> None:
    data, _ = _with("cluster.job.model", "/m/$(HOME)/x")
    text = _render("k8s", data, tmp_path)["geoseg-full-indexed-job.yaml"]
    (job,) = [d for d in yaml.safe_load_all(text) if d["kind"] == "Job"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "/m/$$(HOME)/x" in command  # Kubernetes reads $$ as $ and expands no variable
    assert "$(JOB_COMPLETION_INDEX)/16" in command  # but expands the pod's index


# --- object storage: the Secret's name, the scratch size, hostile URIs ---------------------


def _cloud(tmp_path: Path, **kubernetes: Any) -> Path:
    """The full config turned into an object-storage job (no claim), with ``kubernetes`` set."""
    data = copy.deepcopy(BASE)
    data["cluster"]["kubernetes"].update(volume_claim=None, **kubernetes)
    data["cluster"]["job"].update(inputs=["s3://eo/scenes/"], out="s3://eo/maps/",
                                  model="/opt/models/landcover.safetensors")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


@pytest.mark.parametrize("name", [*HOSTILE, "Geoseg-S3", "geoseg_s3", "-s3", "s3-", "a..b", ".s3",
                                  "x" * 254, "", "geoseg s3", "s3/creds"])
def test_hostile_secret_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_cloud(tmp_path, secret=name))
    assert "cluster.kubernetes.secret" in str(caught.value)
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)


@pytest.mark.parametrize("name", ["geoseg-s3", "s3.prod.eo", "a",
                                  ".".join(["x" * 63, "y" * 63, "z" * 63, "w" * 61])])
def test_dns_subdomain_secret_names_are_taken(name: str, tmp_path: Path) -> None:
    path = _cloud(tmp_path, secret=name)
    files = render_workflow("k8s", load_config(path), "job.yaml", path.read_text())
    pods = [d["spec"]["template"]["spec"] for text in files.values() for d in _load_all(text)
            if d["kind"] in ("Deployment", "Job")]
    refs = [c["envFrom"] for pod in pods for c in pod["containers"] if "envFrom" in c]
    assert refs == [[{"secretRef": {"name": name}}]] * 3  # worker, driver, array pod


@pytest.mark.parametrize("size", ["50Gi\nx", "-1Gi", "0", "lots", "50 Gi", "$(SIZE)", ""])
def test_hostile_scratch_sizes_are_refused(size: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.kubernetes\.scratch_size"):
        load_config(_cloud(tmp_path, scratch_size=size))


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_uris_render_harmlessly_without_a_claim(value: str, tmp_path: Path) -> None:
    """A hostile object key in an input URI is refused naming the field, or reaches the driver's
    command as one argument, literally (``$`` escaped), with no claim and nothing else changed."""
    path = _cloud(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["cluster"]["job"]["inputs"] = [f"s3://eo/{value}"]
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert "cluster.job.inputs" in str(exc) and "\n" not in str(exc)
        return
    files = render_workflow("k8s", cfg, "job.yaml", path.read_text())
    benign = render_workflow("k8s", load_config(_cloud(tmp_path)), "job.yaml", "")
    for name, text in files.items():
        assert "persistentVolumeClaim" not in text
        docs = [d for d in _load_all(text) if d["kind"] != "ConfigMap"]
        want = [d for d in _load_all(benign[name]) if d["kind"] != "ConfigMap"]
        assert _same_structure(want, docs, "s3://eo/scenes/", f"s3://eo/{value}") == 1, name


# --- files stay inside --out --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x.sbatch", "a/b.sbatch", "/tmp/x.sbatch", ".hidden", ".."])
def test_file_names_cannot_leave_the_folder(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="would leave"):
        write_workflow({name: "x"}, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.sbatch").exists()


def test_existing_files_are_kept_without_overwrite(tmp_path: Path) -> None:
    files = {"a-array.sbatch": "new\n", "a-driver.sbatch": "new\n"}
    (tmp_path / "a-driver.sbatch").write_text("mine\n")
    with pytest.raises(OutputExistsError, match="a-driver.sbatch exists already; pass "
                                                "--overwrite"):
        write_workflow(files, tmp_path)
    assert (tmp_path / "a-driver.sbatch").read_text() == "mine\n"
    assert not (tmp_path / "a-array.sbatch").exists()  # nothing written
    written = write_workflow(files, tmp_path, overwrite=True)
    assert [p.read_text() for p in written] == ["new\n", "new\n"]
    assert all(os.access(p, os.X_OK) for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no temporary left


def test_overwrite_replaces_a_link_and_never_writes_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a-dask.yaml").symlink_to(outside)
    with pytest.raises(OutputExistsError):
        write_workflow({"a-dask.yaml": "new\n"}, out)
    write_workflow({"a-dask.yaml": "new\n"}, out, overwrite=True)
    assert outside.read_text() == "keep\n"
    assert not (out / "a-dask.yaml").is_symlink() and (out / "a-dask.yaml").read_text() == "new\n"


def test_a_folder_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a-dask.yaml").mkdir()
    with pytest.raises(OutputExistsError, match="is a folder"):
        write_workflow({"a-dask.yaml": "x"}, tmp_path, overwrite=True)


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path: Path) -> None:
    # in this process (click's runner keeps stderr apart): the refusal and its exit status are
    # the command's own, not a subprocess's
    from click.testing import CliRunner

    from geoseg.cli import main

    command = ["workflow", "render", "k8s", "-c", str(FULL), "-o", str(tmp_path)]
    first = CliRunner().invoke(main, command)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, command)
    assert again.exit_code == 1 and "--overwrite" in again.stderr, again.output
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    forced = CliRunner().invoke(main, [*command, "--overwrite"])
    assert forced.exit_code == 0, forced.output
