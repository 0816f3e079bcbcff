"""``geoseg vectorize``: a mask COG → a QGIS-ready GeoPackage layer (thin wrapper)."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.config import ClusterConfig

EPILOG = """\b
Examples:
  geoseg vectorize out/scene.mask.tif --out out/scene.gpkg
  geoseg vectorize mask.tif --out lc.gpkg --min-area 500 --simplify 5 --connectivity 8
  geoseg vectorize mask.tif --out lc.gpkg --workers 4 --block-size 4096 --overwrite
  geoseg vectorize mask.tif --out lc.gpkg --scheduler tcp://head:8786
  geoseg vectorize mask.tif --out lc.gpkg --scheduler synchronous
"""


@click.command("vectorize", epilog=EPILOG)
@click.argument("mask", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="GeoPackage to write (a QGIS style is stored inside).")
@click.option("--min-area", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Sieve: merge regions smaller than this many m² into their largest "
                   "neighbour (exact, independent of --block-size). 0: off.")
@click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Coverage-preserving simplification tolerance in metres. 0: off.")
@click.option("--connectivity", type=click.Choice(["4", "8"]), default="4", show_default=True,
              help="Pixel connectivity of regions.")
@click.option("--layer", default="landcover", show_default=True, help="Layer name.")
@click.option("--block-size", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Block side in pixels (memory per task).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local cluster (default: one per 2 cores).")
@click.option("--scheduler", default=None,
              help="Dask scheduler address, or 'synchronous' to run in this process.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def vectorize(mask: Path, out: Path, min_area: float, simplify: float, connectivity: str,
              layer: str, block_size: int, workers: int | None, scheduler: str | None,
              overwrite: bool) -> None:
    """Polygonize a geoseg MASK (uint8 class COG) into one polygon per region.

    Fields: class_id, class_name, area_m2 and, when MASK.confidence.tif exists,
    mean_confidence (percent). Polygons are merged across block borders.
    """
    from geoseg.cluster import connect, task_policy
    from geoseg.vectorize import vectorize_mask

    cfg = ClusterConfig(scheduler=scheduler, workers=workers)
    with connect(cfg) as client:
        result = vectorize_mask(
            mask, out, min_area_m2=min_area, simplify_m=simplify,
            connectivity=int(connectivity), layer=layer, block_size=block_size, client=client,
            overwrite=overwrite, policy=task_policy(cfg, gpu_workers=False),
        )
    from geoseg.cli.render import console, terminal_safe

    console.print(f"{terminal_safe(result.path)}: layer {terminal_safe(result.layer)}, "
                  f"{result.n_features} polygons, {len(result.class_features)} classes, "
                  f"{result.blocks} blocks, {result.seconds:.1f} s", highlight=False,
                  soft_wrap=True)
