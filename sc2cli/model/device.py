"""Where the model runs and in which precision: `auto` picks what is fast and faithful on this machine.

torch is imported inside the functions: `probable_device_type` serves commands that must not load it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib.util import find_spec
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}
# Tokens of prompt + completion by default: what a device prefills in a second or two, at most the model's.
DEFAULT_BUDGETS = {"cpu": 2048, "mps": 4096, "cuda": 8192}


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`auto`/None: the first CUDA GPU, else Apple's GPU, else the CPU."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this torch build sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not _mps_available():
        raise InputError(f"--device {name}: Apple's GPU (MPS) is not available here; use --device cpu")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto`/None: bf16 on CUDA (StarCoder2 was trained in bf16) and on CPUs (half the memory of fp32 and
    ~1.8x its decode even without native bf16 arithmetic: decode reads every weight once per token),
    fp16 on Apple GPUs. fp32 stays available, and exact, by name."""
    import torch

    if isinstance(name, torch.dtype):
        if name not in (torch.bfloat16, torch.float16, torch.float32):
            raise InputError(f"unsupported dtype {name}; use bf16, fp16 or fp32")
        return name
    if name in (None, "", "auto"):
        return torch.float16 if device.type == "mps" else torch.bfloat16
    if name.lower() not in DTYPE_NAMES:
        raise InputError(f"unknown dtype {name!r}; use auto, bf16, fp16 or fp32")
    return getattr(torch, DTYPE_NAMES[name.lower()])


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run in hardware rather than by conversion."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def probable_device_type(name: str | None) -> str:
    """The device type `resolve_device` would pick, guessed without importing torch (for commands that
    only build a prompt): a CUDA build of torch with an NVIDIA device node, or Apple silicon."""
    if name not in (None, "", "auto"):
        return name.split(":")[0]
    spec = find_spec("torch")
    if spec and spec.origin and os.path.exists("/dev/nvidiactl"):
        version_file = os.path.join(os.path.dirname(spec.origin), "version.py")
        try:
            with open(version_file, encoding="utf-8") as f:
                if not re.search(r"^cuda\b[^=\n]*=\s*None", f.read(), re.MULTILINE):
                    return "cuda"
        except OSError:
            pass
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def default_budget(device_type: str) -> int:
    return DEFAULT_BUDGETS.get(device_type, DEFAULT_BUDGETS["cpu"])
