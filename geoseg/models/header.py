"""The header of a safetensors file, read and checked without torch (or safetensors).

The format: an 8-byte little-endian unsigned length ``N``, then ``N`` bytes of JSON (an object:
``__metadata__`` → a string-to-string map, and each tensor's name → ``{"dtype", "shape",
"data_offsets": [begin, end]}``, offsets in bytes from the start of the data), then the data.
:func:`read_header` checks what the safetensors library checks before it hands out a tensor:
a sane header length, JSON of the right shape, known dtypes, each tensor's byte size equal to
its shape times its dtype, and the tensors' bytes contiguous (no gap, no overlap) and covering
the rest of the file exactly. It reads only the header, whatever the size of the weights.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["DTYPE_BITS", "MAX_HEADER_BYTES", "SafetensorsHeader", "TensorInfo", "parse_header",
           "read_header"]

#: Bits per element of every dtype safetensors knows (the names as its header spells them).
DTYPE_BITS: Final[Mapping[str, int]] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}

#: The largest header safetensors reads, bytes (its own limit).
MAX_HEADER_BYTES: Final = 100_000_000

_METADATA = "__metadata__"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file, as its header describes it.

    Attributes:
        name: the tensor's key (e.g. ``encoder.conv1.weight``).
        dtype: safetensors' dtype name (``F32``, ``F16``, ``BF16``…).
        shape: the tensor's shape, e.g. ``(64, 4, 7, 7)`` for a convolution's weight
            ``(out channels, in channels, kernel height, kernel width)``.
        begin, end: its bytes in the data section, ``[begin, end)``.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked safetensors header.

    Attributes:
        metadata: the ``__metadata__`` map (empty when the file has none).
        tensors: name → :class:`TensorInfo`, in the order of their bytes in the file.
        data_start: offset of the data section in the file, bytes (``8 + N``).
    """

    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorInfo]
    data_start: int


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and check the header of the safetensors file at ``path`` (no tensor is read).

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is not a well-formed safetensors file; the message says what is
            wrong (e.g. ``header length 10000000000000 > 100000000 bytes``).
    """
    path = Path(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{size} bytes: too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"header length {length} > {MAX_HEADER_BYTES} bytes")
        if 8 + length > size:
            raise ValueError(f"header length {length} runs past the end of the file "
                             f"({size} bytes): truncated")
        raw = handle.read(length)
    return parse_header(raw, size)


def parse_header(raw: bytes, file_size: int) -> SafetensorsHeader:
    """Check the JSON header ``raw`` (the ``N`` bytes after the length) of a file of
    ``file_size`` bytes; see :func:`read_header`.

    Raises:
        ValueError: what is wrong with it.
    """
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop(_METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{_METADATA} is not a map of strings")
    tensors = sorted((_tensor(name, entry) for name, entry in header.items()),
                     key=lambda t: (t.begin, t.end))
    data_size = file_size - 8 - len(raw)
    position = 0
    for t in tensors:
        if t.begin != position:
            what = "a gap" if t.begin > position else "an overlap"
            raise ValueError(f"tensor {t.name!r} starts at byte {t.begin} of the data, not "
                             f"{position}: {what} between tensors")
        position = t.end
    if position != data_size:
        raise ValueError(f"the tensors cover {position} bytes of data but the file holds "
                         f"{data_size}: truncated or padded")
    return SafetensorsHeader(dict(metadata), {t.name: t for t in tensors}, 8 + len(raw))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in the header")
        out[key] = value
    return out


def _tensor(name: str, entry: Any) -> TensorInfo:
    """One header entry, checked: a known dtype, a shape of naturals, offsets that hold it."""
    if not isinstance(entry, dict):
        raise ValueError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(n) for n in shape):
        raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of sizes >= 0")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_natural(n) for n in offsets) or offsets[0] > offsets[1]):
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end] "
                         "with 0 <= begin <= end")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise ValueError(f"tensor {name!r}: {dtype} {shape} needs {bits / 8:g} bytes but its "
                         f"data_offsets hold {offsets[1] - offsets[0]}")
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
