"""``geoseg evaluate``: a mask against a reference → accuracy tables and JSON."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.render import console, terminal_safe


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


@click.command()
@click.argument("mask", type=click.Path(path_type=Path))
@click.option("-r", "--reference", required=True, type=click.Path(path_type=Path),
              help="Reference: raster of class ids (any CRS/resolution) or polygons with a "
                   "class field.")
@click.option("--class-field", help="Polygon field holding class ids or names [class/label].")
@click.option("--ignore-value", type=int,
              help="Reference raster value meaning unlabelled (besides nodata).")
@click.option("--layer", help="Vector layer, when the reference file holds several.")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Also write the results as JSON.")
def evaluate(mask: Path, reference: Path, class_field: str | None, ignore_value: int | None,
             layer: str | None, json_out: Path | None) -> None:
    """Compare MASK (e.g. from `geoseg predict`) with a reference map.

    The reference is aligned by georeference: warped (nearest neighbour) or burnt onto the
    mask's grid. Nodata in either and unlabelled reference pixels are ignored. Prints overall
    accuracy, per-class precision, recall, F1 and IoU, mean IoU and the confusion matrix
    (rows: reference, columns: mask).

    \b
    Examples:
      geoseg evaluate mask.tif --reference labels.tif --json scores.json
      geoseg evaluate mask.tif --reference survey.gpkg --class-field cover
    """
    from rich.table import Table

    from geoseg.evaluate import evaluate_mask

    report = evaluate_mask(mask, reference, class_field=class_field, ignore_value=ignore_value,
                           layer=layer)
    scores = report.scores
    table = Table("id", "class", "precision %", "recall %", "F1 %", "IoU %", "reference px",
                  "mask px", title=f"{terminal_safe(mask.name)} vs {terminal_safe(reference.name)}")
    for c in scores.classes:
        table.add_row(str(c.id), terminal_safe(c.name), _pct(c.precision), _pct(c.recall),
                      _pct(c.f1), _pct(c.iou), f"{c.reference_pixels:,}", f"{c.predicted_pixels:,}")
    names = [terminal_safe(c.name) for c in scores.classes]
    matrix = Table("reference \\ mask", *names, title="confusion matrix (pixels)")
    for name, row in zip(names, scores.confusion, strict=True):
        matrix.add_row(name, *(f"{v:,}" for v in row))
    console.print(table, matrix)
    console.print(f"overall accuracy [bold]{_pct(scores.overall_accuracy)} %[/], mean IoU "
                  f"[bold]{_pct(scores.mean_iou)} %[/] over {scores.pixels:,} pixels "
                  f"({report.ignored_pixels:,} ignored)")
    if report.unknown_reference_pixels:
        console.print(f"[yellow]note:[/] {report.unknown_reference_pixels:,} reference pixels "
                      "hold class ids the mask does not know; they were ignored")
    if json_out is not None:
        report.write_json(json_out)
        console.print(f"[green]wrote[/] {terminal_safe(json_out)}")
