"""Bring your own model: an smp model trained elsewhere → a geoseg bundle, proven equal.

Sources (see ``docs/models.md``):

* ``state_dict``: a ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict of an smp model; the
  architecture comes from the caller (``--arch``/``--encoder``/``--arch-kwargs``).
* ``hf_folder``: an smp ``save_pretrained`` folder or a Hugging Face-style folder
  (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``); the architecture comes
  from ``config.json`` (never ``from_pretrained``, which may download).
* ``lightning``: a ``.ckpt`` of TorchGeo's ``SemanticSegmentationTask`` (architecture from its
  ``hyper_parameters``) or of any LightningModule wrapping an smp model (architecture from the
  caller); the key prefix (``model.``) is detected.

Files are read by :mod:`geoseg.models.weights` (no code from them ever runs). Every import
proves itself: the source tensors are loaded into a model built by ``smp.create_model`` from the
source's own description, and the written bundle's model must give the same logits on a seeded
random batch (max abs difference ≤ :data:`TOLERANCE`), or nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from geoseg.errors import BundleError, ConfigError, OutputExistsError
from geoseg.models.bundle import (
    BandSpec,
    BundleMeta,
    ClassSpec,
    InputDtype,
    file_sha256,
    load_bundle,
    save_bundle,
    validation_message,
)
from geoseg.models.registry import ARCHITECTURES, build_model, recommended_halo
from geoseg.models.sources import Described, Source, open_source
from geoseg.models.weights import KeyReport, compare_state_dicts, state_dict_of

if TYPE_CHECKING:
    import torch

__all__ = ["TOLERANCE", "ImportResult", "import_model"]

#: Largest max abs logit difference (fp32) between source and bundle an import accepts.
TOLERANCE = 1e-5
#: The seeded random batch every import is checked on: (N, C, side, side), standard normal.
CHECK_BATCH, CHECK_SIDE, CHECK_SEED = 2, 64, 0

@dataclass(frozen=True)
class ImportResult:
    """What an import wrote and how well the bundle reproduces the source.

    Attributes:
        path: the bundle written.
        meta: its metadata (``training`` holds the provenance).
        max_abs_diff: max abs logit difference, bundle vs source, on the check batch.
        batch_shape: the check batch's shape ``(N, C, H, W)``.
        keys: how the source's tensors fit the bundle's model.
        described: the architecture used and where it came from.
    """

    path: Path
    meta: BundleMeta
    max_abs_diff: float
    batch_shape: tuple[int, int, int, int]
    keys: KeyReport
    described: Described


def import_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    bands: tuple[BandSpec, ...],
    classes: tuple[ClassSpec, ...],
    input_dtype: InputDtype,
    tile_size: int,
    halo: int | None = None,
    arch: str | None = None,
    encoder: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    prefix: str | None = None,
    description: str = "",
    overwrite: bool = False,
) -> ImportResult:
    """Import the smp model in ``source`` as a bundle at ``out`` (atomically, checked).

    ``arch``/``encoder``/``arch_kwargs`` are needed where the source does not say (a state
    dict, a LightningModule that is not TorchGeo's), and must agree with it where it does.

    Raises:
        ConfigError: options missing or contradicting the source.
        BundleError: an unreadable or refused source, weights that do not fit (the message
            names the layer and both shapes), or logits that differ by more than
            :data:`TOLERANCE`; nothing is written.
        OutputExistsError: ``out`` exists and ``overwrite`` is False.
    """
    import torch

    source, out = Path(source), Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists already; pass --overwrite to replace it")
    src = open_source(source)
    if out.resolve() in (source.resolve(), src.weights_file.resolve()):
        raise ConfigError(f"{out}: is the source's weights file; write the bundle to another "
                          "file")
    described = _resolve(src, source, arch, encoder, arch_kwargs)
    n_bands, n_classes = len(bands), len(classes)
    if described.classes == 1 or n_classes == 1:  # e.g. TorchGeo's binary task
        who = "the model gives" if described.classes == 1 else "--classes names"
        raise BundleError(f"{source}: {who} one class: geoseg maps each pixel to the most "
                          "probable of one logit per class, so a model with one output channel "
                          "(binary, sigmoid) would give class 0 everywhere; it needs two or "
                          "more (e.g. background,water)")
    if described.in_channels is not None and described.in_channels != n_bands:
        raise BundleError(f"{source}: the weights take {described.in_channels} input channels "
                          f"({described.origin}); --bands names {n_bands}")
    if described.classes is not None and described.classes != n_classes:
        raise BundleError(f"{source}: the weights give {described.classes} classes "
                          f"({described.origin}); --classes names {n_classes}")
    kwargs = described.bundle_kwargs
    with torch.device("meta"):
        target = build_model(described.arch, described.encoder, n_bands, n_classes, kwargs)
    expected = target.state_dict()
    tensors, used_prefix = state_dict_of(src.loaded, prefix, expected=expected.keys(),
                                         source=source)
    if described.kwargs.get("aux_params"):  # the image-level head stays behind
        pixels = {k: v for k, v in tensors.items() if not k.startswith("classification_head.")}
    else:
        pixels = tensors
    keys = compare_state_dicts(pixels, expected)
    first_conv = next((k for k, v in expected.items() if v.ndim == 4), "")
    _check_fit(keys, source, described, n_bands, n_classes, used_prefix, first_conv)
    target.load_state_dict(pixels, strict=True, assign=True)
    reference = _source_model(described, n_bands, n_classes, tensors, source)

    sha = file_sha256(src.weights_file)
    provenance = {"file": src.weights_file.name if src.kind != "hf_folder" else
                  f"{source.name}/{src.weights_file.name}", "sha256": sha, "kind": src.kind,
                  "prefix": used_prefix, "architecture_from": described.origin}
    try:
        meta = BundleMeta(
            arch=described.arch, encoder=described.encoder, arch_kwargs=kwargs, bands=bands,
            input_dtype=input_dtype, classes=classes, tile_size=tile_size,
            halo=recommended_halo(described.arch) if halo is None else halo,
            description=description,
            training={"init": "import", "source": provenance})
    except ValidationError as exc:
        raise ConfigError(f"{out}: not written: invalid bundle settings: "
                          f"{validation_message(exc)}") from exc
    shape = (CHECK_BATCH, n_bands, CHECK_SIDE, CHECK_SIDE)
    batch = torch.randn(shape, generator=torch.Generator().manual_seed(CHECK_SEED))
    expected_logits = _logits(reference, batch)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.import")
    try:  # written under a temporary name and checked; then given its final metadata
        save_bundle(target, meta, tmp)
        checked = load_bundle(tmp)
        diff = _check_logits(checked.build(), batch, expected_logits, source)
        meta = meta.model_copy(update={"training": meta.training | {"logits_max_abs_diff": diff}})
        save_bundle(target, meta, tmp)
        _check_same_weights(load_bundle(tmp).state_dict, checked.state_dict, source)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ImportResult(out, meta, diff, shape, keys, described)


def _resolve(src: Source, source: Path, arch: str | None, encoder: str | None,
             arch_kwargs: dict[str, Any] | None) -> Described:
    """The source's own description, checked against the options; or one from the options."""
    described = src.described
    if described is None:
        if not (arch and encoder):
            what = {"state_dict": "a state dict does not say which model it is for",
                    "lightning": "the checkpoint's hyper_parameters name no smp architecture"}
            raise ConfigError(f"{source}: {what.get(src.kind, 'no architecture')}; give "
                              "--arch and --encoder (and --arch-kwargs if it was built with "
                              "other than smp's defaults)")
        arch = arch.lower()
        if arch not in ARCHITECTURES:
            raise ConfigError(f"--arch {arch!r}: unknown; one of {', '.join(ARCHITECTURES)}")
        return Described(arch, encoder, kwargs=dict(arch_kwargs or {}))
    for option, given, said in (("--arch", arch, described.arch),
                                ("--encoder", encoder, described.encoder)):
        if given is not None and given.lower() != said.lower():
            raise ConfigError(f"{option} {given!r}: {described.origin} says {said!r}; leave "
                              f"{option} out")
    if arch_kwargs:
        raise ConfigError(f"--arch-kwargs: {described.origin} gives the constructor "
                          "arguments; leave --arch-kwargs out")
    return described


def _check_fit(keys: KeyReport, source: Path, described: Described, n_bands: int,
               n_classes: int, prefix: str, first_conv: str) -> None:
    """Refuse weights that do not fit, naming the layer and both shapes.

    Weights for another architecture are named as such first; then a first convolution
    (``first_conv``) with another number of input channels than bands, then a head with
    another number of classes.
    """
    model = f"a {described.arch}/{described.encoder}" + (
        f" with {described.bundle_kwargs}" if described.bundle_kwargs else "")
    channels = [(n, h, w) for n, h, w in keys.mismatched
                if n == first_conv and h[1:] != w[1:] and h[:1] + h[2:] == w[:1] + w[2:]]
    head = [(n, h, w) for n, h, w in keys.mismatched
            if n.startswith("segmentation_head.") and h[0] != w[0] and h[1:] == w[1:]]
    other = [m for m in keys.mismatched if m not in channels and m not in head]
    if other:
        name, have, want = other[0]
        raise BundleError(f"{source}: layer {name} is {have} in the weights but {want} in "
                          f"{model}; the weights are for another encoder or constructor "
                          f"arguments ({keys.summary()})")
    if keys.missing or keys.unexpected:
        raise BundleError(f"{source}: the weights do not fit {model} (key prefix {prefix!r}): "
                          f"{keys.summary()}; check --arch/--encoder/--arch-kwargs, or give "
                          "the prefix of the model's keys with --prefix")
    for name, have, want in channels:
        raise BundleError(f"{source}: the weights take {have[1]} input channels; --bands "
                          f"names {n_bands} ({name} is {have}, {want} for {n_bands} bands)")
    for name, have, want in sorted(head, key=lambda m: -len(m[1])):  # the weight, not the bias
        raise BundleError(f"{source}: the weights give {have[0]} classes; --classes names "
                          f"{n_classes} ({name} is {have}, {want} for {n_classes} classes)")


def _source_model(described: Described, n_bands: int, n_classes: int,
                  tensors: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    """The source model, built by smp from the source's own description (not the bundle's).

    Built on the meta device and given the source's tensors (no random initialization to
    overwrite), unless it keeps a tensor outside its state dict (then built the ordinary way).
    """
    import segmentation_models_pytorch as smp
    import torch

    def create() -> torch.nn.Module:
        return smp.create_model(described.arch, encoder_name=described.encoder,
                                encoder_weights=None, in_channels=n_bands, classes=n_classes,
                                **described.kwargs)

    with torch.device("meta"):
        model = create()
    own = model.state_dict()
    assign = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()} \
        <= own.keys()
    if assign:  # in the model's own dtypes (float32), as load_state_dict would copy them
        tensors = {k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}
    else:
        model = create()
    try:
        model.load_state_dict(tensors, strict=True, assign=assign)
    except RuntimeError as exc:
        raise BundleError(f"{source}: the weights do not load into the source model "
                          f"({str(exc).splitlines()[0]})") from exc
    return model.eval()


def _logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    import torch

    try:
        with torch.inference_mode():
            out = model(batch)
    except (RuntimeError, ValueError) as exc:  # e.g. an encoder made for another input size
        raise BundleError(f"the model cannot run a {'×'.join(map(str, batch.shape))} check "
                          f"batch ({str(exc).splitlines()[0]})") from exc
    return (out[0] if isinstance(out, tuple | list) else out).float()


def _check_logits(model: torch.nn.Module, batch: torch.Tensor, expected: torch.Tensor,
                  source: Path) -> float:
    """Max abs difference of the (bundle's) model's logits from ``expected``; over
    :data:`TOLERANCE` is refused."""
    got = _logits(model, batch)
    if got.shape != expected.shape:
        raise BundleError(f"{source}: not imported: the bundle's model gives logits of shape "
                          f"{tuple(got.shape)}, the source's {tuple(expected.shape)}")
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        raise BundleError(f"{source}: not imported: the bundle's logits differ from the "
                          f"source's by up to {diff:.2e} (> {TOLERANCE:.0e}) on a random batch")
    return diff


def _check_same_weights(final: Mapping[str, torch.Tensor], checked: Mapping[str, torch.Tensor],
                        source: Path) -> None:
    """The final file (checked metadata added) holds the very tensors whose logits were
    checked, bit for bit, so it gives the same logits."""
    import torch

    if final.keys() != checked.keys() or not all(
            final[k].dtype == v.dtype and torch.equal(final[k], v) for k, v in checked.items()):
        raise BundleError(f"{source}: not imported: the bundle's weights changed between the "
                          "check and the final write")
