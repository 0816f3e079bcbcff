"""Model bundles: one safetensors file holding the weights and, in its header, the metadata.

The metadata (JSON under the header key ``geoseg.bundle``) says everything needed to run the
model on a scene: architecture and encoder, input bands in order with their normalization and
the dtype they expect, classes with names and colours, and the tile size and halo. Loading never
unpickles anything: safetensors stores raw tensors, the metadata is validated by pydantic.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from geoseg.errors import BundleError
from geoseg.models.header import SafetensorsHeader, read_header
from geoseg.models.meta import (
    BUNDLE_FORMAT,
    BandSpec,
    BundleMeta,
    ClassSpec,
    InputDtype,
    InputEncoding,
    check_class_names,
    validation_message,
)
from geoseg.models.registry import (
    HEAD_KEY,
    INPUT_CONV_KEYS,
    build_model,
    model_align,
    static_align,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUNDLE_FORMAT",
    "BandSpec",
    "Bundle",
    "BundleInfo",
    "BundleMeta",
    "ClassSpec",
    "InputEncoding",
    "check_align",
    "check_bundle",
    "check_class_names",
    "check_unchanged",
    "check_weights",
    "file_sha256",
    "init_bundle",
    "load_bundle",
    "read_bundle_meta",
    "save_bundle",
    "validation_message",
]

_META_KEY = "geoseg.bundle"


def check_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                  action: str = "") -> None:
    """Refuse weights holding NaN or infinite values (one pass over the tensors).

    A non-finite weight makes every logit NaN, and every pixel class 0 without an error. numpy
    checks float16/float32/float64 tensors (torch's CPU ``isfinite`` is ~30 × slower on the
    float16 tensors bundles store); bfloat16 is widened to float32 first (exact).

    Raises:
        BundleError: naming ``path`` and the bad tensors (how many of their values are bad);
            ``action`` (e.g. "not written") says what was refused.
    """
    import numpy as np
    import torch

    bad = []
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        t = tensor.detach()
        if t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()
        finite = np.isfinite(t.cpu().numpy())
        if not finite.all():
            bad.append(f"{name!r} ({finite.size - int(finite.sum())} of {finite.size} values)")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise BundleError(
            f"{path}: {action + ': ' if action else ''}NaN or infinite weights in "
            f"{len(bad)} tensor(s): {', '.join(sorted(bad)[:3])}{more}, so every pixel would "
            "be class 0; the training diverged or the file was damaged — retrain (e.g. with "
            "a lower learning rate) or use another bundle")


@dataclass(frozen=True)
class BundleInfo:
    """A bundle checked from its header alone (:func:`check_bundle`): what planning a run
    needs, without the weights or torch.

    Attributes:
        meta: the metadata.
        path: the file it was read from.
        sha256: hex digest of the file's bytes (identifies the model in caches and reports).
        align: the model's size divisor in pixels (its total down-sampling, e.g. 32); worked
            out from the architecture (:func:`~geoseg.models.registry.static_align`) until the
            model is built.
    """

    meta: BundleMeta
    path: Path
    sha256: str
    align: int = 32


@dataclass(frozen=True, kw_only=True)
class Bundle(BundleInfo):
    """A loaded bundle (:func:`load_bundle`): a :class:`BundleInfo` with the weights, checked
    against the architecture, and ``align`` read from the built model.

    Attributes:
        state_dict: the weights, name → CPU tensor.
    """

    state_dict: dict[str, torch.Tensor]

    def build(self) -> torch.nn.Module:
        """An eval-mode torch model with these weights (CPU). Its tensors are the bundle's own
        (no copy): training one changes ``state_dict`` too."""
        return _model_with_weights(self.meta, self.state_dict, self.path)


def _model_with_weights(
    meta: BundleMeta, state_dict: dict[str, torch.Tensor], path: Path
) -> torch.nn.Module:
    """The bundle's model holding ``state_dict``'s tensors.

    Built on torch's meta device and given the file's tensors, so no random initialization runs
    only to be overwritten (U-Net/ResNet-34: 0.2 s and a second copy of the weights, on every
    worker and before every run). A model that keeps a tensor outside its state dict (a
    non-persistent buffer), or whose constructor cannot run on the meta device, is built the
    ordinary way.
    """
    import torch

    args = (meta.arch, meta.encoder, len(meta.bands), len(meta.classes), meta.arch_kwargs)
    try:
        with torch.device("meta"):
            model = build_model(*args)
        own = model.state_dict()
        tensors = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        assign = tensors <= own.keys()
    except BundleError:  # a constructor that computes with its tensors (SegFormer's MiT: .item())
        assign = False
    if assign:  # in the model's dtypes (a bundle may store float16); no copy where they agree
        state_dict = {k: v.to(own[k].dtype) if k in own else v for k, v in state_dict.items()}
    else:  # a non-persistent buffer, which the file cannot fill, or no meta-device build
        model = build_model(*args)
    try:
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise BundleError(
            f"{path}: the weights do not fit a {meta.arch}/{meta.encoder} with "
            f"{len(meta.bands)} bands and {len(meta.classes)} classes ({' '.join(first)}); "
            "the bundle is corrupt or its metadata was edited"
        ) from exc
    return model.eval()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Read and validate only the metadata of a bundle (no weights are loaded, no torch).

    Raises:
        BundleError: missing file, not a safetensors file (its header malformed: lengths,
            offsets, dtypes), no or invalid geoseg metadata.
    """
    path = Path(path)
    return _meta_of(_read_header(path), path)


