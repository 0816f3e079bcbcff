"""``geoseg train``: scenes + labels → a trained model bundle."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import architecture_options
from geoseg.cli.render import console, terminal_safe


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


@click.command()
@click.option("-s", "--scene", "scenes", multiple=True, required=True,
              type=click.Path(path_type=Path), help="Training scene (repeat for several).")
@click.option("-l", "--labels", "labels", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="Labels for the scene given at the same position: a raster of class ids or "
                   "polygons (GeoPackage, shapefile, …) with a class field.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Bundle to write (.safetensors); rewritten whenever validation improves.")
@click.option("--classes", help="Class names in id order, optionally name:#rrggbb "
                                "(label value k is class k). Required unless --resume.")
@click.option("--bands",
              help="Input bands in model order, e.g. B02,B03,B04,B08 [all, in file order].")
@click.option("--class-field", help="Polygon field holding class ids or names [class/label].")
@click.option("--ignore-value", type=int,
              help="Label raster value meaning unlabelled (besides nodata).")
@architecture_options(encoder="resnet18")
@click.option("--encoder-depth", type=int,
              help="Encoder stages (3-5); fewer = smaller, faster model.")
@click.option("--chip-size", default=256, show_default=True, help="Training chip side, px.")
@click.option("--chip-stride", type=int, help="Step between chips, px [chip size / 2].")
@click.option("--min-labelled", default=0.05, show_default=True,
              help="Least labelled fraction of a chip.")
@click.option("--max-chips", default=4000, show_default=True, help="Most chips held in memory.")
@click.option("--tile-size", default=512, show_default=True,
              help="Prediction tile side stored in the bundle, px.")
@click.option("--halo", type=int,
              help="Prediction halo stored in the bundle, px [measured receptive field].")
@click.option("--epochs", default=20, show_default=True, help="Most epochs.")
@click.option("--steps-per-epoch", type=int, help="Batches per epoch [one pass over the chips].")
@click.option("--batch-size", default=8, show_default=True, help="Chips per step.")
@click.option("--lr", default=1e-3, show_default=True,
              help="AdamW learning rate (cosine schedule).")
@click.option("--weight-decay", default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--class-weighting", type=click.Choice(["balanced", "none"]), default="balanced",
              show_default=True, help="Cross-entropy class weights.")
@click.option("--val-fraction", default=0.2, show_default=True,
              help="Share of labelled blocks held out (0: none).")
@click.option("--val-block", default=512, show_default=True,
              help="Side of the validation blocks, px.")
@click.option("--patience", default=5, show_default=True,
              help="Epochs without val mIoU gain before stopping.")
@click.option("--seed", default=0, show_default=True,
              help="Seed of weights, chips, split and batches.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True, help="Mixed precision on CUDA.")
@click.option("--threads", type=int, help="torch CPU threads [all cores].")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue training this bundle (keeps its architecture, bands, normalization, "
                   "classes).")
@click.option("--description", default="", help="What this model is (stored in the bundle).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
def train(scenes: tuple[Path, ...], labels: tuple[Path, ...], out: Path, classes: str | None,
          bands: str | None, class_field: str | None, ignore_value: int | None,
          encoder_depth: int | None, resume: Path | None, overwrite: bool,
          **options: object) -> None:
    """Train a segmentation model on SCENE(s) and their labels; write a bundle.

    Chips are taken where labels exist; a share of the scene's blocks (by area, never random
    pixels) is held out for validation; the epoch with the best validation mIoU is kept.
    Normalization statistics come from the training scenes and travel in the bundle, so
    `geoseg predict` reads new scenes exactly as training did.

    \b
    Examples:
      geoseg train -s scene.tif -l labels.tif -o model.safetensors \\
          --classes water,trees,crops,built --encoder resnet18 --epochs 30
      geoseg train -s a.tif -l a.gpkg -s b.tif -l b.gpkg --class-field cover \\
          --classes water,trees,crops -o model.safetensors
      geoseg train -s scene.tif -l labels.tif --resume model.safetensors -o model2.safetensors
    """
    from pydantic import ValidationError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    from geoseg.cli.model import _depth_kwargs, _parse_classes, _split
    from geoseg.errors import ConfigError
    from geoseg.models.bundle import validation_message
    from geoseg.train import TrainConfig, train_model

    try:
        cfg = TrainConfig(
            classes=_parse_classes(classes) if classes else (),
            bands=tuple(_split(bands)) if bands else None,
            arch_kwargs=_depth_kwargs(str(options["arch"]), encoder_depth) or {},
            **options,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid training settings: {validation_message(exc)}") from None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console,
                  disable=not console.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        def on_epoch(rec, improved: bool) -> None:  # type: ignore[no-untyped-def]
            mark = " [green]✓ saved[/]" if improved else ""
            console.print(f"epoch {rec.epoch:3d}  loss {rec.train_loss:.4f}  "
                          f"acc {rec.train_accuracy:.3f}  val loss {_fmt(rec.val_loss)}  "
                          f"val acc {_fmt(rec.val_accuracy)}  val mIoU {_fmt(rec.val_miou)}  "
                          f"({rec.seconds:.1f} s){mark}")

        result = train_model(list(scenes), list(labels), out, cfg, resume=resume,
                             class_field=class_field, ignore_value=ignore_value,
                             overwrite=overwrite, progress=progress, on_epoch=on_epoch)
    meta = result.meta
    console.print(
        f"[green]wrote[/] {terminal_safe(out)}: {meta.arch}/{meta.encoder}, "
        f"best epoch {result.best_epoch} "
        f"(val mIoU {_fmt(result.best_val_miou)}), {result.train_chips} train / "
        f"{result.val_chips} validation chips, tile {meta.tile_size} px, halo {meta.halo} px, "
        f"{result.seconds:.0f} s"
    )
