"""``geoseg vectorize``: a mask COG → a QGIS-ready GeoPackage layer (thin wrapper)."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import (
    cluster_options,
    config_option,
    config_overrides,
    overwrite_option,
    vectorize_options,
)

EPILOG = """\b
Examples:
  geoseg vectorize out/scene.mask.tif --out out/scene.gpkg
  geoseg vectorize mask.tif --out lc.gpkg --min-area 500 --simplify 5 --connectivity 8
  geoseg vectorize mask.tif --out lc.gpkg -c configs/default.yaml --min-area 100
  geoseg vectorize mask.tif --out lc.gpkg --workers 4 --block-size 4096 --overwrite
  geoseg vectorize mask.tif --out lc.gpkg --scheduler tcp://head:8786
  geoseg vectorize mask.tif --out lc.gpkg --scheduler synchronous
"""


@click.command("vectorize", epilog=EPILOG)
@click.argument("mask", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="GeoPackage to write (a QGIS style is stored inside).")
@config_option
@vectorize_options
@cluster_options
@overwrite_option
def vectorize(mask: Path, out: Path, config_path: Path | None, overwrite: bool,
              **_settings: object) -> None:
    """Polygonize a geoseg MASK (uint8 class COG) into one polygon per region.

    Fields: class_id, class_name, area_m2 and, when MASK.confidence.tif exists,
    mean_confidence (percent). Polygons are merged across block borders. Settings come from
    the vectorize: (and cluster:) sections of --config; the options given here override them.
    """
    from geoseg.cli.render import console, terminal_safe
    from geoseg.cluster import session
    from geoseg.config import load_config
    from geoseg.vectorize import vectorize_mask

    cfg = load_config(config_path, config_overrides())
    v = cfg.vectorize
    # vectorizing runs on CPU workers, even where predict.device would give GPU workers
    cluster = session(cfg.cluster, device="cpu")
    with cluster.connect() as client:
        result = vectorize_mask(
            mask, out, min_area_m2=v.min_area_m2, simplify_m=v.simplify_m,
            connectivity=v.connectivity, layer=v.layer, block_size=v.block_size, client=client,
            overwrite=overwrite, policy=cluster.policy,
        )
    console.print(f"{terminal_safe(result.path)}: layer {terminal_safe(result.layer)}, "
                  f"{result.n_features} polygons, {len(result.class_features)} classes, "
                  f"{result.blocks} blocks, {result.seconds:.1f} s", highlight=False,
                  soft_wrap=True)