def _read_header(path: Path) -> SafetensorsHeader:
    if not path.is_file():
        raise BundleError(f"{path}: no such model bundle; make one with `geoseg model init`")
    try:
        return read_header(path)
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{path}: not a readable safetensors model bundle ({exc}); "
            "geoseg bundles are written by `geoseg model init` or `geoseg train`"
        ) from exc


def _meta_of(header: SafetensorsHeader, path: Path) -> BundleMeta:
    raw = header.metadata.get(_META_KEY)
    if raw is None:
        raise BundleError(
            f"{path}: a safetensors file without geoseg metadata (key {_META_KEY!r}); "
            "wrap plain weights with `geoseg model init --weights FILE`"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: invalid bundle metadata (not JSON: {exc}); re-create the "
                          "bundle with `geoseg model init` or `geoseg train`") from exc
    try:
        return BundleMeta.model_validate(data)
    except ValidationError as exc:
        raise BundleError(
            f"{path}: invalid bundle metadata: {validation_message(exc, data)}; re-create the "
            "bundle with `geoseg model init` or `geoseg train`, or fix that field") from exc


def check_bundle(path: str | os.PathLike[str]) -> BundleInfo:
    """Check a bundle from its header, without torch and without reading the weights: the
    metadata is valid, the tensors are well-formed, the first convolution takes as many
    channels as the metadata lists bands and the segmentation head gives as many as it lists
    classes. ``align`` is worked out from the architecture.

    What this cannot see (non-finite weights, weights that do not fit the architecture
    elsewhere, the built model's size divisor) :func:`load_bundle` checks where the model is
    built (a worker, :func:`geoseg.workers.load_on_workers`).

    Raises:
        BundleError: anything wrong with the file or its metadata, in one line.
    """
    path = Path(path)
    header = _read_header(path)
    meta = _meta_of(header, path)
    _check_fit(header, meta, path)
    return BundleInfo(meta=meta, path=path, sha256=file_sha256(path),
                      align=static_align(meta.arch, meta.arch_kwargs))


def check_unchanged(path: str | os.PathLike[str], checked: str, now: str) -> None:
    """Confirm that the bundle at ``path``, checked with SHA-256 ``checked``, still has it
    (``now``) when its weights are loaded for the run.

    Raises:
        BundleError: the file was replaced in between.
    """
    if now != checked:
        raise BundleError(f"{path}: the bundle changed since it was checked (its SHA-256 "
                          "differs); run again, and replace bundles under a new name")


def check_align(bundle: BundleInfo, align: int) -> None:
    """Confirm that the model built from ``bundle`` divides sizes by ``bundle.align`` (the
    number its tiles were planned with), ``align`` being :func:`model_align` of that model.

    Raises:
        BundleError: they differ (geoseg's rule for the architecture is wrong for it).
    """
    if align != bundle.align:
        meta = bundle.meta
        raise BundleError(
            f"{bundle.path}: the built {meta.arch}/{meta.encoder} model divides tile sizes by "
            f"{align} px, but geoseg worked out {bundle.align} px from its architecture "
            f"(arch_kwargs {meta.arch_kwargs}) and would plan its tiles wrongly; please report "
            "this (geoseg.models.registry.static_align), and run it with `geoseg predict` "
            "meanwhile")


