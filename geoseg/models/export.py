"""Export a bundle to ONNX, with its metadata, and prove the export against torch.

The ONNX model takes the *normalized* image and returns logits:

* input ``normalized_image``: float32 ``(N, C, H, W)``, ``C`` = the bundle's bands in bundle
  order, each scaled as ``(x - mean) / std`` with the bundle's statistics; ``H`` and ``W`` in
  pixels, any multiple of the model's size divisor (``geoseg.size_divisor``, e.g. 32);
* output ``logits``: float32 ``(N, K, H, W)``, ``K`` = the bundle's classes; the class id of a
  pixel is ``argmax`` over ``K`` (softmax gives probabilities).

``deepness=True`` makes the file the QGIS plugin Deepness can run: H = W = the bundle's tile
size (rounded up to the divisor; Deepness takes its tile size from the input's shape) and output
``probabilities`` (softmax over ``K``: Deepness zeroes values under its threshold before the
argmax, which would change the class of pixels whose logits are all negative).

Everything needed to prepare the input and read the output travels in the file as ONNX
``metadata_props`` (:func:`onnx_metadata`), each value JSON text. torch's exporter needs the
optional packages onnx and onnxscript (``pip install "geoseg[onnx]"``); the check against torch
needs onnxruntime.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from geoseg.errors import BundleError, ConfigError, OutputExistsError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort
    import torch

    from geoseg.models.bundle import Bundle

__all__ = [
    "INPUT_NAME",
    "MIN_AGREEMENT",
    "OUTPUT_NAME",
    "PROBABILITIES_NAME",
    "Agreement",
    "OnnxExport",
    "compare_onnx",
    "export_onnx",
    "onnx_metadata",
]

logger = logging.getLogger(__name__)

INPUT_NAME: Final = "normalized_image"
OUTPUT_NAME: Final = "logits"
#: Output name of a ``deepness=True`` export (softmax of the logits over the classes).
PROBABILITIES_NAME: Final = "probabilities"
#: Fraction of pixels whose ONNX Runtime argmax must equal torch's on the export check.
MIN_AGREEMENT: Final = 0.9999
#: Side (px) of the seeded random tile the export is checked on (rounded up to the divisor).
CHECK_SIZE: Final = 512
_INSTALL_HINT: Final = 'pip install "geoseg[onnx]"'


@dataclass(frozen=True)
class Agreement:
    """ONNX Runtime against torch on one input.

    Attributes:
        fraction: share of pixels (0-1) where the argmax class is the same.
        max_abs_diff: largest absolute logit difference (logit units).
        shape: the input's ``(N, C, H, W)``, pixels.
    """

    fraction: float
    max_abs_diff: float
    shape: tuple[int, int, int, int]


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file (one file, weights included).
        size_bytes: its size in bytes.
        opset: the ONNX opset of the default domain in the file.
        size_divisor: H and W of the input must be multiples of this (pixels).
        input_size: ``(H, W)`` the input is fixed to (pixels), or None when any multiple of
            ``size_divisor`` goes.
        output: the output's name: :data:`OUTPUT_NAME` or :data:`PROBABILITIES_NAME`.
        agreement: the check against torch, or None when onnxruntime is not installed.
    """

    path: Path
    size_bytes: int
    opset: int
    size_divisor: int
    input_size: tuple[int, int] | None
    output: str
    agreement: Agreement | None


