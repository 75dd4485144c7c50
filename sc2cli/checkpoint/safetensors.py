"""Safetensors headers, parsed once and checked before any tensor is read; torch-free.

A file is `8-byte little-endian header length | JSON header | tensor data`. The header is read once per
file version (path, size, modification time): the cache check that runs on every use and the loader
share it. Two views of it: `read_header` for loading (every problem is an error naming the file), and
`safetensors_problem` for the cache's cheap check (a short reason, or None).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # the float types a checkpoint may hold
MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors' name: F32, F16, BF16, F64
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int
    path: Path

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class _Parsed:
    header: dict[str, Any] | None  # None: the header itself is unreadable
    data_start: int  # 8 + header length
    size: int  # the file's size
    truncated_header: bool = False


def _parse(path: Path) -> _Parsed:
    try:
        stat = path.stat()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    return _parse_version(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _parse_version(path: Path, size: int, mtime_ns: int) -> _Parsed:
    """The header of one version of a file (the arguments besides `path` only key the cache)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                return _Parsed(None, 0, size, truncated_header=True)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        return _Parsed(None, 8 + n, size)
    return _Parsed(header, 8 + n, size)


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of a safetensors file, so that a truncated or corrupt file fails before any read."""
    parsed = _parse(path)
    if parsed.truncated_header:
        raise CheckpointError(
            f"{path}: not a valid safetensors file (truncated or corrupt header); delete and re-download it"
        )
    if parsed.header is None:
        raise CheckpointError(f"{path}: corrupt safetensors header; delete and re-download it")
    return {
        name: _entry(path, name, info, parsed.data_start, parsed.size)
        for name, info in parsed.header.items()
        if name != "__metadata__"
    }


def _entry(path: Path, name: str, info: object, data_start: int, size: int) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{path}: corrupt header entry for tensor {name}") from None
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}; expected a float type")
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype] or begin < 0:
        raise CheckpointError(f"{path}: corrupt header: tensor {name}'s byte range does not match its shape")
    if data_start + end > size:
        raise CheckpointError(
            f"{path}: truncated (tensor {name} ends at byte {data_start + end:,}, the file has {size:,}); "
            "delete and re-download it"
        )
    return TensorEntry(name, dtype, shape, data_start + begin, data_start + end, path)


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (truncated, corrupt header, trailing bytes), or None."""
    try:
        parsed = _parse(path)
    except CheckpointError:
        return "corrupt safetensors header"
    if parsed.truncated_header:
        return f"truncated or corrupt safetensors header ({parsed.size:,} bytes)"
    if parsed.header is None:
        return "corrupt safetensors header"
    try:
        ends = [info["data_offsets"][1] for key, info in parsed.header.items() if key != "__metadata__"]
        expected = parsed.data_start + max(ends, default=0)
    except (KeyError, TypeError, IndexError, AttributeError):
        return "corrupt safetensors header"
    if parsed.size < expected:
        return f"truncated: {parsed.size:,} of {expected:,} bytes"
    if parsed.size > expected:
        return f"{parsed.size - expected:,} stray bytes after the tensors"
    return None


def checkpoint_entries(files: list[Path]) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint's files; a name stored twice is an error."""
    entries: dict[str, TensorEntry] = {}
    for path in files:
        for name, entry in read_header(path).items():
            if name in entries:
                raise CheckpointError(f"{path}: tensor {name} also stored in {entries[name].path.name}")
            entries[name] = entry
    return entries
