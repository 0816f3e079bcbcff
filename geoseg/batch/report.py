"""The run report: ``report.json`` for machines, ``report.html`` for people.

The report covers every scene found (not only this run's split): a scene handled by this run
has its status from it (``ok``, ``failed``, ``skipped``); any other scene is read back from the
output folder (``ok`` or ``failed`` by another job of a Slurm array, else ``pending``), when
what is there was made from this scene's files. Several jobs may write it; each write is atomic
and complete.

The page treats every name and path as hostile: text is HTML-escaped (and made
:func:`~geoseg.batch.discover.readable`), every link and picture is a relative path with each
segment percent-encoded (never a scheme), and a Content-Security-Policy forbids scripts.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from geoseg.batch.discover import SceneSource, readable
from geoseg.batch.record import STATUSES, SceneEntry
from geoseg.batch.state import (
    RECORD,
    REPORT_JSON,
    STATE_DIR,
    atomic_write_json,
    atomic_write_text,
    read_record,
)

if TYPE_CHECKING:
    from geoseg.remote.store import OutputRoot

__all__ = ["CSP", "STATUSES", "build_report", "href", "with_uris", "write_html", "write_report"]

#: The page's Content-Security-Policy: no script, no frame, no form, no fetch; pictures only
#: from the page's own origin (or its folder, opened as a file), style only inline.
CSP = ("default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'")


def _relative(entry: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    entry = dict(entry)
    name = entry["scene"]
    if "outputs" in entry:
        entry["outputs"] = {role: f"{name}/{rel}" for role, rel in entry["outputs"].items()}
    return entry


def _same_inputs(entry: dict[str, Any], source: SceneSource) -> bool:
    """True when ``entry`` (a record or failure read back from the output folder) was made from
    ``source``'s files: a folder left by another input under the same name is not credited to
    this one."""
    inputs = entry.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return False
    ours = {_same_key(f) for f in source.files}
    return all(isinstance(f, str) and _same_key(f) in ours for f in inputs)


def _same_key(path: str | os.PathLike[str]) -> str:
    """How inputs are compared: a URI as written, credentials redacted (records may keep it
    redacted; ``os.path.realpath`` would make ``s3://b/k`` a local ``$PWD/s3:/b/k``), a local
    path resolved."""
    from geoseg.remote.uri import is_remote, redact

    return redact(path) if isinstance(path, str) and is_remote(path) \
        else os.path.realpath(path)


def _pending(source: SceneSource) -> dict[str, Any]:
    """The entry of a scene that no job has finished yet."""
    from geoseg.batch.runner import shown

    return SceneEntry(scene=source.name, original=source.original, status="pending",
                      kind=source.kind, inputs=tuple(shown(f) for f in source.files)).to_json()


def build_report(
    sources: list[SceneSource],
    handled: list[dict[str, Any]],
    out_dir: Path,
    header: dict[str, Any],
    store: OutputRoot | None = None,
) -> dict[str, Any]:
    """The report dict: ``header`` plus a summary and one entry per scene in ``sources``.

    Entry output paths are relative to ``out_dir`` (or to the output root URI ``store.root``:
    they resolve against the report's own location either way). Each entry names its scene's
    input files and its name as found (``original``). Scenes this run did not handle are read
    back from ``out_dir``, or from the store when ``store`` is given (one listing of the root,
    then one GET per record or failure there that changed since this run last read it).
    """
    import json

    from geoseg.batch.runner import failure_path

    by_name = {e["scene"]: e for e in handled}
    listed = store.listing("") if store is not None and len(by_name) < len(sources) else {}
    scenes = []
    for s in sources:
        entry = by_name.get(s.name)
        if entry is None and store is not None:
            failed_key, record_key = f"{STATE_DIR}/{s.name}.failed.json", f"{s.name}/{RECORD}"
            failed = store.read_json(failed_key, listed[failed_key]) \
                if failed_key in listed else None
            record = store.read_json(record_key, listed[record_key]) \
                if record_key in listed else None
            entry = next((e for e in (failed, record)
                          if isinstance(e, dict) and _same_inputs(e, s)), None) or _pending(s)
        elif entry is None:
            try:
                failed = json.loads(failure_path(out_dir, s.name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                failed = None
            record = read_record(out_dir / s.name)
            entry = next((e for e in (failed, record)
                          if isinstance(e, dict) and _same_inputs(e, s)), None) or _pending(s)
        entry = {**entry, "original": entry.get("original") or s.original}
        scenes.append(_relative(entry, out_dir))
    summary = {status: sum(e["status"] == status for e in scenes) for status in STATUSES}
    totals: dict[str, dict[str, float]] = {}
    for e in scenes:
        for cname, c in e.get("classes", {}).items():
            t = totals.setdefault(cname, {"pixels": 0, "area_m2": 0.0})
            t["pixels"] += c["pixels"]
            t["area_m2"] += c["area_m2"]
    return {
        **header,
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "summary": {**summary, "scenes": len(scenes)},
        "class_totals": totals,
        "scenes": scenes,
    }


def write_report(report: dict[str, Any], out_dir: Path, html_too: bool = True,
                 root: str | None = None) -> Path:
    """Write ``report.json`` (and ``report.html``) atomically; return the JSON path.

    With ``root`` (the output root URI, ending in ``/``, when outputs go to an object store)
    the JSON's scene outputs are absolute URIs under it (``s3://b/maps/s2/s2.tif``); the page
    keeps relative links (a browser opens no ``s3://`` link; relative ones work wherever the
    prefix is served over HTTP) and names the root.
    """
    path = out_dir / REPORT_JSON
    atomic_write_json(path, report if root is None else with_uris(report, root))
    if html_too:
        write_html(report, out_dir / "report.html")
    return path


def with_uris(report: dict[str, Any], root: str) -> dict[str, Any]:
    """A copy of ``report`` whose scene entries' outputs (relative to the output root) are
    absolute URIs under ``root`` (which ends in ``/``)."""
    scenes = [{**e, "outputs": {k: root + v for k, v in e["outputs"].items()}}
              if isinstance(e.get("outputs"), dict) else e for e in report["scenes"]]
    return {**report, "scenes": scenes}


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.scene{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
.pics img{max-width:48%;margin-right:1%;image-rendering:pixelated;background:#eee}
.ok{color:#1a7f37}.failed{color:#c62828}.skipped{color:#6d6d6d}.pending{color:#b26a00}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #888;vertical-align:middle}
pre{white-space:pre-wrap;background:#fff4f4;padding:.5em}
.from{color:#555;font-size:.9em;overflow-wrap:anywhere}
"""


def _esc(value: Any) -> str:
    """``value`` as HTML text: :func:`~geoseg.batch.discover.readable`, then escaped."""
    return html.escape(readable(str(value)))


def href(path: str) -> str:
    """A relative URL for ``path`` (``/``-separated, relative to the page), safe in an HTML
    attribute: each segment percent-encoded, so no segment is a scheme (``javascript:``), a
    host (``//``) or markup; empty, ``.`` and ``..`` segments are dropped."""
    segments = [seg for seg in str(path).split("/")
                if seg not in ("", ".", "..")]
    return "/".join(quote(seg.encode("utf-8", "surrogateescape"), safe="") for seg in segments)


def _count(n: Any, noun: str) -> str:
    """``1 block``, ``2 blocks``, ``? blocks``."""
    return f"{_esc(n)} {noun}" + ("" if n == 1 else "s")


def _scene_html(e: dict[str, Any], colors: dict[str, str]) -> str:
    status = str(e["status"])
    parts = [f'<div class="scene"><h2>{_esc(e["scene"])} '
             f'<span class="{_esc(status)}">{_esc(status)}</span></h2>']
    original = e.get("original")
    inputs = ", ".join(_esc(f) for f in e.get("inputs", []))
    source = f"from <code>{_esc(original)}</code>" if original and original != e["scene"] else ""
    if inputs:
        source += (": " if source else "") + inputs
    if source:
        parts.append(f'<p class="from">{source}</p>')
    if e.get("size"):
        h, w = e["size"]
        parts.append(f"<p>{_esc(w)}×{_esc(h)} px, {_esc(e.get('crs', ''))}, "
                     f"{_count(e.get('blocks', '?'), 'block')}, "
                     f"{_count(e.get('tiles', '?'), 'tile')}; "
                     f"{float(e.get('timings_s', {}).get('total', 0)):.1f} s</p>")
    outputs = e.get("outputs", {})
    if "thumbnail" in outputs and "mask-thumbnail" in outputs:
        parts.append('<div class="pics">'
                     f'<img src="{_esc(href(outputs["thumbnail"]))}" alt="scene">'
                     f'<img src="{_esc(href(outputs["mask-thumbnail"]))}" alt="mask"></div>')
    if e.get("classes"):
        total = sum(c["area_m2"] for c in e["classes"].values()) or 1.0
        rows = "".join(
            f'<tr><td><span class="sw" style="background:{colors.get(n, "#fff")}"></span> '
            f'{_esc(n)}</td><td class="n">{c["area_m2"] / 1e6:,.3f}</td>'
            f'<td class="n">{100 * c["area_m2"] / total:.1f} %</td></tr>'
            for n, c in e["classes"].items())
        parts.append(f"<table><tr><th>class</th><th>km²</th><th>share</th></tr>{rows}</table>")
    if outputs:
        links = " · ".join(f'<a href="{_esc(href(p))}">{_esc(r)}</a>'
                           for r, p in outputs.items())
        parts.append(f"<p>{links}</p>")
    if e.get("error"):
        parts.append(f"<pre>{_esc(e['error'])}</pre>")
    parts.append("</div>")
    return "".join(parts)


def write_html(report: dict[str, Any], path: Path) -> Path:
    """A self-describing HTML page: summary, then each scene beside its mask and class areas.

    Pictures are linked (``<scene>/quicklook.png``), so the page sits in the output folder.
    """
    colors = {c["name"]: "#{:02x}{:02x}{:02x}".format(*c["color"][:3])
              for c in report.get("bundle", {}).get("classes", [])}
    s = report["summary"]
    summary = ", ".join(f'<span class="{k}">{_esc(s[k])} {k}</span>' for k in STATUSES if s[k])
    body = "".join(_scene_html(e, colors) for e in report["scenes"])
    root = str(report.get("out_dir") or "")
    stored = f" Outputs in <code>{_esc(root)}</code>." if "://" in root else ""
    page = (f'<!doctype html><html><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">'
            f'<meta name="referrer" content="no-referrer"><title>geoseg report</title>'
            f"<style>{_CSS}</style></head><body><h1>geoseg run report</h1>"
            f"<p>{_count(s['scenes'], 'scene')}: {summary}. Model "
            f"<code>{_esc(str(report.get('bundle', {}).get('file', '')))}</code>; "
            f"written {_esc(report['written'])}.{stored}</p>{body}</body></html>")
    atomic_write_text(path, page)
    return path
