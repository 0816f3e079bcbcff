"""The model sources ``geoseg model import`` reads, and the architecture each describes.

* ``state_dict``: a ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict; describes nothing.
* ``hf_folder``: an smp ``save_pretrained`` or Hugging Face-style folder; ``config.json``
  describes the architecture (read as JSON: ``from_pretrained``, which may download, is never
  called), the weights are ``model.safetensors`` or ``pytorch_model.bin``.
* ``lightning``: a ``.ckpt``; TorchGeo's ``SemanticSegmentationTask`` describes its model in
  ``hyper_parameters``, other LightningModules may not.

Files are read by :mod:`geoseg.models.weights`: nothing in them runs.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import BundleError
from geoseg.models.registry import ARCHITECTURES
from geoseg.models.weights import load_weights_file

__all__ = ["Described", "Source", "describe_config", "open_source"]

#: TorchGeo ``SemanticSegmentationTask`` model names → smp architectures (``fcn`` is not smp).
_TORCHGEO_ARCH = {"unet": "unet", "deeplabv3+": "deeplabv3plus", "upernet": "upernet",
                  "segformer": "segformer", "dpt": "dpt"}
_CORE_KEYS = {"encoder_name", "encoder", "backbone", "encoder_weights", "in_channels",
              "classes", "num_classes", "arch", "architecture"}


@dataclass(frozen=True)
class Described:
    """An architecture as a source describes it.

    Attributes:
        arch: smp architecture name (lower case).
        encoder: smp encoder name.
        in_channels, classes: input bands and output classes, if the source says.
        kwargs: further smp constructor arguments the source was built with (for the source
            model, e.g. ``aux_params``).
        origin: where this came from, e.g. ``config.json``.
        ignored: keys of the description smp does not take (not used).
    """

    arch: str
    encoder: str
    in_channels: int | None = None
    classes: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    origin: str = "command line"
    ignored: tuple[str, ...] = ()

    @property
    def bundle_kwargs(self) -> dict[str, Any]:
        """The ``arch_kwargs`` a bundle records: those differing from smp's defaults, without
        ``aux_params`` (the image-level classification head is left out: geoseg maps pixels)."""
        defaults = _constructor_defaults(self.arch)
        return {k: v for k, v in self.kwargs.items() if k != "aux_params"
                and json.dumps(defaults.get(k, _MISSING), default=list)
                != json.dumps(v, default=list)}


_MISSING = "\0missing"


def _constructor_defaults(arch: str) -> dict[str, Any]:
    """The named arguments of smp's ``arch`` class with their defaults (``_MISSING`` if none)."""
    import segmentation_models_pytorch as smp

    cls = smp.MODEL_ARCHITECTURES_MAPPING[arch]
    params = inspect.signature(cls.__init__).parameters
    return {n: (_MISSING if p.default is inspect.Parameter.empty else p.default)
            for n, p in params.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def describe_config(config: Mapping[str, Any], origin: str) -> Described | None:
    """The architecture in an smp ``config.json`` (``_model_class``, ``encoder_name``, …), a
    Hugging Face-style config (``arch``/``architecture``, ``encoder``), or TorchGeo
    ``hyper_parameters`` (``model``, ``backbone``, ``in_channels``, ``num_classes``).

    Returns:
        None when ``config`` names no architecture and encoder.

    Raises:
        BundleError: it names an architecture smp does not have (e.g. TorchGeo's ``fcn``).
    """
    arch = config.get("_model_class") or config.get("arch") or config.get("architecture")
    encoder = config.get("encoder_name") or config.get("encoder")
    tg_model = config.get("model") or config.get("segmentation_model")
    tg_encoder = config.get("backbone") or config.get("encoder_name")
    if arch is None and isinstance(tg_model, str) and isinstance(tg_encoder, str):
        # TorchGeo's SemanticSegmentationTask (model/backbone; segmentation_model/encoder_name
        # before 0.5)
        if tg_model not in _TORCHGEO_ARCH:
            raise BundleError(f"{origin}: TorchGeo model {tg_model!r} is not an smp model; "
                              f"geoseg imports {', '.join(_TORCHGEO_ARCH)}")
        classes = config.get("num_classes") or config.get("num_labels") or 1
        return Described(_TORCHGEO_ARCH[tg_model], tg_encoder, _int(config.get("in_channels")),
                         _int(classes), origin=origin)
    if not (isinstance(arch, str) and isinstance(encoder, str)):
        return None
    arch = arch.lower()
    if arch not in ARCHITECTURES:
        raise BundleError(f"{origin}: unknown architecture {arch!r}; geoseg imports "
                          f"{', '.join(ARCHITECTURES)}")
    accepted = _constructor_defaults(arch)
    extra = {k: v for k, v in config.items() if k not in _CORE_KEYS and not k.startswith("_")}
    kwargs = {k: v for k, v in extra.items() if k in accepted}
    return Described(arch, encoder, _int(config.get("in_channels")),
                     _int(config.get("classes", config.get("num_classes"))), kwargs, origin,
                     tuple(sorted(set(extra) - set(kwargs))))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Source:
    """A source as read: its kind (``state_dict``, ``hf_folder``, ``lightning``), the weights
    file (hashed for provenance), what that file loaded to, and the architecture it describes
    (None: the caller must say)."""

    kind: str
    weights_file: Path
    loaded: Mapping[str, Any]
    described: Described | None


def open_source(path: str | os.PathLike[str]) -> Source:
    """Read a source of any kind (see the module docstring); nothing in it runs.

    Raises:
        BundleError: a missing, unreadable or refused file, a folder without config.json or
            weights, a config naming no or an unknown architecture.
    """
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise BundleError(f"{path}: a folder without config.json; give an smp "
                              "save_pretrained folder, or a weights file")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{config_file}: not readable JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise BundleError(f"{config_file}: not a JSON object")
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin")
                        if (path / n).is_file()), None)
        if weights is None:
            raise BundleError(f"{path}: no model.safetensors or pytorch_model.bin beside "
                              "config.json")
        described = describe_config(config, str(config_file))
        if described is None:
            raise BundleError(f"{config_file}: names no architecture and encoder (smp writes "
                              "_model_class and encoder_name)")
        return Source("hf_folder", weights, load_weights_file(weights), described)
    loaded = load_weights_file(path)
    if path.suffix.lower() == ".ckpt" or "state_dict" in loaded:
        hparams = loaded.get("hyper_parameters")
        described = (describe_config(hparams, f"{path} hyper_parameters")
                     if isinstance(hparams, Mapping) else None)
        return Source("lightning", path, loaded, described)
    return Source("state_dict", path, loaded, None)
