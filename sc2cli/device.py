"""Where the model runs and in which precision: `auto` picks what is fast and faithful on this machine."""

from __future__ import annotations

import torch

from .errors import InputError

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`auto`/None: the first CUDA GPU, else Apple's GPU, else the CPU."""
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
    """`auto`/None: bf16 on CUDA (StarCoder2 was trained in bf16), bf16 on CPUs with native bf16 arithmetic,
    fp16 on Apple GPUs, fp32 otherwise."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InputError(f"unsupported dtype {name}; use bf16, fp16 or fp32")
        return name
    if name in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; use auto, bf16, fp16 or fp32") from None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run in hardware rather than by conversion."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())
