"""Starting training from weights made elsewhere: a bundle (``--init``) or an encoder's
state dict (``--encoder-weights``).

- :func:`model_from_bundle`: the bundle's architecture, encoder, bands and normalization are
  kept; when the classes differ, the segmentation head is re-initialised and every other
  tensor kept.
- :func:`load_encoder_weights`: a timm/torchvision ResNet state dict (``conv1.weight``,
  ``layer1.0.conv1.weight``, ``fc.*``; smp's ResNet encoders use the same names), or an smp
  model's (``encoder.`` prefix), or TorchGeo's Sentinel-2 ResNets (13 input channels). The
  first layer's input channels are matched to the model's bands by name.

Files are read only through :mod:`geoseg.models.weights` (nothing in them is executed).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import BundleError, ConfigError
from geoseg.models.bundle import Bundle, ClassSpec, file_sha256
from geoseg.models.registry import build_model

if TYPE_CHECKING:
    import torch

__all__ = [
    "HEAD",
    "SENTINEL2_BANDS",
    "EncoderReport",
    "InitReport",
    "band_key",
    "load_encoder_weights",
    "model_from_bundle",
]

log = logging.getLogger(__name__)

#: Key prefix of smp's segmentation head (the layer that maps features to class scores).
HEAD = "segmentation_head."
#: Sentinel-2's 13 bands in the order of TorchGeo's Sentinel-2 weights (``SENTINEL2_ALL_*``:
#: B1…B8, B8a, B9…B12), the default channel order of a 13-channel weights file.
SENTINEL2_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                    "B8A", "B09", "B10", "B11", "B12")


def band_key(name: str) -> str:
    """A band name compared by: upper case, one-digit Sentinel-2 numbers padded (``B1`` and
    ``b01`` → ``B01``, ``B8a`` → ``B8A``)."""
    key = name.strip().upper()
    found = re.fullmatch(r"B(\d)", key)
    return f"B0{found.group(1)}" if found else key


@dataclass(frozen=True)
class InitReport:
    """What :func:`model_from_bundle` kept and reset.

    Attributes:
        bundle: file name; sha256: its digest.
        kept_tensors, kept_parameters: tensors (parameters and buffers) copied, and the
            number of values in the parameters among them.
        reset: names of the re-initialised tensors (the head), empty when classes match.
        reset_parameters: values in them.
        head_layers: the head's layers, e.g. ``segmentation_head.0 (Conv2d 16→3)``.
    """

    bundle: str
    sha256: str
    kept_tensors: int
    kept_parameters: int
    reset: tuple[str, ...]
    reset_parameters: int
    head_layers: tuple[str, ...]

    def summary(self) -> str:
        """One line for the console."""
        kept = (f"--init {self.bundle}: kept {self.kept_tensors} tensors "
                f"({self.kept_parameters:,} parameters)")
        if not self.reset:
            return kept + "; classes unchanged, nothing reset"
        return (f"{kept}; reset the segmentation head for the new classes: {len(self.reset)} "
                f"tensors ({self.reset_parameters:,} parameters) in "
                f"{', '.join(self.head_layers)}")

    def record(self) -> dict[str, Any]:
        """Provenance for the new bundle's ``training`` metadata."""
        return {"bundle": self.bundle, "sha256": self.sha256, "kept_tensors": self.kept_tensors,
                "reset": list(self.reset)}


def _same_classes(a: Sequence[ClassSpec], b: Sequence[ClassSpec]) -> bool:
    return [c.name.casefold() for c in a] == [c.name.casefold() for c in b]


