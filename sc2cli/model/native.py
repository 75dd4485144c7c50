"""sc2's own int4 kernel (int4_vnni.c): tinygemm's packed CPU weights times a few rows in VNNI's int8 dot
products, compiled once per machine with the system C compiler and called through ctypes.

Why native code: PyTorch's int4 kernel unpacks each weight into floating point and multiplies in fp32,
so on two cores it is bound by that arithmetic (~18-20 GB/s of packed weights on an AMD Zen 5 where memory
gives 80), while the same bytes multiplied as int8 codes against int8-rounded activations take a quarter
of the instructions. Nothing is installed for it: a machine without a C compiler, without AVX-512 VNNI
and VBMI, or whose kernel disagrees with PyTorch's own keeps tinygemm (`int4_vnni_works`).

The compiled library is kept in the user cache folder under a name derived from the source, the flags and
the compiler, and loaded only when it is the current user's and no one else can write it or its folder.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

from ..folders import cache_folder, owned_by_user
from .dequant import Layout, cpu_layout

SOURCE = Path(__file__).with_name("int4_vnni.c")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mavx512vbmi", "-mfma", "-fopenmp")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512_vnni", "avx512vbmi")  # as /proc/cpuinfo spells them
COMPILE_SECONDS = 120
LAYOUT = Layout(64, 32)  # the packing the kernel reads (dequant.py)
# The kernel's products against tinygemm's, relative (norm of the difference over the norm): rounding
# activations to int8 costs ~1% on random rows; a misread layout would cost ~100%.
AGREEMENT = 0.03


def int4_vnni_works(dtype: torch.dtype) -> bool:
    """Whether the kernel runs here for a model of `dtype` (bf16 scales only) and agrees with tinygemm."""
    return dtype == torch.bfloat16 and cpu_layout(dtype) == LAYOUT and _agrees()


def int4_vnni_fits(out_features: int, in_features: int, group: int) -> bool:
    """Whether the kernel takes a weight of this shape: whole 64-row blocks, groups of whole 4 inputs."""
    return out_features % LAYOUT.block == 0 and group % 4 == 0 and in_features % group == 0


def scratch_bytes(rows: int, in_features: int, group: int) -> int:
    """The kernel's working memory: the rows in int8, their scales, and two sums per group."""
    return rows * (in_features + 4 + 8 * (in_features // group))


def int4_vnni_mm(
    x2d: torch.Tensor,
    packed: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    group: int,
    scratch: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`x2d` (rows, K) bf16 or fp32 times the packed weight (N, K/2) with its (K/group, N, 2) bf16 scales and
    zeros, plus `bias` (N,) in x2d's dtype (added before the result is rounded): (rows, N) in x2d's dtype.
    `scratch`: at least `scratch_bytes` uint8."""
    library = _library()
    assert library is not None, "int4_vnni_mm called where int4_vnni_works is False"
    rows, K = x2d.shape
    N = packed.shape[0]
    x2d = x2d.contiguous()
    out = torch.empty(rows, N, dtype=x2d.dtype)
    if bias is not None and bias.dtype != x2d.dtype:
        bias = bias.to(x2d.dtype)
    status = library.int4_vnni_mm(
        x2d.data_ptr(), rows, K, N, packed.data_ptr(), scales_and_zeros.data_ptr(), group,
        None if bias is None else bias.data_ptr(), out.data_ptr(), int(x2d.dtype == torch.bfloat16),
        torch.get_num_threads(), scratch.data_ptr(),
    )  # fmt: skip
    if status:
        raise ValueError(f"the int4 kernel takes no weight of shape {N}x{K} in groups of {group}")
    return out


@functools.cache
def _agrees() -> bool:
    """The kernel against tinygemm on a random weight with several row counts (the layout is checked, not
    assumed); False where it cannot be built."""
    if _library() is None:
        return False
    from .quant import quantize_and_pack_int4  # quant.py imports this module

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 256, generator=generator) * 0.02
    packed, scales_and_zeros, _ = quantize_and_pack_int4(weight, 64)
    scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
    for rows, dtype in ((1, torch.bfloat16), (5, torch.float32)):
        x = torch.randn(rows, 256, generator=generator).to(torch.bfloat16)
        expected = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scales_and_zeros).float()
        scratch = torch.empty(scratch_bytes(rows, 256, 64), dtype=torch.uint8)
        got = int4_vnni_mm(x.to(dtype), packed, scales_and_zeros, 64, scratch).float()
        if not bool((got - expected).norm() <= AGREEMENT * expected.norm()):
            return False
    return True


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None where this CPU lacks the instructions or it cannot be
    built or trusted."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not _cpu_has(CPU_FLAGS) or compiler is None:
        return None
    path = library_path(compiler)
    if not path.exists() and not _build(compiler, path):
        return None
    if not _trusted(path):
        return None
    try:
        library = ctypes.CDLL(str(path))
    except OSError:  # damaged (cut short by a crash, say): built again once
        if not _build(compiler, path) or not _trusted(path):
            return None
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            return None
    function = library.int4_vnni_mm
    function.restype = ctypes.c_int
    pointer, number = ctypes.c_void_p, ctypes.c_int
    function.argtypes = [pointer, number, number, number, pointer, pointer, number, pointer, pointer, number,
                         number, pointer]  # fmt: skip
    return library


def library_path(compiler: str) -> Path:
    """Where the library built from this source, with these flags, by this compiler is kept."""
    what = SOURCE.read_bytes() + repr((FLAGS, compiler, _version(compiler))).encode()
    return cache_folder() / "native" / f"int4_vnni-{hashlib.sha256(what).hexdigest()[:16]}.so"


def _build(compiler: str, path: Path) -> bool:
    """Compile into a temporary file beside `path`, then move it in place (a reader never sees half)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            built = Path(work) / path.name
            command = [compiler, *FLAGS, "-shared", "-fPIC", "-o", str(built), str(SOURCE)]
            done = subprocess.run(command, capture_output=True, timeout=COMPILE_SECONDS, check=False)
            if done.returncode or not built.exists():
                return False
            os.replace(built, path)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _trusted(path: Path) -> bool:
    """The library and its folder are the current user's, and no one else can write either."""
    try:
        infos = [path.stat(), path.parent.stat()]
    except OSError:
        return False
    return all(owned_by_user(i) and not i.st_mode & (stat.S_IWGRP | stat.S_IWOTH) for i in infos)


def _version(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.splitlines()[0] if done.stdout else ""


def _cpu_has(flags: tuple[str, ...]) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(flags) <= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return False
