"""Issue 15, hostile input: scene file names and paths.

Covers the class "names an attacker or an unlucky user picks": scene names that collide
(``sub1/dup.tif``, ``sub2/dup.tif`` and a real ``dup-2.tif``; case-insensitive twins), one file
reached by several spellings (relative, absolute, ``..``, symlinks, hard links, globs through
symlink loops), reserved and awkward stems (report files, geoseg's state folders, hidden, empty,
too long, control characters, shell/HTML/markup metacharacters, bytes that are not UTF-8),
geoseg's own earlier outputs inside an input tree, and ``report.html`` links (percent-encoded
relative paths, never a scheme, scripts forbidden by a Content-Security-Policy).

Discovery and naming are tested on real (dummy) files in tmp dirs without reading pixels; the
end-to-end checks run `geoseg run` through click's CliRunner on tiny scenes and a tiny bundle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
from click.testing import CliRunner

from geoseg.batch import discover
from geoseg.batch.discover import NAME_BYTES, SceneSource, readable, safe_name, unique_names
from geoseg.batch.report import CSP, build_report, href, write_html
from geoseg.batch.runner import select_split
from geoseg.batch.state import (
    NAME_MAX_BYTES,
    RESERVED_NAMES,
    atomic_write_json,
    atomic_write_text,
)
from geoseg.cli import main

from .conftest import BANDS, coherent_field, write_raster

#: Every file name geoseg derives from a scene name, longest last (see runner, writers, gpkg).
DERIVED = ("{n}", ".partial-{n}", ".old-{n}", "{n}.tif", "{n}.gpkg", "{n}.confidence.tif",
           "{n}.failed.json", "{n}.probabilities.tif",
           ".{n}.probabilities.tif.4194304-0123abcd.stage.tif.aux.xml")
SAFE = re.compile(r"^[\w-]+$")  # \w: letters and digits of any script, and _


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names_of(sources: list[SceneSource]) -> dict[str, str]:
    """Scene name → the resolved path of its raster or band folder."""
    return {s.name: os.path.realpath(s.path) for s in sources}


def assert_safe(name: str) -> None:
    """``name`` is usable as a folder and file stem everywhere, with every suffix geoseg adds."""
    assert SAFE.match(name), name
    assert not name.startswith(("-", ".")), name
    assert not any(unicodedata.category(ch)[0] == "C" for ch in name), name
    assert unicodedata.normalize("NFC", name) == name
    folded = name.casefold()
    assert folded not in RESERVED_NAMES and folded not in {"con", "nul", "aux", "prn"}, name
    assert len(name.encode()) <= NAME_BYTES
    for pattern in DERIVED:
        assert len(pattern.format(n=name).encode()) <= NAME_MAX_BYTES, (pattern, name)


# --- collisions ----------------------------------------------------------------------------


def test_dup_and_a_real_dup_2_get_distinct_names(tmp_path) -> None:
    a = touch(tmp_path / "in" / "sub1" / "dup.tif")
    b = touch(tmp_path / "in" / "sub2" / "dup.tif")
    c = touch(tmp_path / "in" / "dup-2.tif")
    found = discover([tmp_path / "in"])
    assert names_of(found) == {"dup-2": str(c.resolve()), "dup": str(a.resolve()),
                               "dup-3": str(b.resolve())}
    assert {s.original for s in found} == {"dup", "dup-2"}


def test_names_are_unique_case_insensitively_and_after_sanitizing(tmp_path) -> None:
    for rel in ("a/Scene.tif", "b/scene.tif", "c/SCENE.tiff", "d/scene-2.tif", "e/a;b.tif",
                "f/a b.tif", "g/a_b.tif", "h/Ǆ.tif", "i/ǆ.tif", "j/e\u0301.tif", "k/\u00e9.tif"):
        touch(tmp_path / rel)
    found = discover([tmp_path])
    keys = [unicodedata.normalize("NFKC", s.name.casefold()) for s in found]
    assert len(found) == 11 and len(set(keys)) == 11, [s.name for s in found]
    for s in found:
        assert_safe(s.name)


def test_names_are_the_same_for_every_spelling_order_and_split(tmp_path, monkeypatch) -> None:
    """Resume and --split I/N rely on every job computing the same names."""
    for rel in ("sub1/dup.tif", "sub2/dup.tif", "dup-2.tif", "x_B02.tif", "x_B03.tif",
                "Dup.tif"):
        touch(tmp_path / "in" / rel)
    monkeypatch.chdir(tmp_path)
    runs = [
        discover(["in"]),
        discover([str(tmp_path / "in")]),
        discover(["in/sub2/dup.tif", "in/dup-2.tif", "in/Dup.tif", "in/sub1", "in/x_B0*.tif"]),
        discover(["in/**/*.tif"]),
        discover(["in/sub1/../"]),
    ]
    reference = names_of(runs[0])
    assert len(reference) == 5
    for found in runs[1:]:
        assert names_of(found) == reference
    jobs = [select_split(discover(["in"]), (i, 3)) for i in range(3)]
    assert sorted(s.name for job in jobs for s in job) == sorted(reference)


def test_unique_names_never_takes_another_scenes_name() -> None:
    assert unique_names(["dup-2", "dup", "dup", "Dup", "dup-3"]) == [
        "dup-2", "dup", "dup-4", "Dup-5", "dup-3"]
    long = "x" * NAME_BYTES
    names = unique_names([long] * 12)
    assert len({n.casefold() for n in names}) == 12
    assert all(len(n.encode()) <= NAME_BYTES for n in names)


# --- one file, many spellings ----------------------------------------------------------------


def test_one_file_by_many_spellings_is_one_scene(tmp_path, monkeypatch) -> None:
    real = touch(tmp_path / "data" / "sub" / "scene.tif")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "alias.tif").symlink_to(real)
    (tmp_path / "links" / "dir").symlink_to(real.parent, target_is_directory=True)
    os.link(real, tmp_path / "data" / "hardlink.tif")
    monkeypatch.chdir(tmp_path)
    found = discover([
        "data/sub/scene.tif", str(real), "data/sub/../sub/scene.tif", "./data//sub/scene.tif",
        "links/alias.tif", "links/dir", "links/dir/scene.tif", "data", "data/**/*.tif",
        "links/*", "data/hardlink.tif",
    ])
    assert len(found) == 1
    (scene,) = found
    assert scene.name in ("scene", "hardlink")
    assert os.path.samefile(scene.path, real)
    assert not Path(scene.path).is_symlink()  # a spelling without links is kept


def test_symlink_loops_end_the_walk_and_the_glob(tmp_path) -> None:
    root = tmp_path / "in"
    touch(root / "a" / "one.tif")
    touch(root / "b" / "two_B02.tif")
    touch(root / "b" / "two_B03.tif")
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # a loop
    (root / "b" / "up").symlink_to(root, target_is_directory=True)  # and another: 2^n paths
    (root / "a" / "side").symlink_to(root / "b", target_is_directory=True)
    (root / "self").symlink_to(root / "self")  # ELOOP
    (root / "dangling.tif").symlink_to(root / "nowhere.tif")
    result: list[list[SceneSource]] = []

    def run() -> None:
        result.append(discover([root, f"{root}/**/*.tif", f"{root}/a/up/b/up/a/*.tif",
                                f"{root}/**"]))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "discovery looped through the symlinks"
    (found,) = result
    assert sorted((s.name, s.kind) for s in found) == [("one", "raster"), ("two", "bands")]
    assert list(next(s for s in found if s.kind == "bands").bands) == ["B02", "B03"]


# --- awkward stems ---------------------------------------------------------------------------

AWKWARD = [
    "report.json.tif", "report.html.tif", "catalog.json.tif", ".geoseg.tif", ".partial-x.tif",
    ".old-x.tif", ".hidden.tif", "..tif", "....tif", "_.tif", "-rf.tif", "--help.tif",
    "a;b.tif", "new\nline.tif", "tab\there.tif", "bell\x07\x1b[31mred.tif", "\x7f.tif",
    "$(rm -rf ~).tif", "`id`.tif", "a|b&c>d.tif", "<script>alert(1)<\\script>.tif",
    "javascript:alert(1)%2F%2F.tif", "[red]markup[_red].tif", "'quote\"s&amp;.tif",
    "%00%2e%2e.tif", "con.tif", "NUL.tif", "com1.tif", "\u202egnp.tif", "zero\u200bwidth.tif",
    "x" * 250 + ".tif", "é" * 125 + ".tif", "日本語" * 27 + ".tif", "report.json_B02.tif",
    ".geoseg_B02.tif", "a;b_B8A.jp2", "\U0001f600.tif", b"bad\xff\xfebytes.tif",
]


@pytest.mark.parametrize("file_name", AWKWARD, ids=lambda n: ascii(n)[:40])
def test_awkward_stems_get_safe_names_and_keep_the_original(tmp_path, file_name) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    raw = file_name if isinstance(file_name, bytes) else os.fsencode(file_name)
    with open(os.path.join(os.fsencode(folder), raw), "w") as f:
        f.write("x")
    (scene,) = discover([folder])
    assert_safe(scene.name)
    decoded = os.fsdecode(raw)
    stem = decoded.rsplit("_", 1)[0] if scene.kind == "bands" else decoded.rsplit(".", 1)[0]
    assert scene.original == readable(stem)
    assert scene.original.encode("utf-8")  # printable, valid UTF-8
    assert not any(unicodedata.category(ch) == "Cc" for ch in scene.original)
    # the filesystem takes every output geoseg derives from the name
    out = tmp_path / "out"
    for pattern in DERIVED:
        touch(out / scene.name / pattern.format(n=scene.name))


def test_safe_name_keeps_ordinary_names() -> None:
    for name in ("T18XYZ_20200101T101010", "S2A_MSIL2A-x", "scene1", "Ελλάδα", "北京"):
        assert safe_name(name) == name


def test_long_file_names_fit_through_atomic_writes(tmp_path) -> None:
    """A failure record of a scene with the longest name is written (its temporary name
    is shortened, whatever the host name)."""
    name = unique_names([safe_name("é" * 200)] * 2)[1]
    path = tmp_path / f"{name}.failed.json"
    atomic_write_json(path, {"scene": name})
    assert json.loads(path.read_text())["scene"] == name
    atomic_write_text(tmp_path / ("y" * 255), "text \udcff")  # never fails on a surrogate
    assert (tmp_path / ("y" * 255)).read_text(encoding="utf-8") == "text \\udcff"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


# --- earlier outputs -------------------------------------------------------------------------


def fake_output_root(root: Path) -> None:
    """An output directory as geoseg leaves it (records as runner.py writes them)."""
    (root / "done").mkdir(parents=True)
    atomic_write_json(root / "done" / "scene.json",
                      {"scene": "done", "status": "ok", "outputs": {"mask": "done.tif"}})
    touch(root / "done" / "done.tif")
    touch(root / "done" / "done.confidence.tif")
    touch(root / "lost" / "lost.tif")  # scene.json lost; the report still lists it
    touch(root / ".partial-killed" / "killed.tif")
    touch(root / ".old-replaced" / "replaced.tif")
    touch(root / ".geoseg" / "x.failed.json")
    touch(root / ".x.tif.123-0123abcd.partial.tif")
    touch(root / ".x.tif.123-0123abcd.stage.tif")
    touch(root / "loose.probabilities.tif")
    atomic_write_json(root / "report.json", {
        "summary": {"ok": 2}, "scenes": [{"scene": "done"}, {"scene": "lost"}]})


def test_earlier_outputs_in_the_input_tree_are_not_scenes(tmp_path, caplog) -> None:
    inputs = tmp_path / "in"
    touch(inputs / "real.tif")
    touch(inputs / "deep" / "other.tif")
    fake_output_root(inputs / "maps")
    fake_output_root(inputs / "deep" / "old" / "maps")
    expected = ["other", "real"]
    assert sorted(s.name for s in discover([inputs])) == expected
    assert sorted(s.name for s in discover([f"{inputs}/**/*.tif"])) == expected
    assert sorted(s.name for s in discover([f"{inputs}/*/*/*.tif", inputs / "real.tif"])) == [
        "real"]
    # an old output folder, or its files, given as inputs
    assert discover([inputs / "maps" / "done", inputs / "maps" / "done" / "done.tif"]) == []
    assert discover([inputs / "maps"]) == []
    assert "output folder of geoseg" in caplog.text


def test_a_users_folder_that_merely_looks_like_output_is_walked(tmp_path) -> None:
    touch(tmp_path / "in" / "notes" / "scene.json", '{"hello": "world"}')
    touch(tmp_path / "in" / "notes" / "notes.tif")
    touch(tmp_path / "in" / "report.json", "[1, 2]")
    touch(tmp_path / "in" / "lost" / "lost.tif")
    assert sorted(s.name for s in discover([tmp_path / "in"])) == ["lost", "notes"]


# --- report.html -----------------------------------------------------------------------------


class Links(HTMLParser):
    """Every href/src of a page, and its http-equiv metas."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.meta: dict[str, str] = {}
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.scripts += tag == "script"
        self.urls += [v or "" for k, v in attrs if k in ("href", "src")]
        if tag == "meta" and a.get("http-equiv"):
            self.meta[a["http-equiv"].lower()] = a.get("content") or ""


