"""Weights files from elsewhere: read them without running code, find the tensors, compare keys.

A ``.pth``/``.pt``/``.bin``/``.ckpt`` file is a pickle; geoseg reads it only with
``torch.load(weights_only=True)``, torch's restricted unpickler, which rebuilds tensors and
plain containers (dict, list, tuple, str, numbers) and refuses everything else *before*
creating it: nothing in the file runs. A whole pickled model (``torch.save(model)``) is refused
with a message saying how to save its ``state_dict()`` instead. There is no fallback to full
unpickling, ever. Safetensors files hold raw tensors and are always safe to read.

Used by ``geoseg model import`` (smp state dicts, Lightning checkpoints) and by training from
pretrained encoder weights (timm/torchvision state dicts).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import BundleError

if TYPE_CHECKING:
    import torch

__all__ = [
    "PICKLE_SUFFIXES",
    "KeyReport",
    "compare_state_dicts",
    "load_weights_file",
    "state_dict_of",
]

#: File name endings read with ``torch.load(weights_only=True)``; ``.safetensors`` is read
#: with safetensors, anything else is refused.
PICKLE_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt")

_HOW_TO_SAVE = ("save the weights alone with `torch.save(model.state_dict(), 'model.pth')` "
                "or as safetensors (`safetensors.torch.save_file(model.state_dict(), "
                "'model.safetensors')`)")


def load_weights_file(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Read a weights file without executing anything it contains.

    ``.safetensors`` is read with ``safetensors.torch.load_file``; ``.pth``, ``.pt``, ``.bin``
    and ``.ckpt`` with ``torch.load(path, map_location="cpu", weights_only=True)``. Tensors
    come back on the CPU.

    Returns:
        The loaded top-level mapping: a state dict (name → tensor), or a checkpoint holding
        one (``{"state_dict": …, "hyper_parameters": …}``); see :func:`state_dict_of`.

    Raises:
        BundleError: a missing file, an unknown file type, a file that needs more than
            tensors and plain containers to unpickle (a whole pickled model, custom classes:
            refused unread), or a corrupt file. One line: which file, why, what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such weights file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise BundleError(f"{path}: not a readable safetensors file ({_first_line(exc)}); "
                              "the file is damaged or not safetensors") from exc
    if suffix not in PICKLE_SUFFIXES:
        raise BundleError(f"{path}: unknown weights file type {suffix or '(no suffix)'!r}; "
                          f"give a .safetensors, {', '.join(PICKLE_SUFFIXES)} file")
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the restricted unpickler met a non-tensor object
        raise BundleError(
            f"{path}: refused, not read: it needs more than tensors to unpickle "
            f"({_blocked_global(exc)}), e.g. a whole pickled model (`torch.save(model)`), and "
            f"geoseg never runs code from a weights file; {_HOW_TO_SAVE}") from None
    except Exception as exc:  # not a torch file, truncated, a zip without data.pkl…
        raise BundleError(f"{path}: not a readable torch weights file ({_first_line(exc)}); "
                          f"the file is damaged or of another kind; {_HOW_TO_SAVE}") from exc
    if not isinstance(loaded, Mapping):
        raise BundleError(f"{path}: holds a {type(loaded).__name__}, not a state dict "
                          f"(name → tensor); {_HOW_TO_SAVE}")
    return loaded


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _blocked_global(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, e.g. ``it holds posix.system``, from its
    long message (which also suggests ``weights_only=False``: geoseg never does that)."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"it holds {found.group(1)}" if found else "objects other than tensors"


#: Keys under which checkpoints of common trainers keep the model's state dict, tried in order.
_NESTED_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "weights")


def state_dict_of(
    obj: Mapping[str, Any],
    prefix: str | None = None,
    *,
    expected: Collection[str] | None = None,
    source: str | os.PathLike[str] = "weights",
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a loaded weights object, with a key prefix stripped.

    ``obj`` is what :func:`load_weights_file` returned: a plain state dict, a Lightning
    checkpoint (``{"state_dict": …}``), or a ``{"model": …}``/``{"model_state_dict": …}``
    training checkpoint. Non-tensor entries of a state dict (rare) are dropped.

    Args:
        obj: the loaded mapping.
        prefix: strip this key prefix (e.g. ``"model."``) and drop the keys without it;
            ``""`` strips nothing. ``None``: detect it from ``expected``, else strip nothing.
        expected: key names of the model the weights are for (e.g. an smp model's
            ``state_dict().keys()``). The detected prefix is the one under which the most
            keys become expected names (``"model."`` for TorchGeo, ``"module."`` for DDP,
            ``"net."`` for a custom LightningModule, ``""`` for a plain state dict).
        source: the file, for messages.

    Returns:
        ``(state dict, prefix used)``.

    Raises:
        BundleError: no tensors in ``obj``, or none of them under ``prefix``.
    """
    import torch

    tensors = _find_tensors(obj)
    if not tensors:
        raise BundleError(f"{source}: no tensors found (top-level keys: {_few(list(obj))}); "
                          f"{_HOW_TO_SAVE}")
    if prefix is None:
        prefix = _detect_prefix(tensors, expected) if expected else ""
    if prefix:
        stripped = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not stripped:
            raise BundleError(f"{source}: no weights under the prefix {prefix!r} (keys start "
                              f"{_few(sorted({_head(k) for k in tensors}))}); give the prefix "
                              "the model's keys carry, or '' for none")
        tensors = stripped
    return {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}, prefix


