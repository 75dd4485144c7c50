"""The packed-weight cache: a model's quantized matrices, written once after quantizing, read on later loads.

Quantizing a 3B model takes about a minute; reading its packed weights back takes less than loading it
in bf16. One safetensors file per (checkpoint files by name, size and modification time; scheme and the
kernel path of each shape; packed layout; dtype; torch version) in `<cache folder>/packed/`, outside the
Hugging Face cache. Written to a temporary file and renamed, so a reader never sees half a file. Read
back only when it is the current user's, its header names the same key and every module the model needs,
its size is exact and each tensor's CRC-32 matches; anything else is ignored (and rebuilt by the caller).

A key changes with torch's version, the quantization scheme or the checkpoint's files, and the file of the
old key would stay behind (1.7 GB for a 3B model in int4). So a read marks its file used (its
modification time), and each write deletes the current user's packed files unused for `UNUSED_DAYS`
(and temporary files a crashed write left). Files used by another environment within that time stay.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import stat
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from ..folders import cache_folder, cache_key, owned_by_user
from ..model.quant import QuantizedLinear

FORMAT = 1  # bump when what is stored changes meaning
UNUSED_DAYS = 30  # a packed file neither written nor read for this long is deleted by the next write
TMP_HOURS = 24  # a temporary file older than this is a crashed write's
PACKED_NAME = re.compile(r"[0-9a-f]{40}\.safetensors")
TMP_NAME = re.compile(r"\.[0-9a-f]{40}\.safetensors\.[0-9]+\.tmp")
DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I8": torch.int8, "U8": torch.uint8, "I32": torch.int32,
}  # fmt: skip
NAMES = {v: k for k, v in DTYPES.items()}
Take = Callable[[str, str, dict[str, torch.Tensor]], None]  # (module name, kind, field -> tensor)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A writable view of a contiguous CPU tensor's memory (for `readinto`/`write`; no numpy needed)."""
    return memoryview((ctypes.c_ubyte * t.nbytes).from_address(t.data_ptr())).cast("B")


def packed_path(files: list[Path], description: dict[str, object]) -> tuple[Path, str]:
    """The cache file for these checkpoint files and this quantization `description`, and its key."""
    key = cache_key(files, format=FORMAT, torch=torch.__version__, **description)
    return cache_folder() / "packed" / f"{key[:40]}.safetensors", key


def write_packed(path: Path, key: str, modules: dict[str, QuantizedLinear]) -> None:
    """Store every module's `state()` atomically, each tensor with its CRC-32; a failure (a full disk, a
    read-only folder) leaves nothing behind and is not an error: the next load quantizes again. `state()`
    is asked twice per module (header, then data) so that a layer whose state is unpacked on demand
    (fbgemm's) has only one unpacked copy alive at a time."""
    header: dict[str, object] = {}
    offset = 0
    for module, layer in modules.items():
        for field, t in layer.state().items():
            size = t.numel() * t.element_size()
            crc = zlib.crc32(tensor_bytes(t.detach().cpu().contiguous()))
            header[f"{module}.{field}"] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size], "crc32": crc}  # fmt: skip
            offset += size
    kinds = {module: layer.kind for module, layer in modules.items()}
    header["__metadata__"] = {"sc2_key": key, "kinds": json.dumps(kinds)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for layer in modules.values():
                for t in layer.state().values():
                    f.write(tensor_bytes(t.detach().cpu().contiguous()))
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return
    prune(path.parent, keep=path)


def prune(folder: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Delete the packed files in `folder` unused for `UNUSED_DAYS` and temporary ones older than
    `TMP_HOURS`: only regular files of our own names that the current user owns, never `keep`. Returns
    what was deleted."""
    now = time.time() if now is None else now
    deleted = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name == keep.name:
                continue
            packed, tmp = PACKED_NAME.fullmatch(entry.name), TMP_NAME.fullmatch(entry.name)
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                age = UNUSED_DAYS * 86400 if packed else TMP_HOURS * 3600
                if (
                    (packed or tmp)
                    and stat.S_ISREG(info.st_mode)
                    and owned_by_user(info)
                    and info.st_mtime < now - age
                ):
                    os.unlink(entry.path)
                    deleted.append(Path(entry.path))
    return deleted


def packed_usable(path: Path, key: str, modules: set[str]) -> bool:
    """Whether a file passes the checks short of reading its tensors (the caller then loads only what the
    file does not hold): the current user's, this key, exactly `modules`, sizes that add up."""
    try:
        with open(path, "rb") as f:
            return _checked_header(f, key, modules) is not None
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _checked_header(f, key: str, modules: set[str]) -> dict | None:
    info = os.fstat(f.fileno())
    if not owned_by_user(info):
        return None
    header = _header(f, info.st_size, key)
    return header if header is not None and set(header["__kinds__"]) == modules else None


def read_packed(path: Path, key: str, modules: set[str], device: torch.device, take: Take) -> bool:
    """Hand each stored module's kind and tensors (on `device`) to `take`, one module at a time so only
    one is ever held twice; False (after some calls, perhaps) when the file is absent, not the current
    user's, does not hold exactly `modules`, or fails any check."""
    try:
        with open(path, "rb") as f:
            header = _checked_header(f, key, modules)
            ok = header is not None and _read_modules(f, header, device, take)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return False
    if ok:
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: kept from pruning (see the module's docstring)
    return ok


def _header(f, size: int, key: str) -> dict | None:
    length = int.from_bytes(f.read(8), "little")
    if length > min(size - 8, 100 << 20):
        return None
    header = json.loads(f.read(length))
    meta = header.pop("__metadata__")
    if meta["sc2_key"] != key:
        return None
    end = 0
    for entry in header.values():
        begin, stop = entry["data_offsets"]
        expected = DTYPES[entry["dtype"]].itemsize * _numel(entry["shape"])
        if begin != end or stop - begin != expected:
            return None
        end = stop
    if 8 + length + end != size:
        return None
    header["__kinds__"] = json.loads(meta["kinds"])
    return header


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _read_modules(f, header: dict, device: torch.device, take: Take) -> bool:
    kinds: dict[str, str] = header.pop("__kinds__")
    current, fields = None, {}
    for name, entry in header.items():  # in file order: the offsets were checked to follow each other
        t = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
        view = tensor_bytes(t)
        if f.readinto(view) != len(view) or zlib.crc32(view) != entry["crc32"]:
            return False
        module, _, field = name.rpartition(".")
        if module != current and current is not None:
            take(current, kinds[current], fields)
            fields = {}
        current, fields[field] = module, t.to(device)
    if current is not None:
        take(current, kinds[current], fields)
    return True