def assert_safe_page(page: str, expected_urls: int) -> Links:
    parser = Links()
    parser.feed(page)
    assert parser.meta.get("content-security-policy") == CSP
    assert "script-src" not in CSP and "default-src 'none'" in CSP
    assert parser.scripts == 0
    assert len(parser.urls) == expected_urls
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("/"), url
        for segment in url.split("/"):
            assert segment not in ("", ".", ".."), url
            assert quote(unquote(segment, errors="surrogateescape"), safe="",
                         errors="surrogateescape") == segment, url
    return parser


def hostile_report(tmp_path: Path) -> dict:
    names = ["javascript:alert(1)%2F%2F", "a b/../../x", "<img src=x onerror=alert(1)>",
             "\udcffbad", "//evil.example/x", "data:text/html,<script>alert(1)</script>"]
    handled = []
    sources = []
    for k, raw in enumerate(names):
        s = SceneSource(raw, tmp_path / f"{raw}.tif", "raster", original=readable(raw))
        sources.append(s)
        handled.append({
            "scene": raw, "status": "ok" if k else "failed", "kind": "raster",
            "inputs": [str(s.path)], "size": [1, 2], "crs": "<b>EPSG:1</b>",
            "blocks": 1, "tiles": 2, "timings_s": {"total": 1.0},
            "outputs": {"mask": f"{raw}.tif", "thumbnail": "quicklook.png",
                        "mask-thumbnail": "mask.png"},
            "error": "<script>alert(1)</script> \udcff"})
    return build_report(sources, handled, tmp_path, {"bundle": {"file": "<b>m</b>"}})


