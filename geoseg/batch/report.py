"""The run report: ``report.json`` for machines, ``report.html`` for people.

The report covers every scene found (not only this run's split): a scene handled by this run
has its status from it (``ok``, ``failed``, ``skipped``); any other scene is read back from the
output folder (``ok`` or ``failed`` by another job of a Slurm array, else ``pending``). Several
jobs may write it; each write is atomic and complete.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Any

from geoseg.batch.discover import SceneSource
from geoseg.batch.state import atomic_write_json, atomic_write_text, read_record

__all__ = ["STATUSES", "build_report", "write_html", "write_report"]

#: Every scene status a report can hold.
STATUSES = ("ok", "skipped", "failed", "pending")


def _relative(entry: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    entry = dict(entry)
    name = entry["scene"]
    if "outputs" in entry:
        entry["outputs"] = {role: f"{name}/{rel}" for role, rel in entry["outputs"].items()}
    return entry


def build_report(
    sources: list[SceneSource],
    handled: list[dict[str, Any]],
    out_dir: Path,
    header: dict[str, Any],
) -> dict[str, Any]:
    """The report dict: ``header`` plus a summary and one entry per scene in ``sources``.

    Entry output paths are relative to ``out_dir``.
    """
    import json

    from geoseg.batch.runner import failure_path

    by_name = {e["scene"]: e for e in handled}
    scenes = []
    for s in sources:
        entry = by_name.get(s.name)
        if entry is None:
            failed = failure_path(out_dir, s.name)
            record = read_record(out_dir / s.name)
            if failed.exists():
                entry = json.loads(failed.read_text())
            elif record is not None:
                entry = record
            else:
                entry = {"scene": s.name, "status": "pending", "kind": s.kind,
                         "inputs": [str(f) for f in s.files]}
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


def write_report(report: dict[str, Any], out_dir: Path, html_too: bool = True) -> Path:
    """Write ``report.json`` (and ``report.html``) atomically; return the JSON path."""
    path = out_dir / "report.json"
    atomic_write_json(path, report)
    if html_too:
        write_html(report, out_dir / "report.html")
    return path


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
"""


def _scene_html(e: dict[str, Any], colors: dict[str, str]) -> str:
    esc = html.escape
    status = e["status"]
    parts = [f'<div class="scene"><h2>{esc(e["scene"])} <span class="{status}">{status}</span>'
             "</h2>"]
    if e.get("size"):
        h, w = e["size"]
        parts.append(f"<p>{w}×{h} px, {esc(str(e.get('crs', '')))}, "
                     f"{e.get('blocks', '?')} blocks, {e.get('tiles', '?')} tiles; "
                     f"{e.get('timings_s', {}).get('total', 0):.1f} s</p>")
    outputs = e.get("outputs", {})
    if "thumbnail" in outputs:
        parts.append('<div class="pics">'
                     f'<img src="{esc(outputs["thumbnail"])}" alt="scene">'
                     f'<img src="{esc(outputs["mask-thumbnail"])}" alt="mask"></div>')
    if e.get("classes"):
        total = sum(c["area_m2"] for c in e["classes"].values()) or 1.0
        rows = "".join(
            f'<tr><td><span class="sw" style="background:{colors.get(n, "#fff")}"></span> '
            f'{esc(n)}</td><td class="n">{c["area_m2"] / 1e6:,.3f}</td>'
            f'<td class="n">{100 * c["area_m2"] / total:.1f} %</td></tr>'
            for n, c in e["classes"].items())
        parts.append(f"<table><tr><th>class</th><th>km²</th><th>share</th></tr>{rows}</table>")
    if outputs:
        links = " · ".join(f'<a href="{esc(p)}">{esc(r)}</a>' for r, p in outputs.items())
        parts.append(f"<p>{links}</p>")
    if e.get("error"):
        parts.append(f"<pre>{esc(e['error'])}</pre>")
    parts.append("</div>")
    return "".join(parts)


def write_html(report: dict[str, Any], path: Path) -> Path:
    """A self-describing HTML page: summary, then each scene beside its mask and class areas.

    Pictures are linked (``<scene>/quicklook.png``), so the page sits in the output folder.
    """
    esc = html.escape
    colors = {c["name"]: "#{:02x}{:02x}{:02x}".format(*c["color"][:3])
              for c in report.get("bundle", {}).get("classes", [])}
    s = report["summary"]
    summary = ", ".join(f'<span class="{k}">{s[k]} {k}</span>' for k in STATUSES if s[k])
    body = "".join(_scene_html(e, colors) for e in report["scenes"])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>geoseg report</title>"
            f"<style>{_CSS}</style></head><body><h1>geoseg run report</h1>"
            f"<p>{s['scenes']} scenes: {summary}. Model "
            f"<code>{esc(str(report.get('bundle', {}).get('file', '')))}</code>; "
            f"written {esc(report['written'])}.</p>{body}</body></html>")
    atomic_write_text(path, page)
    return path