def model_from_bundle(bundle: Bundle, classes: Sequence[ClassSpec]
                      ) -> tuple[torch.nn.Module, InitReport]:
    """A trainable model from ``bundle`` for ``classes``: every tensor of the bundle kept,
    except the segmentation head's when the class names differ (re-initialised by smp).

    Raises:
        BundleError: the bundle's model has no ``segmentation_head`` to reset.
    """
    meta = bundle.meta
    model = build_model(meta.arch, meta.encoder, len(meta.bands), len(classes), meta.arch_kwargs)
    own = model.state_dict()
    reset_head = not _same_classes(meta.classes, classes)
    if reset_head and not any(k.startswith(HEAD) for k in own):
        raise BundleError(f"{bundle.path}: its {meta.arch} has no segmentation head "
                          f"({HEAD}*) to reset for new classes")
    keep = {k: v for k, v in bundle.state_dict.items()
            if not (reset_head and k.startswith(HEAD))}
    try:
        model.load_state_dict(keep, strict=False)
    except RuntimeError as exc:  # a kept tensor of another shape: the bundle is inconsistent
        raise BundleError(f"{bundle.path}: its weights do not fit its own architecture "
                          f"({str(exc).splitlines()[0]})") from exc
    reset = tuple(sorted(k for k in own if k not in keep))
    params = dict(model.named_parameters())
    head_layers = tuple(
        f"{name} ({type(mod).__name__} {_shape_text(mod)})"
        for name, mod in model.named_modules()
        if name.startswith(HEAD.rstrip(".")) and any(True for _ in mod.parameters(recurse=False)))
    report = InitReport(
        bundle=bundle.path.name, sha256=bundle.sha256, kept_tensors=len(keep),
        kept_parameters=sum(int(params[k].numel()) for k in keep if k in params),
        reset=reset, reset_parameters=sum(int(params[k].numel()) for k in reset if k in params),
        head_layers=head_layers if reset_head else ())
    return model, report


def _shape_text(module: Any) -> str:
    if hasattr(module, "in_channels") and hasattr(module, "out_channels"):
        return f"{module.in_channels}→{module.out_channels}"
    return ""


@dataclass(frozen=True)
class EncoderReport:
    """What :func:`load_encoder_weights` loaded into the encoder.

    Attributes:
        file, sha256: the weights file.
        prefix: key prefix stripped from the file's names (``""`` for none).
        matched: encoder tensors loaded from the file.
        missing: encoder tensors the file lacks (left as initialised).
        unexpected: the file's tensors the encoder has no place for (e.g. ``fc.*``).
        mismatched: ``(name, file shape, encoder shape)``, not loaded.
        first_layer: the first convolution's name.
        channels: model band → the file's channel it came from (None: not in the file,
            initialised with the mean of the file's channels).
    """

    file: str
    sha256: str
    prefix: str
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    first_layer: str
    channels: dict[str, str | None] = field(default_factory=dict)

    def summary(self) -> str:
        """Lines for the console."""
        def few(names: Sequence[str]) -> str:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more"
                                             if len(names) > 4 else "")
            return f" ({shown})" if names else ""

        lines = [f"--encoder-weights {self.file}: {len(self.matched)} tensors matched, "
                 f"{len(self.missing)} missing{few(self.missing)}, {len(self.unexpected)} "
                 f"unexpected{few(self.unexpected)}"
                 + (f", {len(self.mismatched)} of another shape"
                    f"{few([m[0] for m in self.mismatched])}" if self.mismatched else "")]
        if self.channels:
            parts = [f"{band}←{src}" if src else f"{band}←(mean, not in the file)"
                     for band, src in self.channels.items()]
            lines.append(f"first layer {self.first_layer}: {', '.join(parts)}")
        return "\n".join(lines)

    def record(self) -> dict[str, Any]:
        """Provenance for the new bundle's ``training`` metadata."""
        return {"file": self.file, "sha256": self.sha256, "prefix": self.prefix,
                "matched": len(self.matched), "missing": list(self.missing),
                "unexpected": list(self.unexpected),
                "mismatched": [m[0] for m in self.mismatched], "channels": self.channels}


def _first_conv(encoder: torch.nn.Module, in_channels: int) -> str:
    """State-dict name of the encoder's first convolution weight (the one reading the
    bands)."""
    import torch

    for name, module in encoder.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == in_channels:
            return f"{name}.weight"
    raise BundleError("the encoder has no convolution reading the input bands")


