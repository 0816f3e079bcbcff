"""``geoseg train``: scenes + labels → a trained model bundle."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import architecture_options
from geoseg.cli.render import console, terminal_safe
from geoseg.train.config import DEFAULT_STEPS, DEFAULT_STEPS_PER_EPOCH


def _print_note(note: str) -> None:
    """A setup note from training (validation split, --init/--encoder-weights reports), one
    console line per line of it, user strings escaped."""
    for line in note.splitlines():
        console.print(f"[yellow]{terminal_safe(line)}[/]")


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
                                "(label value k is class k). Required unless --resume or --init "
                                "(then: the bundle's classes).")
@click.option("--bands",
              help="Input bands in model order, e.g. B02,B03,B04,B08 [all, in file order].")
@click.option("--class-field", help="Polygon field holding class ids or names [class/label].")
@click.option("--ignore-value", type=int,
              help="Label raster value meaning unlabelled (besides nodata).")
@architecture_options(encoder="resnet18")
@click.option("--encoder-depth", type=int,
              help="Encoder stages (3-5); fewer = smaller, faster model.")
@click.option("--chip-size", default=256, show_default=True, help="Training chip side, px.")
@click.option("--chip-stride", type=int,
              help="Step between validation chips in a held-out block larger than a chip, px "
                   "[chip size]. Training chips lie at random positions.")
@click.option("--min-labelled", default=0.05, show_default=True,
              help="Least labelled fraction of a chip (random chips are redrawn until they "
                   "have it).")
@click.option("--max-chips", type=int,
              help="Deprecated, no effect (prints a warning): training reads the labelled "
                   "area once and draws chips from it.")
@click.option("--tile-size", default=512, show_default=True,
              help="Prediction tile side stored in the bundle, px.")
@click.option("--halo", type=int,
              help="Prediction halo stored in the bundle, px [measured receptive field].")
@click.option("--steps", type=int,
              help=f"Training length: optimizer steps, each on --batch-size chips drawn at "
                   f"random positions in the labelled area and randomly flipped/rotated "
                   f"[{DEFAULT_STEPS}; early stopping may end sooner].")
@click.option("--steps-per-epoch", default=DEFAULT_STEPS_PER_EPOCH, show_default=True,
              help="Optimizer steps between validations (one epoch).")
@click.option("--epochs", type=int,
              help="Training length in epochs instead of --steps: epochs x --steps-per-epoch "
                   "steps. (An epoch used to be one pass over fixed chips.)")
@click.option("--batch-size", default=8, show_default=True, help="Chips per step.")
@click.option("--lr", default=1e-3, show_default=True,
              help="AdamW learning rate (cosine schedule).")
@click.option("--weight-decay", default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--class-weighting", type=click.Choice(["balanced", "none"]), default="balanced",
              show_default=True, help="Cross-entropy class weights.")
@click.option("--val-fraction", default=0.2, show_default=True,
              help="Share of labelled blocks held out (0: none).")
@click.option("--val-block", default=512, show_default=True,
              help="Largest side of the validation blocks, px; halved (down to 64) until the "
                   "labelled area spans enough blocks to hold some out.")
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
@click.option("--init", "init", type=click.Path(path_type=Path),
              help="Start from this bundle's weights (fine-tuning; imported or trained): its "
                   "architecture, encoder, bands and normalization are kept; with other "
                   "--classes its segmentation head is re-initialised.")
@click.option("--encoder-weights", type=click.Path(path_type=Path),
              help="Pretrained encoder weights for a new model: a state-dict file (.pth, .pt, "
                   ".bin, .safetensors) of the same encoder, e.g. torchvision/timm ResNet or "
                   "TorchGeo Sentinel-2 weights. Read without running code.")
@click.option("--weights-bands",
              help="The --encoder-weights file's input channels in order, e.g. B04,B03,B02 "
                   "for RGB weights [13 channels: B01,…,B08,B8A,B09,…,B12, TorchGeo's "
                   "Sentinel-2 order]. Model bands are matched by name.")
@click.option("--description", default="", help="What this model is (stored in the bundle).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
def train(scenes: tuple[Path, ...], labels: tuple[Path, ...], out: Path, classes: str | None,
          bands: str | None, class_field: str | None, ignore_value: int | None,
          encoder_depth: int | None, resume: Path | None, init: Path | None,
          encoder_weights: Path | None, weights_bands: str | None, overwrite: bool,
          **options: object) -> None:
    """Train a segmentation model on SCENE(s) and their labels; write a bundle.

    Training runs --steps optimizer steps; each batch is chips drawn at random positions in
    the labelled area, randomly flipped and rotated. A share of the scene's blocks (by area,
    never random pixels; the blocks shrink to fit a small labelled area) is held out and
    scored every --steps-per-epoch steps; the best weights are kept. The end report gives the
    steps taken and the best validation mIoU with its step.
    Normalization statistics come from the training scenes and travel in the bundle, so
    `geoseg predict` reads new scenes exactly as training did.

    \b
    Examples:
      geoseg train -s scene.tif -l labels.tif -o model.safetensors \\
          --classes water,trees,crops,built --encoder resnet18 --steps 1000
      geoseg train -s a.tif -l a.gpkg -s b.tif -l b.gpkg --class-field cover \\
          --classes water,trees,crops -o model.safetensors
      geoseg train -s scene.tif -l labels.tif --resume model.safetensors -o model2.safetensors
      geoseg train -s scene.tif -l labels.tif --init models/s2-demo-landcover.safetensors \\
          --classes water,vegetation,other -o finetuned.safetensors
      geoseg train -s scene.tif -l labels.tif --classes water,trees,crops \\
          --encoder resnet18 --encoder-weights resnet18_sentinel2_all_moco.pth \\
          -o model.safetensors
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

    from geoseg.cli.bundle_args import depth_kwargs, parse_classes, split_list
    from geoseg.errors import ConfigError
    from geoseg.models.bundle import validation_message
    from geoseg.train import TrainConfig, train_model

    try:
        cfg = TrainConfig(
            classes=parse_classes(classes) if classes else (),
            bands=tuple(split_list(bands)) if bands else None,
            arch_kwargs=depth_kwargs(str(options["arch"]), encoder_depth) or {},
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

        result = train_model(list(scenes), list(labels), out, cfg, resume=resume, init=init,
                             encoder_weights=encoder_weights,
                             weights_bands=split_list(weights_bands) if weights_bands else None,
                             class_field=class_field, ignore_value=ignore_value,
                             overwrite=overwrite, progress=progress, on_epoch=on_epoch,
                             on_setup=_print_note)
    meta = result.meta
    stop = (" (stopped early: no validation gain for "
            f"{cfg.patience} epochs)") if result.stopped_early else ""
    best = (f"best val mIoU {_fmt(result.best_val_miou)} at step {result.best_step} "
            f"(epoch {result.best_epoch})" if result.best_val_miou is not None
            else "no validation: the last step's weights were kept")
    console.print(
        f"[green]wrote[/] {terminal_safe(out)}: {terminal_safe(meta.arch)}/"
        f"{terminal_safe(meta.encoder)}, "
        f"{result.steps} of {result.planned_steps} steps{stop}, {best}; "
        f"{result.train_pixels} labelled training px, {result.val_chips} validation chips "
        f"(blocks of {result.val_block} px), tile {meta.tile_size} px, halo {meta.halo} px, "
        f"{result.seconds:.0f} s"
    )
    declared = {b.encoding for b in meta.bands if b.encoding is not None}
    if declared:  # what the model's input values mean, recorded from the training scenes
        shown = "; ".join(sorted(e.text() for e in declared))
        console.print(f"input encoding (physical = DN × scale + offset): {shown} "
                      "(`geoseg model info` shows it per band)", soft_wrap=True)
