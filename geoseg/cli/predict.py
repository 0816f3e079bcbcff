"""``geoseg predict``: one scene → class mask COG."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.allocator import rerun_under_allocator
from geoseg.cli.render import console, progress_bar, terminal_safe


@click.command()
@click.argument("scene", type=click.Path(path_type=Path))
@click.option("-m", "--model", "bundle", required=True, type=click.Path(path_type=Path),
              help="Model bundle (.safetensors) from `geoseg model init` or `geoseg train`.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Mask to write (Cloud-Optimized GeoTIFF, uint8 class ids, 255 = nodata).")
@click.option("-c", "--config", "config_path", type=click.Path(exists=True, path_type=Path),
              help="YAML config (see configs/); options given here override it.")
@click.option("--tile-size", type=int,
              help="Model input tile side, px [≥ 1024 and 4 × halo; DeepLabV3+ etc.: the "
                   "bundle's].")
@click.option("--halo", type=int, help="Context px per tile side, dropped after prediction [bundle's].")
@click.option("--block-size", type=int, help="Dask block side, px; sets memory per task [2048].")
@click.option("--batch-size", type=int,
              help="Tiles per forward pass [about 1 Mpx: 1 of 1024², 4 of 512²].")
@click.option("--stitch", type=click.Choice(["trim", "blend"]), help="Halo trimming or cosine-weighted blending [trim].")
@click.option("--device", help="auto, cpu, cuda, cuda:N [auto].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="Autocast on CUDA [fp32].")
@click.option("--confidence/--no-confidence", default=None, help="Also write MASK.confidence.tif (max probability, %).")
@click.option("--probabilities/--no-probabilities", default=None, help="Also write MASK.probabilities.tif (one band per class, %).")
@click.option("--workers", type=int, help="Local worker processes [one per 2 cores].")
@click.option("--scheduler", help="Existing Dask scheduler address, or 'synchronous' (no cluster).")
@click.option("--cluster", "kind", type=click.Choice(["local", "slurm", "pbs"]),
              help="Local cluster, or Dask workers as Slurm/PBS jobs (cluster.slurm) [local].")
@click.option("--allocator", type=click.Choice(["auto", "jemalloc", "glibc", "system"]),
              help="Memory allocator of the processes running the model; auto: jemalloc where "
                   "installed, else glibc tuned to keep large blocks [auto].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def predict(scene: Path, bundle: Path, out: Path, config_path: Path | None, overwrite: bool,
            **options: object) -> None:
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
      geoseg predict scene.tif -m model.safetensors -o mask.tif --cluster slurm -c configs/slurm.yaml
    """
    from geoseg.cluster import connect, gpu_workers, task_policy, torch_threads
    from geoseg.config import load_config
    from geoseg.pipeline import plan_prediction, run_prediction

    cluster_keys = ("workers", "scheduler", "kind", "allocator")
    cfg = load_config(
        config_path,
        {
            "predict": {k: v for k, v in options.items() if k not in cluster_keys},
            "cluster": {k: options[k] for k in cluster_keys},
        },
    )
    rerun_under_allocator(cfg.cluster)
    gpus = gpu_workers(cfg.cluster, cfg.predict.device)
    threads = torch_threads(cfg.cluster, gpus)
    plan = plan_prediction(scene, bundle, out, cfg.predict, overwrite, threads)  # fail early
    with connect(cfg.cluster, cfg.predict.device) as client, \
            progress_bar(f"predict {terminal_safe(scene.name)}") as advance:
        if client is not None:
            console.log(f"dashboard: {client.dashboard_link}")
        policy = task_policy(cfg.cluster, gpu_workers=gpus > 0)
        result = run_prediction(plan, client, progress=advance, policy=policy)
    grid = result.grid
    console.print(
        f"[green]wrote[/] {terminal_safe(', '.join(str(p) for p in result.outputs.values()))} "
        f"({grid.width}x{grid.height} px, {len(grid)} blocks, {result.tiles} tiles, "
        f"{result.seconds:.1f} s)"
    )