def _find_tensors(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict in ``obj``: ``obj`` itself when it holds tensors at top level, else the
    first nested mapping of tensors under a known key."""
    import torch

    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor)
                                              for v in inner.values()):
            return {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    return {}


def _detect_prefix(tensors: Mapping[str, Any], expected: Collection[str]) -> str:
    """The dotted key prefix under which the most keys of ``tensors`` are ``expected`` names
    (ties: the shortest prefix)."""
    wanted = set(expected)
    counts: dict[str, int] = {}
    for key in tensors:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in wanted:
                head = ".".join(parts[:i]) + "." if i else ""
                counts[head] = counts.get(head, 0) + 1
                break
    if not counts:
        return ""
    return max(counts, key=lambda p: (counts[p], -len(p)))


def _head(key: str) -> str:
    return key.split(".", 1)[0] + "." if "." in key else key


def _few(names: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "") if names else "none"


@dataclass(frozen=True)
class KeyReport:
    """How a source state dict fits a target model's, key by key (names sorted).

    Attributes:
        matched: keys in both with the same shape.
        missing: keys the target needs that the source lacks.
        unexpected: keys of the source the target does not have.
        mismatched: ``(name, source shape, target shape)`` for keys in both, shapes differing.
    """

    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    @property
    def exact(self) -> bool:
        """Every key matched: nothing missing, unexpected or of another shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line, e.g. ``120 matched, 2 missing ('a', 'b'), 0 unexpected, 1 of another
        shape ('c' (3, 4) vs (3, 5))``."""
        shapes = [f"{n!r} {tuple(s)} vs {tuple(t)}" for n, s, t in self.mismatched]
        parts = [f"{len(self.matched)} matched"]
        for label, names in (("missing", [repr(n) for n in self.missing]),
                             ("unexpected", [repr(n) for n in self.unexpected]),
                             ("of another shape", shapes)):
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more"
                                            if len(names) > 3 else "")
            parts.append(f"{len(names)} {label}" + (f" ({shown})" if names else ""))
        return ", ".join(parts)


def compare_state_dicts(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> KeyReport:
    """Compare the keys and shapes of ``source`` (the file's) with ``target`` (the model's).

    Only names and shapes are compared, not values or dtypes; ``target`` may hold meta-device
    tensors.
    """
    both = source.keys() & target.keys()
    mismatched = tuple(
        (n, tuple(source[n].shape), tuple(target[n].shape)) for n in sorted(both)
        if tuple(source[n].shape) != tuple(target[n].shape))
    bad = {n for n, _, _ in mismatched}
    return KeyReport(
        matched=tuple(sorted(both - bad)),
        missing=tuple(sorted(target.keys() - source.keys())),
        unexpected=tuple(sorted(source.keys() - target.keys())),
        mismatched=mismatched,
    )