def test_report_html_links_are_percent_encoded_relative_paths(tmp_path) -> None:
    report = hostile_report(tmp_path)
    page = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    parser = assert_safe_page(page, expected_urls=5 * len(report["scenes"]))
    assert "javascript%3Aalert%281%29%252F%252F/quicklook.png" in parser.urls
    assert "%FFbad/mask.png" in parser.urls
    assert "<script" not in page and "<img src=x" not in page and "<b>" not in page
    assert "\\xffbad" in page  # bytes that are not UTF-8 are shown, escaped
    assert "6 scenes" in page and "1 block," in page and "2 tiles" in page


def test_report_html_plurals(tmp_path) -> None:
    s = SceneSource("one", tmp_path / "one.tif", "raster")
    entry = {"scene": "one", "status": "ok", "kind": "raster", "inputs": [str(s.path)],
             "size": [1, 1], "blocks": 2, "tiles": 1, "timings_s": {"total": 0.1}}
    page = write_html(build_report([s], [entry], tmp_path, {}), tmp_path / "r.html").read_text()
    assert "1 scene:" in page and "2 blocks" in page and "1 tile;" in page
    assert "1 scenes" not in page and "1 tiles" not in page


def test_href_never_yields_a_scheme_or_a_host() -> None:
    assert href("good/quicklook.png") == "good/quicklook.png"
    assert href("javascript:alert(1)") == "javascript%3Aalert%281%29"
    assert href("//evil.example/x") == "evil.example/x"
    assert href("/etc/passwd") == "etc/passwd"
    assert href("a/../../b") == "a/b"
    assert href("a\\..\\b") == "a%5C..%5Cb"
    assert href("é ?#") == "%C3%A9%20%3F%23"


