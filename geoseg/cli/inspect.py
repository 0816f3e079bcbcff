"""``geoseg inspect``: what a run would do, before running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import config_options, overrides_from, parse_split
from geoseg.cli.render import console, terminal_safe


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-m", "--model", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="Model bundle (.safetensors).")
@config_options
@click.option("--split", help="Only the scenes of job I of N (I/N), as `geoseg run --split`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(inputs: tuple[str, ...], bundle_path: Path, config_path: Path | None,
            split: str | None, as_json: bool, **options: Any) -> None:
    """List the scenes INPUTS hold and how `geoseg run` would process them.

    For every scene: its size and CRS, the model's bands matched to files (and which are
    resampled), the number of blocks and tiles, and an estimate of a worker's peak memory
    (±30 %; lower it with --block-size and --batch-size; a GPU worker holds
    cluster.gpu_tasks blocks at once). Nothing is written; scenes that would fail say why.

    \b
    Example:
      geoseg inspect scenes/ -m model.safetensors --block-size 1024
    """
    from geoseg.batch import plan_batch
    from geoseg.batch.estimate import worker_peak_bytes
    from geoseg.batch.sources import open_source
    from geoseg.pipeline import batch_size, check_scene
    from geoseg.predict import resolve_device

    plan = plan_batch(inputs, bundle_path, None, config_path, overrides_from(options),
                      parse_split(split))
    bundle, cfg = plan.bundle, plan.cfg
    # a GPU worker holds cluster.gpu_tasks blocks at once (one reads while one computes)
    tasks = cfg.cluster.gpu_tasks if resolve_device(cfg.predict.device) != "cpu" else 1
    rows = []
    for source in plan.todo:
        row: dict[str, Any] = {"scene": source.name, "kind": source.kind, "path": str(source.path)}
        try:
            scene = open_source(source, bundle.meta.band_names, cfg.run.band_fill)
            bands, grid = check_scene(scene, bundle, cfg.predict, str(source.path))
            itemsize = {"uint8": 1, "uint16": 2, "int16": 2, "float32": 4}[scene.dtype]
            batch = batch_size(cfg.predict, grid.lattice)
            peak = worker_peak_bytes(bundle, grid, batch, len(bands), itemsize,
                                     cfg.predict.stitch == "blend",
                                     1 + int(cfg.predict.confidence), tasks)
            row.update(
                size=[scene.height, scene.width], dtype=scene.dtype,
                bands={b.name: Path(b.path).name + (f"#{b.index}" if source.kind == "raster"
                                                    else "") + (" (resampled)" if b.warp else "")
                       for b in bands},
                blocks=len(grid), tiles=sum(len(b.tiles) for b in grid.blocks()),
                block_size=grid.block_size, tile_size=grid.lattice.tile_size,
                halo=grid.lattice.halo, peak_memory_mib=round(peak / 2**20))
        except Exception as exc:  # noqa: BLE001 - report it, as the run would
            row["error"] = str(exc)
        rows.append(row)
    if as_json:
        click.echo(json.dumps({"scenes_found": len(plan.sources), "scenes": rows}, indent=2))
        return
    _table(rows, len(plan.sources))


def _table(rows: list[dict[str, Any]], found: int) -> None:
    from rich.table import Table

    table = Table(title=f"{found} scene(s) found")
    for col in ("scene", "size", "bands", "blocks", "tiles", "peak MiB/worker"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if "error" in r:
            table.add_row(terminal_safe(r["scene"]), "[red]error[/]", terminal_safe(r["error"]),
                          "", "", "")
            continue
        h, w = r["size"]
        bands = ", ".join(f"{k}←{v}" for k, v in r["bands"].items())
        table.add_row(terminal_safe(r["scene"]), f"{w}×{h} {r['dtype']}", terminal_safe(bands), str(r["blocks"]),
                      str(r["tiles"]), str(r["peak_memory_mib"]))
    console.print(table)
