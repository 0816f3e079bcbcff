"""``geoseg run``: a directory (or glob, or list) of scenes → masks, GeoPackages and a report."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import click
from rich.progress import TaskID

from geoseg.cli.allocator import rerun_under_allocator
from geoseg.cli.options import (
    config_options,
    config_overrides,
    model_option,
    overwrite_option,
    split_option,
)
from geoseg.cli.render import console, counted, new_progress, terminal_safe

#: Exit status when the run went through but some (or all) scenes failed; 1: nothing could start
#: or the output folder failed, 2: usage error (click), 0: every scene ok or skipped.
EXIT_SOME_FAILED = 3


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@model_option
@click.option("-o", "--out", "out_dir", required=True, type=str,
              help="Output directory: one folder per scene, report.json, report.html, "
                   "catalog.json; or an object store prefix (s3://bucket/maps/, gs://…, az://…).")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Local folder where scenes are built before their upload, with an object "
                   "store --out (default: the system's temporary folder).")
@config_options
@split_option
@overwrite_option
def run(inputs: tuple[str, ...], bundle_path: Path, out_dir: str, scratch: Path | None,
        config_path: Path | None, split: tuple[int, int] | None, overwrite: bool,
        **_settings: Any) -> None:
    """Map every scene in INPUTS: class mask COG, land-cover GeoPackage, report.

    INPUTS are files, directories (searched recursively) or globs. A scene is a multi-band
    GeoTIFF/COG, or one file per band (Sentinel-2 `*_B02.jp2`, Landsat `*_B4.TIF`): bands
    are matched to the model's by name, and coarser bands are resampled on read onto the
    finest grid used. For each scene, OUT/<scene>/ gets <scene>.tif (mask), <scene>.gpkg
    (polygons, styled for QGIS), quick-looks, stac.json and scene.json (and, with
    --confidence / --probabilities, <scene>.confidence.tif / <scene>.probabilities.tif);
    OUT/report.json, OUT/report.html and OUT/catalog.json (STAC) cover the whole run.

    OUT may be an object store prefix (s3://, gs://, az://; credentials from the environment):
    each scene is built in a local scratch folder (--scratch) and uploaded, its scene.json
    last, so a scene is finished in the store exactly when its scene.json is there.

    Finished scenes are skipped on a re-run with the same model and settings (--overwrite
    recomputes); a killed run never leaves partial files under final names. A broken scene is
    reported and the others go on (--on-error fail stops instead).

    \b
    Exit status:
      0  every scene ok or skipped (also: no scene of this --split to do)
      3  the run went through and at least one scene failed (all of them
         failing included); report.json says why for each
      1  nothing could start (bad bundle, config, inputs or output folder),
         or the output folder failed mid-run (full, read-only): scenes
         finished before are kept and skipped when the run is repeated
      2  a usage error (unknown option, missing argument)

    \b
    Examples:
      geoseg run scenes/ -m model.safetensors -o maps/
      geoseg run 'S2*/**/*.jp2' -m model.safetensors -o maps/ --min-area 500 --confidence
      geoseg run scenes/ -m model.safetensors -o maps/ --scheduler tcp://head:8786
      geoseg run scenes/ -m model.safetensors -o maps/ --split 0/8   # one job of eight
      geoseg run items.json -m model.safetensors -o s3://bucket/maps/
    """
    from geoseg.batch import plan_batch, run_planned
    from geoseg.config import load_config
    from geoseg.remote.uri import redact

    overrides = config_overrides()
    rerun_under_allocator(load_config(config_path, overrides).cluster)
    plan = plan_batch(inputs, bundle_path, out_dir, config_path, overrides, split, scratch)
    console.print(f"{counted(len(plan.todo), 'scene')} to process of {len(plan.sources)} found "
                  f"→ {terminal_safe(redact(plan.out))}", highlight=False,
                  soft_wrap=True)  # paths whole
    with _Display(len(plan.todo)) as events:
        result, report_path = run_planned(plan, overwrite=overwrite, events=events,
                                          on_client=lambda c: console.print(
                                              f"dashboard: {terminal_safe(c.dashboard_link)}"))
    _summary(result.entries)
    console.print(f"report: {terminal_safe(redact(str(report_path)))} (and report.html)",
                  highlight=False,
                  soft_wrap=True)
    if result.failed:
        console.print(f"[red]{counted(result.failed, 'scene')} failed[/]")
        sys.exit(EXIT_SOME_FAILED)


class _Display:
    """Live progress (scenes, and one bar per scene in flight naming it and its stage) or, off
    a terminal, log lines. Thread-safe: ``progress`` comes from the scenes' threads."""

    def __init__(self, total: int):
        self.live = console.is_terminal
        self.bar = new_progress()
        self.scenes = self.bar.add_task("scenes", total=total)
        self.stages: dict[str, TaskID] = {}  # scene name → its bar, while it is in flight
        self.lock = threading.Lock()

    def __enter__(self) -> _Display:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]

    def scene_started(self, index: int, total: int, name: str) -> None:
        with self.lock:
            self.stages[name] = self.bar.add_task("", total=None, visible=False)
        if not self.live:
            console.print(f"\\[{index + 1}/{total}] {terminal_safe(name)}", highlight=False,
                          soft_wrap=True)

    def progress(self, stage: str, done: int, total: int, scene: str = "") -> None:
        with self.lock:
            task = self.stages.get(scene)
            if task is not None:
                self.bar.update(task, description=f"  {terminal_safe(scene)}: {stage} blocks",
                                completed=done, total=total, visible=True)

    def scene_finished(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.bar.advance(self.scenes)
            task = self.stages.pop(entry["scene"], None)
            if task is not None:
                self.bar.remove_task(task)
        status = entry["status"]
        colour = {"ok": "green", "failed": "red"}.get(status, "dim")
        line = f"[{colour}]{status}[/] {terminal_safe(entry['scene'])}"
        if status == "ok":
            line += f" ({entry['timings_s']['total']:.1f} s)"
        if entry.get("error"):
            line += f": {terminal_safe(entry['error'])}"
        console.print(line, highlight=False, soft_wrap=True)
        for warning in entry.get("warnings", []) if status == "ok" else []:
            console.print(f"  [yellow]warning[/] {terminal_safe(warning)}", highlight=False,
                          soft_wrap=True)


def _summary(entries: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="geoseg run", show_lines=False)
    for col in ("scene", "status", "size", "classes (km²)", "time"):
        table.add_column(col, overflow="fold")
    for e in entries:
        size = "×".join(str(x) for x in reversed(e.get("size", []))) or "-"
        classes = ", ".join(f"{terminal_safe(n)} {c['area_m2'] / 1e6:.2f}" for n, c in
                            e.get("classes", {}).items() if c["pixels"])
        secs = e.get("timings_s", {}).get("total")
        error = terminal_safe((e.get("error") or "")[:200])
        table.add_row(terminal_safe(e["scene"]), e["status"], size, classes or error,
                      f"{secs:.1f} s" if secs is not None else "-")
    console.print(table)