def test_report_credits_records_only_to_the_scene_they_were_made_from(tmp_path) -> None:
    """A folder left by another input under a name (an old ``dup-2``) is not this scene's."""
    out = tmp_path / "out"
    (out / "dup-2").mkdir(parents=True)
    atomic_write_json(out / "dup-2" / "scene.json", {
        "scene": "dup-2", "status": "ok", "inputs": [str(tmp_path / "sub2" / "dup.tif")],
        "outputs": {"mask": "dup-2.tif"}})
    mine = SceneSource("dup-2", tmp_path / "dup-2.tif", "raster")
    theirs = SceneSource("dup-3", tmp_path / "sub2" / "dup.tif", "raster", original="dup")
    report = build_report([mine, theirs], [], out, {})
    assert [e["status"] for e in report["scenes"]] == ["pending", "pending"]
    assert [e["inputs"] for e in report["scenes"]] == [[str(mine.path)], [str(theirs.path)]]
    assert report["scenes"][1]["original"] == "dup"


# --- end to end ------------------------------------------------------------------------------

HOSTILE_FILES = ("sub1/dup.tif", "sub2/dup.tif", "dup-2.tif", "javascript:alert(1)%2F%2F.tif",
                 "[bold]a;b[_bold] <i>.tif")


@pytest.fixture
def hostile_inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    for k, rel in enumerate(HOSTILE_FILES):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        data = (1000 + 400 * coherent_field(96, 112, seed=30 + k)).clip(1, 30000)
        write_raster(folder / rel, data.astype("uint16"), names=BANDS, block=64)
    return folder