def _check_fit(header: SafetensorsHeader, meta: BundleMeta, path: Path) -> None:
    """The fit checks a header allows: input bands and classes (``(out, in, kh, kw)``)."""
    tensors = header.tensors
    first = next((tensors[k] for k in INPUT_CONV_KEYS
                  if k in tensors and len(tensors[k].shape) == 4), None)
    bands, classes = len(meta.bands), len(meta.classes)
    fix = "the bundle is corrupt or its metadata was edited"
    if first is not None and first.shape[1] != bands:
        raise BundleError(
            f"{path}: the weights do not fit {bands} bands: the first convolution "
            f"{first.name!r} takes {first.shape[1]} input channels, but the metadata lists "
            f"{bands} bands ({', '.join(meta.band_names)}); {fix}")
    head = tensors.get(HEAD_KEY)
    if head is not None and len(head.shape) == 4 and head.shape[0] != classes:
        raise BundleError(
            f"{path}: the weights do not fit {classes} classes: the segmentation head "
            f"{head.name!r} gives {head.shape[0]} channels, but the metadata lists {classes} "
            f"classes; {fix}")


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load a bundle: metadata, weights, checksum; checks that the weights fit the architecture
    and are all finite, and that the metadata can give a meaningful answer (finite
    normalization, std > 0, distinct class names).

    Raises:
        BundleError: anything wrong with the file, its metadata or its weights.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_bundle_meta(path)
    try:
        state_dict = load_file(str(path), device="cpu")
    except Exception as exc:
        raise BundleError(f"{path}: cannot read the weights ({exc}); the file is corrupt") from exc
    # Tensors where torch would allocate them (64-byte aligned): load_file's may start at any
    # 8-byte offset, and on one torch thread a convolution of unaligned weights differs in the
    # last bit from that of the same weights copied into a model (tests/test_bundle.py).
    state_dict = {k: v if v.data_ptr() % 64 == 0 else v.clone() for k, v in state_dict.items()}
    check_weights(state_dict, path)
    model = _model_with_weights(meta, state_dict, path)  # validate now, not on a worker
    return Bundle(meta=meta, state_dict=state_dict, path=path, sha256=file_sha256(path),
                  align=model_align(model))


def save_bundle(
    model: torch.nn.Module, meta: BundleMeta, path: str | os.PathLike[str]
) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically (temporary name, rename).

    Nothing is written (not even the folder) unless ``meta`` validates and every weight is
    finite: a bundle that loads is a bundle that can give a meaningful answer.

    Returns:
        The path written.

    Raises:
        BundleError: invalid metadata (e.g. edited with ``model_copy``) or non-finite weights.
    """
    from safetensors.torch import save_file

    path = Path(path)
    data = meta.model_dump()
    try:
        meta = BundleMeta.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path}: not written: invalid bundle metadata: "
                          f"{validation_message(exc, data)}") from exc
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    check_weights(state, path, "not written")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        save_file(state, str(tmp), metadata={_META_KEY: meta.model_dump_json()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def init_bundle(
    path: str | os.PathLike[str],
    *,
    arch: str,
    encoder: str,
    bands: tuple[BandSpec, ...],
    input_dtype: InputDtype,
    classes: tuple[ClassSpec, ...],
    tile_size: int,
    halo: int,
    arch_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    description: str = "",
) -> BundleMeta:
    """Write a bundle with randomly initialised weights (seeded) and return its metadata.

    Raises:
        BundleError: the metadata is invalid or smp cannot build the model.
    """
    import torch

    try:
        meta = BundleMeta(
            arch=arch,
            encoder=encoder,
            arch_kwargs=arch_kwargs or {},
            bands=bands,
            input_dtype=input_dtype,
            classes=classes,
            tile_size=tile_size,
            halo=halo,
            description=description or "randomly initialised (untrained) model",
            training={"init": "random", "seed": seed},
        )
    except ValidationError as exc:
        raise BundleError(f"{path}: not written: invalid bundle settings: "
                          f"{validation_message(exc)}") from exc
    torch.manual_seed(seed)
    model = build_model(meta.arch, encoder, len(bands), len(classes), meta.arch_kwargs)
    save_bundle(model, meta, path)
    return meta
