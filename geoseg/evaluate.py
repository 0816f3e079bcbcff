"""Accuracy of a class mask against a reference (raster or polygons), aligned by georeference.

The reference is brought onto the mask's grid (warped with nearest neighbour, or polygons
reprojected and burnt) strip by strip, so memory does not grow with the scene. Pixels that are
nodata in either, or unlabelled in the reference, are ignored. The confusion matrix has the
reference classes in rows and the mask's in columns.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import GeoSegError, SceneError
from geoseg.labels import IGNORE, Grid, open_labels
from geoseg.maskfile import read_classes
from geoseg.tiling import Window

__all__ = [
    "ClassScores",
    "EvaluationReport",
    "Scores",
    "accumulate_confusion",
    "evaluate_mask",
    "scores_from_confusion",
]

_PAIRS = 256 * 256


def accumulate_confusion(reference: np.ndarray, predicted: np.ndarray,
                         out: np.ndarray | None = None) -> np.ndarray:
    """Add pixel pairs to a ``(256, 256)`` int64 confusion matrix (rows reference, cols mask).

    Args:
        reference, predicted: uint8 class ids of the same shape; :data:`IGNORE` (255) in either
            excludes the pixel.
        out: the matrix to add to (created when None).
    """
    if out is None:
        out = np.zeros((256, 256), dtype=np.int64)
    keep = (reference != IGNORE) & (predicted != IGNORE)
    pairs = reference[keep].astype(np.int32) * 256 + predicted[keep].astype(np.int32)
    out += np.bincount(pairs, minlength=_PAIRS).reshape(256, 256)
    return out


@dataclass(frozen=True)
class ClassScores:
    """Per-class scores; ``None`` where undefined (no pixel of the class in the denominator)."""

    id: int
    name: str
    precision: float | None
    recall: float | None
    f1: float | None
    iou: float | None
    reference_pixels: int
    predicted_pixels: int


@dataclass(frozen=True)
class Scores:
    """Agreement of two label rasters.

    Attributes:
        overall_accuracy: fraction of compared pixels with the same class.
        mean_iou: mean IoU over classes present in the reference or the mask.
        classes: per-class scores.
        confusion: ``K x K`` pixel counts, rows reference, columns mask.
        pixels: pixels compared.
    """

    overall_accuracy: float
    mean_iou: float
    classes: tuple[ClassScores, ...]
    confusion: list[list[int]]
    pixels: int


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def scores_from_confusion(confusion: np.ndarray, names: list[str]) -> Scores:
    """Scores from a ``K x K`` confusion matrix (rows reference, cols prediction).

    Raises:
        GeoSegError: the matrix holds no pixel.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    total = int(cm.sum())
    if total == 0:
        raise GeoSegError("no pixel to compare: every pixel is nodata or unlabelled in one of "
                          "the two rasters")
    tp = np.diag(cm)
    ref = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    classes = []
    ious = []
    for k, name in enumerate(names):
        p, r = _ratio(tp[k], pred[k]), _ratio(tp[k], ref[k])
        f1 = None if p is None or r is None else (0.0 if p + r == 0 else 2 * p * r / (p + r))
        iou = _ratio(tp[k], ref[k] + pred[k] - tp[k])
        if iou is not None:
            ious.append(iou)
        classes.append(ClassScores(k, name, p, r, f1, iou, int(ref[k]), int(pred[k])))
    return Scores(
        overall_accuracy=float(tp.sum()) / total,
        mean_iou=float(np.mean(ious)) if ious else math.nan,
        classes=tuple(classes),
        confusion=cm.tolist(),
        pixels=total,
    )


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate_mask` compared and found.

    Attributes:
        mask, reference: the files compared.
        scores: the agreement.
        ignored_pixels: mask pixels not compared (nodata in either, or unlabelled reference).
        unknown_reference_pixels: reference pixels whose class id the mask does not know (ignored).
    """

    mask: Path
    reference: Path
    scores: Scores
    ignored_pixels: int
    unknown_reference_pixels: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, undefined scores as null)."""
        data = asdict(self)
        data["mask"], data["reference"] = str(self.mask), str(self.reference)
        if math.isnan(self.scores.mean_iou):
            data["scores"]["mean_iou"] = None
        return data

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, path)
        return path


def evaluate_mask(
    mask_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    *,
    class_field: str | None = None,
    ignore_value: int | None = None,
    layer: str | None = None,
    strip_rows: int = 512,
) -> EvaluationReport:
    """Compare a class mask with a reference, on the mask's grid.

    Args:
        mask_path: single-band integer raster of class ids (e.g. from ``geoseg predict``);
            its nodata (:data:`~geoseg.maskfile.NODATA` for geoseg masks) is ignored. Class
            names come from its :data:`~geoseg.maskfile.CLASSES_TAG` when present.
        reference_path: raster of class ids (any CRS/resolution: warped nearest onto the mask
            grid) or polygons with a class field (ids, or names matching the mask's classes).
        class_field: the polygons' class field (guessed from class/label… when None).
        ignore_value: a reference value meaning "unlabelled" besides its nodata.
        layer: vector layer name when the file holds several.
        strip_rows: rows read at a time.

    Raises:
        SceneError: unreadable inputs, or a malformed classes tag in the mask; GeoSegError:
            the two do not overlap, or share no labelled pixel.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window as RioWindow

    mask_path, reference_path = Path(mask_path), Path(reference_path)
    if not mask_path.exists():
        raise SceneError(f"{mask_path}: no such mask")
    try:
        src = rasterio.open(mask_path)
    except RasterioIOError as exc:
        raise SceneError(f"{mask_path}: not a readable mask raster ({exc})") from exc
    with src:
        if src.crs is None:
            raise SceneError(f"{mask_path}: the mask has no CRS, so it cannot be aligned with "
                             "the reference")
        if np.dtype(src.dtypes[0]).kind not in "ui":
            raise SceneError(f"{mask_path}: a mask holds integer class ids, not {src.dtypes[0]}")
        grid = Grid(src.crs.to_wkt(), tuple(src.transform)[:6], src.height, src.width)  # type: ignore[arg-type]
        classes = read_classes(src, mask_path)
        names = [c.name for c in classes] if classes else None
        labels = open_labels(reference_path, grid, class_field=class_field, class_names=names,
                             ignore_value=ignore_value, layer=layer)
        try:
            if not labels.overlaps():
                raise GeoSegError(
                    f"{reference_path} does not overlap {mask_path}: their extents do not "
                    "intersect (after reprojection to the mask's CRS); check that the reference "
                    "covers the mask's area and has the right CRS"
                )
            confusion = np.zeros((256, 256), dtype=np.int64)
            ignored = 0
            for row in range(0, grid.height, strip_rows):
                window = Window(row, 0, min(strip_rows, grid.height - row), grid.width)
                rio = RioWindow(0, row, grid.width, window.height)  # type: ignore[call-arg]
                pred = src.read(1, window=rio)
                valid = src.read_masks(1, window=rio) != 0
                if src.nodata is not None:
                    valid &= pred != src.nodata
                valid &= (pred >= 0) & (pred < IGNORE)
                pred8 = np.where(valid, pred, IGNORE).astype(np.uint8)
                ref = labels.read(window)
                accumulate_confusion(ref, pred8, confusion)
                ignored += int(((ref == IGNORE) | (pred8 == IGNORE)).sum())
        finally:
            labels.close()
    n = len(names) if names else int(max(np.nonzero(confusion.sum(1) + confusion.sum(0))[0],
                                         default=-1)) + 1
    unknown = int(confusion[n:, :].sum())
    kept = confusion[:n, :n]
    if kept.sum() == 0:
        raise GeoSegError(f"{mask_path} and {reference_path} overlap but share no labelled "
                          "pixel (all nodata or unlabelled where they meet)")
    scores = scores_from_confusion(kept, names or [f"class{k}" for k in range(n)])
    return EvaluationReport(mask_path, reference_path, scores, ignored + unknown, unknown)