def test_geoseg_run_maps_colliding_and_hostile_names_to_distinct_outputs(
        hostile_inputs, make_bundle, tmp_path) -> None:
    bundle = make_bundle(n_classes=3)
    out = tmp_path / "out"
    args = ["run", str(hostile_inputs), "-m", str(bundle), "-o", str(out), "--scheduler",
            "synchronous", "--no-vectorize"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    entries = report["scenes"]
    assert report["summary"]["ok"] == len(HOSTILE_FILES) == len(entries)
    inputs = {str(hostile_inputs / rel) for rel in HOSTILE_FILES}
    assert {e["inputs"][0] for e in entries} == inputs  # each input credited once
    masks = set()
    for e in entries:
        assert_safe(e["scene"])
        (source,) = e["inputs"]
        record = json.loads((out / e["scene"] / "scene.json").read_text())
        assert record["inputs"] == [source] and record["scene"] == e["scene"]
        assert record["original"] == e["original"] == Path(source).name[: -len(".tif")]
        masks.add((out / e["outputs"]["mask"]).resolve())
        assert (out / e["outputs"]["mask"]).is_file()
    assert len(masks) == len(HOSTILE_FILES)
    names = {e["original"]: e["scene"] for e in entries if "dup" in e["original"]}
    assert names == {"dup-2": "dup-2", "dup": names["dup"]}
    assert sorted(e["scene"] for e in entries if "dup" in e["original"]) == [
        "dup", "dup-2", "dup-3"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert_safe_page(page, expected_urls=sum(2 + len(e["outputs"]) for e in entries))
    assert "javascript:alert(1)%2F%2F" in page  # the original, shown as text
    # geoseg's outputs moved into the input tree are not scenes the next time
    shutil.copytree(out, hostile_inputs / "old-maps", symlinks=True)
    assert len(discover([hostile_inputs])) == len(HOSTILE_FILES)
    # a re-run computes the same names: everything is skipped
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    again = json.loads((out / "report.json").read_text())
    assert {e["scene"]: e["status"] for e in again["scenes"]} == {
        e["scene"]: "skipped" for e in entries}