def onnx_metadata(bundle: Bundle, *, deepness: bool = False) -> dict[str, str]:
    """The ONNX ``metadata_props`` for ``bundle`` (exported with ``deepness``): key → JSON text.

    geoseg's own keys (``geoseg.*``): ``bundle_format``, ``bundle`` (the whole bundle metadata),
    ``bundle_sha256``, ``bands`` (names in input order), ``mean`` and ``std`` (per band, in the
    scene's units: ``x_norm = (x - mean) / std``), ``input_encoding`` (per band
    ``{"scale", "offset"}``, physical = DN × scale + offset, of the values ``mean``/``std``
    apply to, or null: the values as stored), ``input_dtype`` (pixel dtype the statistics
    were made for), ``classes`` (``[{"id", "name", "color": [r, g, b]}]``), ``tile_size``,
    ``halo`` and ``size_divisor`` (pixels), ``input_size`` (``[H, W]`` px the input is fixed
    to, or null), ``input`` and ``output`` (tensor names).

    Keys the QGIS plugin Deepness reads (its ``ModelBase``): ``model_type`` ("Segmentor"),
    ``class_names`` (``{"0": name, …}``), ``tile_size`` (px; the fixed input side with
    ``deepness``, else the bundle's), ``tiles_overlap`` (``2 · halo`` as a percentage of the
    tile, rounded up), ``standardization_mean`` / ``standardization_std`` (the bundle's
    statistics divided by 255, because Deepness divides every raster value by 255 before
    standardizing; the result is the bundle's normalization) and, with ``deepness``,
    ``seg_thresh`` 0 (no probability threshold: the class is the argmax). ``resolution`` is
    not written: a bundle does not record its pixel size.
    """
    from geoseg.tiling import ceil_to

    meta = bundle.meta
    dump = json.dumps
    tile = ceil_to(meta.tile_size, bundle.align) if deepness else meta.tile_size
    props = {
        "geoseg.bundle_format": dump(meta.format),
        "geoseg.bundle": meta.model_dump_json(),
        "geoseg.bundle_sha256": dump(bundle.sha256),
        "geoseg.bands": dump([b.name for b in meta.bands]),
        "geoseg.mean": dump([b.mean for b in meta.bands]),
        "geoseg.std": dump([b.std for b in meta.bands]),
        "geoseg.input_encoding": dump([None if b.encoding is None else b.encoding.model_dump()
                                       for b in meta.bands]),
        "geoseg.input_dtype": dump(meta.input_dtype),
        "geoseg.classes": dump([{"id": c.id, "name": c.name, "color": list(c.color)}
                                for c in meta.classes]),
        "geoseg.tile_size": dump(meta.tile_size),
        "geoseg.halo": dump(meta.halo),
        "geoseg.size_divisor": dump(bundle.align),
        "geoseg.input_size": dump([tile, tile] if deepness else None),
        "geoseg.input": dump(INPUT_NAME),
        "geoseg.output": dump(PROBABILITIES_NAME if deepness else OUTPUT_NAME),
        # Deepness (PUTvision/qgis-plugin-deepness, processing/models/model_base.py)
        "model_type": dump("Segmentor"),
        "class_names": dump({str(c.id): c.name for c in meta.classes}),
        "tile_size": dump(tile),
        "tiles_overlap": dump(min(99, -(-200 * meta.halo // tile))),
        "standardization_mean": dump([b.mean / 255.0 for b in meta.bands]),
        "standardization_std": dump([b.std / 255.0 for b in meta.bands]),
    }
    if deepness:
        props["seg_thresh"] = dump(0.0)
    return props


def _require_exporter() -> None:
    """Raises ConfigError (one line, how to install) when onnx or onnxscript cannot be
    imported."""
    import importlib

    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ONNX export needs {' and '.join(missing)}: {_INSTALL_HINT}")


def _probabilities_module() -> type:
    import torch

    class Probabilities(torch.nn.Module):
        """``model``'s softmax over the class axis: ``(N, K, H, W)`` probabilities."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(image), dim=1)

    return Probabilities


def _to_onnx(model: torch.nn.Module, bands: int, align: int, opset: int | None, path: Path,
             fixed: int | None = None, output: str = OUTPUT_NAME) -> None:
    """Write ``model`` to ``path`` as ONNX: dynamic batch, height and width (or H = W =
    ``fixed`` px), the output named ``output``.

    torch's TorchScript exporter (``dynamo=False``) with ``dynamic_axes``, not the
    ``torch.export``-based one. Both give correct logits at every multiple of ``align`` for
    U-Net and DeepLabV3+ (whose image-pooling branch is upsampled to the input's size at run
    time; ``tests/test_export.py`` runs both at two sizes). The TorchScript exporter works on
    every torch geoseg supports (``torch>=2.4``; ``dynamo=True`` with ``dynamic_shapes`` needs
    a recent torch and onnxscript), and exports in about a second where ``torch.export`` took
    10-30 s for the same small models on 2 busy cores (torch 2.14). Its weakness is that it
    records Python arithmetic on sizes as constants of the example: the example here is small
    and not square (``2 × C × 8·align × 10·align``), so a size baked into the graph fails the
    export's own check on a 512² tile instead of shipping. torch 2.9+ warns that this exporter
    is deprecated; when it goes, ``torch.onnx.export(..., dynamo=True, dynamic_shapes=({0:
    Dim("batch"), 2: align * Dim("height"), 3: align * Dim("width")},))`` is the replacement,
    measured to give the same logits.
    """
    import sys
    import tempfile
    import warnings

    import torch

    axes: dict[int, str] = {0: "batch"} if fixed else {0: "batch", 2: "height", 3: "width"}
    size = (fixed, fixed) if fixed else (8 * align, 10 * align)
    # On a failed export torch's C++ side prints the whole TorchScript graph (hundreds of
    # lines) on standard output (torch switches its ONNX log on for every export): file
    # descriptors 1 and 2 go to a temporary file meanwhile, shown in the debug log (-v) on
    # failure.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with tempfile.TemporaryFile() as log, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice; smp's TracerWarnings
            for fd in saved:
                os.dup2(log.fileno(), fd)
            try:
                torch.onnx.export(
                    model,
                    (torch.zeros(2, bands, *size),),
                    str(path),
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[output],
                    dynamic_axes={INPUT_NAME: axes, output: axes},
                    opset_version=opset,
                    do_constant_folding=True,
                )
            except Exception:
                for fd, original in saved.items():
                    os.dup2(original, fd)
                log.seek(0)
                logger.debug("torch's ONNX log:\n%s", log.read().decode(errors="replace"))
                raise
            finally:
                for fd, original in saved.items():
                    os.dup2(original, fd)
    finally:
        for original in saved.values():
            os.close(original)


def compare_onnx(onnx_model: str | os.PathLike[str] | ort.InferenceSession,
                 model: torch.nn.Module, image: np.ndarray) -> Agreement:
    """Run the ONNX model with onnxruntime and ``model`` with torch on ``image``.

    Args:
        onnx_model: the ONNX file (run on the CPU), or an open session of it.
        model: the eval-mode torch model it was exported from (with the same output: logits,
            or probabilities).
        image: normalized float32 ``(N, C, H, W)``; H, W multiples of the size divisor (or the
            fixed input size).
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    if isinstance(onnx_model, ort.InferenceSession):
        session, label = onnx_model, "the ONNX model"
    else:
        label = str(onnx_model)
        options = ort.SessionOptions()  # idle threads sleep: a one-off run on busy cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(label, options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {INPUT_NAME: image})
    with torch.inference_mode():
        want = model(torch.from_numpy(image)).numpy()
    if got.shape != want.shape:
        raise BundleError(f"{label}: the ONNX output has shape {got.shape}, torch's "
                          f"{want.shape}")
    same = np.argmax(got, axis=1) == np.argmax(want, axis=1)
    n, c, h, w = image.shape
    return Agreement(fraction=float(same.mean()), max_abs_diff=float(np.abs(got - want).max()),
                     shape=(n, c, h, w))


def export_onnx(bundle_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                opset: int | None = None, overwrite: bool = False, deepness: bool = False,
                seed: int = 0) -> OnnxExport:
    """Write ``bundle_path``'s model to ``out`` as ONNX, with its metadata, and check it.

    The file is written under a temporary name beside ``out``, checked, then renamed: on any
    failure nothing is left behind and an existing ``out`` is untouched. The check runs the file
    with onnxruntime (CPU) and the bundle with torch on a seeded random normalized tile
    (standard normal, ``1 × C × 512 × 512``, or the fixed size with ``deepness``); at least
    :data:`MIN_AGREEMENT` of its pixels must get the same class. Without onnxruntime the check
    is skipped with a warning.

    Args:
        bundle_path: the geoseg bundle.
        out: the ONNX file to write (one file; weights included, so under 2 GB).
        opset: ONNX opset; torch's default when None.
        overwrite: replace an existing ``out``.
        deepness: fix H = W to the bundle's tile size (rounded up to the divisor) and output
            softmax probabilities, for the QGIS plugin Deepness (see the module docstring).
        seed: seed of the check's random tile.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
        ConfigError: onnx or onnxscript is not installed.
        BundleError: the bundle cannot be read, torch cannot export it, or the export disagrees
            with torch.
    """
    import importlib.util

    import numpy as np

    from geoseg.models.bundle import load_bundle
    from geoseg.tiling import ceil_to

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give the ONNX file's name, e.g. {out}/model.onnx")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists already; pass --overwrite to replace it")
    _require_exporter()
    import onnx

    bundle = load_bundle(bundle_path)
    model: torch.nn.Module = bundle.build().float()
    if deepness:
        model = _probabilities_module()(model).eval()
    fixed = ceil_to(bundle.meta.tile_size, bundle.align) if deepness else None
    output = PROBABILITIES_NAME if deepness else OUTPUT_NAME
    bands = len(bundle.meta.bands)
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside out (one file system: the rename is atomic), hidden, short whatever out's name is
    tmp = out.with_name(f".{out.name[:100]}.{os.getpid()}.partial")
    try:
        try:
            _to_onnx(model, bands, bundle.align, opset, tmp, fixed, output)
        except Exception as exc:  # torch's exporter raises many kinds; the first line says which
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            first = first.split(" Please feel free")[0].split("  [Caused by")[0][:300]
            hint = ("try the default --opset" if opset is not None
                    else "run with -v for the details")
            shape = f"at {fixed}x{fixed} px" if fixed else "with a free input size"
            raise BundleError(f"{bundle_path}: torch cannot export {bundle.meta.arch}/"
                              f"{bundle.meta.encoder} to ONNX {shape} ({first}); {hint}") from exc
        proto = onnx.load(str(tmp))
        if fixed:  # torch's shape inference names the output's H and W "batch" and "Softmax…"
            dims = proto.graph.output[0].type.tensor_type.shape.dim
            for axis, length in ((1, len(bundle.meta.classes)), (2, fixed), (3, fixed)):
                dims[axis].dim_value = length
        for key, value in onnx_metadata(bundle, deepness=deepness).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        sizes = (f"H = W = {fixed} px" if fixed
                 else f"H and W multiples of {bundle.align} px")
        proto.doc_string = (
            f"geoseg {bundle.meta.arch}/{bundle.meta.encoder}: {INPUT_NAME} float32 (N, {bands}, "
            f"H, W), bands normalized as (x - mean) / std (geoseg.mean, geoseg.std), {sizes} -> "
            f"{output} float32 (N, {len(bundle.meta.classes)}, H, W); class = argmax over axis 1")
        opset_written = next((o.version for o in proto.opset_import
                              if o.domain in ("", "ai.onnx")), 0)
        onnx.save_model(proto, str(tmp))
        agreement = None
        if importlib.util.find_spec("onnxruntime") is None:
            logger.warning("%s: not checked against torch: onnxruntime is not installed "
                           "(pip install onnxruntime)", out)
        else:
            side = fixed or ceil_to(CHECK_SIZE, bundle.align)
            rng = np.random.default_rng(seed)
            image = rng.standard_normal((1, bands, side, side), dtype=np.float32)
            try:
                agreement = compare_onnx(tmp, model, image)
            except Exception as exc:  # onnxruntime's own errors: an op or opset it lacks
                raise BundleError(f"{out}: not written: onnxruntime cannot run the export "
                                  f"({str(exc).strip()[:300]}); try another --opset") from exc
            if not agreement.fraction >= MIN_AGREEMENT:
                raise BundleError(
                    f"{out}: not written: the ONNX model gives the same class as torch on only "
                    f"{100 * agreement.fraction:.3f} % of a random {side}x{side} tile (max "
                    f"|logit difference| {agreement.max_abs_diff:.3g}; at least "
                    f"{100 * MIN_AGREEMENT:.2f} % needed); try another --opset")
        size = tmp.stat().st_size
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return OnnxExport(path=out, size_bytes=size, opset=opset_written, size_divisor=bundle.align,
                      input_size=(fixed, fixed) if fixed else None, output=output,
                      agreement=agreement)
