"""``geoseg predict``: one scene → class mask COG."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.allocator import rerun_under_allocator
from geoseg.cli.options import (
    cluster_options,
    config_option,
    config_overrides,
    model_option,
    overwrite_option,
    predict_options,
)
from geoseg.cli.render import console, progress_bar, terminal_safe


@click.command()
@click.argument("scene", type=click.Path(path_type=Path))
@model_option
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Mask to write (Cloud-Optimized GeoTIFF, uint8 class ids, 255 = nodata).")
@config_option
@predict_options
@cluster_options
@overwrite_option
def predict(scene: Path, bundle_path: Path, out: Path, config_path: Path | None, overwrite: bool,
            **_settings: object) -> None:
    """Predict the land-cover class of every pixel of SCENE.

    SCENE is a GeoTIFF/COG (any size, CRS and band count; uint8, uint16, int16 or float32)
    whose bands match the model's by name, or by order when they carry no names. The mask has
    exactly the scene's CRS, transform and size, a colour table, and nodata (255) wherever the
    input is nodata. It does not depend on --block-size, nor on --tile-size once --halo covers
    the model's receptive field (`geoseg model info --receptive-field`).

    \b
    Examples:
      geoseg predict scene.tif -m model.safetensors -o mask.tif
      geoseg predict scene.tif -m model.safetensors -o mask.tif --confidence --workers 2
      geoseg predict scene.tif -m model.safetensors -o mask.tif --scheduler tcp://head:8786
      geoseg predict big.tif -m model.safetensors -o mask.tif --cluster slurm -c configs/slurm.yaml
    """
    from geoseg.cluster import session
    from geoseg.config import load_config
    from geoseg.pipeline import plan_prediction, run_prediction

    cfg = load_config(config_path, config_overrides())
    rerun_under_allocator(cfg.cluster)
    cluster = session(cfg.cluster, cfg.predict.device, cpu_tasks=False)
    plan = plan_prediction(scene, bundle_path, out, cfg.predict, overwrite,
                           cluster.threads)  # fail before a cluster starts
    with cluster.connect() as client, \
            progress_bar(f"predict {terminal_safe(scene.name)}") as advance:
        if client is not None:
            console.log(f"dashboard: {terminal_safe(client.dashboard_link)}")
        result = run_prediction(plan, client, progress=advance, policy=cluster.policy)
    grid = result.grid
    console.print(
        f"[green]wrote[/] {terminal_safe(', '.join(str(p) for p in result.outputs.values()))} "
        f"({grid.width}x{grid.height} px, {len(grid)} blocks, {result.tiles} tiles, "
        f"{result.seconds:.1f} s)"
    )