def load_encoder_weights(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    bands: Sequence[str],
    weights_bands: Sequence[str] | None = None,
) -> EncoderReport:
    """Load a pretrained encoder from a state-dict file into ``model.encoder`` (in place).

    The first layer's input channels are picked by band name: the file's channel order is
    ``weights_bands``, or :data:`SENTINEL2_BANDS` for 13 channels; without either, a file with
    as many channels as ``bands`` is taken in order. A model band missing from the file gets
    the mean of the file's channels.

    Raises:
        BundleError: the file cannot be read safely (see
            :func:`geoseg.models.weights.load_weights_file`), or no tensor matched.
        ConfigError: the channels cannot be matched (say which with ``--weights-bands``).
    """
    import torch

    from geoseg.models.weights import compare_state_dicts, load_weights_file, state_dict_of

    path = Path(path)
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise BundleError("this model has no encoder to load weights into")
    target = encoder.state_dict()
    source, prefix = state_dict_of(load_weights_file(path), None, expected=target.keys(),
                                   source=path)
    first = _first_conv(encoder, len(bands))
    channels: dict[str, str | None] = {}
    if first in source and source[first].ndim == 4:
        source = dict(source)
        source[first], channels = _pick_channels(source[first], target[first], bands,
                                                 weights_bands, path)
    report = compare_state_dicts(source, target)
    if not report.matched:
        raise BundleError(
            f"{path}: none of its {len(source)} tensors fits the {type(encoder).__name__} "
            f"encoder (file keys like {', '.join(sorted(source)[:2])}; encoder keys like "
            f"{', '.join(sorted(target)[:2])}); give weights of the same encoder "
            "(--encoder) saved as a state dict")
    with torch.no_grad():
        for name in report.matched:
            target[name].copy_(source[name].to(target[name].dtype))
    return EncoderReport(path.name, file_sha256(path), prefix, report.matched, report.missing,
                         report.unexpected, report.mismatched, first, channels)


def _pick_channels(weight: torch.Tensor, own: torch.Tensor, bands: Sequence[str],
                   weights_bands: Sequence[str] | None, path: Path
                   ) -> tuple[torch.Tensor, dict[str, str | None]]:
    """The file's first-layer weight ``(out, C_file, k, k)`` with its input channels chosen
    for ``bands``; and model band → file band (or None)."""
    n_file = int(weight.shape[1])
    order = list(weights_bands) if weights_bands else (
        list(SENTINEL2_BANDS) if n_file == len(SENTINEL2_BANDS) else None)
    if order is None:
        if n_file != len(bands):
            raise ConfigError(
                f"{path}: its first layer takes {n_file} input channels and the model "
                f"{len(bands)} ({', '.join(bands)}); name the file's channels in order with "
                "--weights-bands (e.g. B04,B03,B02 for RGB ImageNet weights)")
        return weight, {}
    if len(order) != n_file:
        raise ConfigError(f"--weights-bands names {len(order)} bands but the first layer of "
                          f"{path} takes {n_file} channels")
    index = {band_key(b): k for k, b in enumerate(order)}
    if len(index) != len(order):
        raise ConfigError(f"--weights-bands names a band twice: {','.join(order)}")
    picked = [index.get(band_key(b)) for b in bands]
    if all(k is None for k in picked):
        raise ConfigError(f"{path}: none of the model's bands ({', '.join(bands)}) is among "
                          f"the file's channels ({', '.join(order)}); check --weights-bands")
    out = weight.new_empty((weight.shape[0], len(bands), *weight.shape[2:]))
    if tuple(out.shape) != tuple(own.shape):
        return weight, {}  # another layer shape altogether: reported as mismatched
    mean = weight.mean(dim=1)
    for pos, k in enumerate(picked):
        out[:, pos] = weight[:, k] if k is not None else mean
    return out, {b: (order[k] if k is not None else None) for b, k in zip(bands, picked,
                                                                           strict=True)}

