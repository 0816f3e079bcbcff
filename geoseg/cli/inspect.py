"""``geoseg inspect``: what a run would do, before running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from geoseg.cli.options import (
    config_options,
    config_overrides,
    json_option,
    model_option,
    split_option,
)
from geoseg.cli.render import console, counted, terminal_safe

if TYPE_CHECKING:
    from geoseg.batch.inspect import SceneInspection


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@model_option
@config_options
@split_option
@json_option
def inspect(inputs: tuple[str, ...], bundle_path: Path, config_path: Path | None,
            split: tuple[int, int] | None, as_json: bool, **_settings: Any) -> None:
    """List the scenes INPUTS hold and how `geoseg run` would process them.

    For every scene: its size and CRS, the model's bands matched to files (and which are
    resampled), the number of blocks and tiles, and an estimate of a worker's peak memory
    (±30 %; lower it with --block-size and --batch-size; a GPU worker holds
    cluster.gpu_tasks blocks at once), and the bound on the client's memory: scenes in
    flight (--scenes-in-flight) × each scene's share, plus its base. Nothing is written;
    scenes that would fail say why.

    \b
    Example:
      geoseg inspect scenes/ -m model.safetensors --block-size 1024
    """
    from geoseg.batch import plan_batch
    from geoseg.batch.inspect import inspect_batch, memory_bound

    plan = plan_batch(inputs, bundle_path, None, config_path, config_overrides(), split)
    rows = inspect_batch(plan)
    memory = memory_bound(plan, rows)
    if as_json:
        click.echo(json.dumps({"scenes_found": len(plan.sources),
                               "scenes": [r.as_dict() for r in rows], "memory": memory},
                              indent=2))
        return
    _table(rows, len(plan.sources))
    console.print(
        f"memory: client ≤ {memory['client_mib']} MiB ({memory['scenes_in_flight']} scenes in "
        f"flight × {memory['per_scene_client_mib']} MiB + base), each prediction worker "
        f"≈ {memory['worker_mib']} MiB", highlight=False)


def _table(rows: list[SceneInspection], found: int) -> None:
    from rich.table import Table

    table = Table(title=f"{counted(found, 'scene')} found")
    for col in ("scene", "size", "bands", "blocks", "tiles", "peak MiB/worker"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if r.error is not None or r.size is None or r.bands is None:
            table.add_row(terminal_safe(r.scene), "[red]error[/]", terminal_safe(r.error), "",
                          "", "")
            continue
        h, w = r.size
        bands = ", ".join(f"{k}←{v}" for k, v in r.bands.items())
        table.add_row(terminal_safe(r.scene), f"{w}×{h} {r.dtype}", terminal_safe(bands),
                      str(r.blocks), str(r.tiles), str(r.peak_memory_mib))
    console.print(table)
