"""sc2's own CPU kernels, compiled once per machine with the system C compiler and called through ctypes:
int4_vnni.c and int4_avx2.c (tinygemm's packed int4 weights times a few rows in int8 dot products, with
AVX-512 VNNI or with AVX2; called through native_int4.py), int8_vnni.c (int8 weights, likewise), int8_rows.c
(rounding a prompt's rows to int8 and scaling int8 products back, for the prompt paths; these two are
called through native_int8.py), bf16_gemv.c (dense bf16 weights times a few rows in AVX512-BF16's dot
products; bf16_avx2.c, the same with AVX2's fused multiply-adds, where the CPU has no native bf16) and
attention_one.c (one token's attention over the bf16 KV cache; with the rotary embedding and
cache write before it, through native_attention.py; attention_avx2.c, the same without native bf16).

Why a bf16 kernel: on CPUs with native bf16, PyTorch's and oneDNN's one-row bf16 products were measured
reading 40-60% of the memory's speed (AMD Zen 5 in a slow hour: 12.6 and 18-19 GB/s where a sum read 32)
where bf16_gemv reads 26-29; it is one more candidate the decode probe measures (`bf16_gemv_works`).

Each compiled library is kept in the user cache folder under a name derived from its source, the headers
beside it, the flags and the compiler, and loaded only when it is the current user's and no one else can
write it or its folder.
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
import threading
from pathlib import Path

import torch

from ..folders import cache_folder, owned_by_user

_pointer, _int = ctypes.c_void_p, ctypes.c_int
# Each library: its compiler flags, the CPU flags they need (as /proc/cpuinfo spells them), and its
# functions, each with its result and arguments.
ATTENTION_FUNCTIONS = (
    ("attend_rows", _int, [_pointer, _int, _int, _int, _int, _pointer, _pointer, _pointer, _pointer,
                           ctypes.c_long, ctypes.c_float, _pointer, _pointer, _int]),
    ("rotate_attend", _int, [_pointer, _pointer, _pointer, _int, _int, _int, _int, _pointer, _pointer, _pointer,
                             _pointer, ctypes.c_long, _int, _int, ctypes.c_float, _pointer, _pointer, _pointer,
                             _int]),
)  # fmt: skip
LIBRARIES = {
    "int4_vnni": (
        ("-mavx512f", "-mavx512bw", "-mavx512vnni", "-mavx512vbmi", "-mfma"),
        ("avx512f", "avx512bw", "avx512_vnni", "avx512vbmi"),
        ("int4_vnni_mm", _int, [_pointer, _int, _int, _int, _pointer, _pointer, _int, _pointer, _pointer, _int,
                                _int, _pointer]),
        ("int4_unpack_int8", _int, [_pointer, _int, _int, _int, _int, _pointer, _int, _pointer, _int]),
    ),
    "int4_avx2": (
        ("-mavx2", "-mfma"),
        ("avx2", "fma"),
        ("int4_avx2_mm", _int, [_pointer, _int, _int, _int, _pointer, _pointer, _int, _pointer, _pointer, _int,
                                _int, _pointer]),
    ),
    "int8_vnni": (  # fp32 steps in the prompt path's order: no contracting into fused multiply-adds
        ("-mavx512f", "-mavx512bw", "-mavx512vnni", "-mfma", "-ffp-contract=off"),
        ("avx512f", "avx512bw", "avx512_vnni"),
        ("int8_vnni_mm", _int, [_pointer, _int, _int, _int, _pointer, _pointer, _pointer, _pointer, _pointer,
                                _int, _int, _pointer]),
    ),
    "int8_rows": (  # fp32 steps in PyTorch's order: no contracting into fused multiply-adds
        ("-mavx512f", "-mavx512bw", "-mfma", "-ffp-contract=off"),
        ("avx512f", "avx512bw"),
        ("round_rows", _int, [_pointer, _int, _int, _int, _pointer, _pointer, _int]),
        ("scale_rows", _int, [_pointer, _int, _int, _pointer, _pointer, _pointer, _int, _pointer, _pointer, _int,
                              _int, _int]),
    ),
    "bf16_gemv": (
        ("-mavx512f", "-mavx512bw", "-mavx512bf16", "-mfma"),
        ("avx512f", "avx512bw", "avx512_bf16"),
        ("bf16_gemv", _int, [_pointer, _int, _int, _int, _pointer, _pointer, _pointer, _int]),
    ),
    "bf16_avx2": (  # bf16_gemv.c's function for CPUs without native bf16 (`_bf16_library`)
        ("-mavx2", "-mfma"),
        ("avx2", "fma"),
        ("bf16_gemv", _int, [_pointer, _int, _int, _int, _pointer, _pointer, _pointer, _int]),
        ("bf16_gemv_stream", _int, [_pointer, _int, _int, _int, _pointer, _pointer, _pointer, _int]),
    ),
    "attention_one": (
        ("-mavx512f", "-mavx512bw", "-mavx512bf16", "-mfma"),
        ("avx512f", "avx512bw", "avx512_bf16"),
        *ATTENTION_FUNCTIONS,
    ),
    "attention_avx2": (  # attention_one.c's functions for CPUs without native bf16 (`attention_library`)
        ("-mavx2", "-mfma"),
        ("avx2", "fma"),
        *ATTENTION_FUNCTIONS,
    ),
    "bf16_table": (  # any CPU (native_table.py)
        (),
        (),
        ("bf16_lookup", _int, [_pointer, ctypes.c_long, _pointer, _pointer, _int]),
    ),
}  # fmt: skip
FLAGS = ("-O3", "-fopenmp")  # and each library's own
HEADERS = (
    "bf16.h",
    "bf16_rows.h",
    "int4_rows.h",
    "attention_rows.h",
)  # included by the sources: part of every library's key
COMPILE_SECONDS = 120


class _Product:
    """A weight bound to its kernel once: a token's call then costs the kernel and little else (unbound, a
    3B k_proj's call spent ~25 us in Python around a 10 us kernel, 211 calls a token). Rows and results
    are in `dtype` (bf16 or fp32), the bias added in fp32 before the result is rounded."""

    library = ""

    def __init__(self, N: int, K: int, tensors: tuple, weights: tuple, dtype: torch.dtype) -> None:
        library = _library(self.library)
        assert library is not None, f"{self.library} bound where it does not run"
        self.function = getattr(library, LIBRARIES[self.library][2][0])
        self.N, self.K, self.dtype = N, K, dtype
        self.tensors = tensors  # kept alive: `weights` holds pointers into them
        self.weights = weights
        self.bf16 = int(dtype == torch.bfloat16)

    def scratch_bytes(self, rows: int) -> int:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """`x` (..., K): (..., N) in x's dtype, computed in `dtype`. `scratch`: at least `scratch_bytes`
        uint8, else this thread's own."""
        if x.dtype != self.dtype:
            return self(x.to(self.dtype), scratch).to(x.dtype)
        rows = x.numel() // self.K
        out = torch.empty((*x.shape[:-1], self.N), dtype=self.dtype)
        if not x.is_contiguous():
            x = x.contiguous()
        if scratch is None:
            scratch = _working(self.library, self.scratch_bytes(rows), torch.uint8)
        status = self.function(
            x.data_ptr(), rows, self.K, self.N, *self.weights, out.data_ptr(), self.bf16, torch.get_num_threads(),
            scratch.data_ptr(),
        )  # fmt: skip
        if status:
            raise ValueError(f"{self.library} takes no weight of shape {self.N}x{self.K}")
        return out


def _pointer_of(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def bf16_gemv_works(stream: bool = False) -> bool:
    """Whether the bf16 kernel runs here (a compiler; AVX512-BF16, or AVX2 and FMA) and agrees with plain
    maths; `stream`: its one-row-at-a-time order, which only the AVX2 kernel has."""
    return _bf16_agrees(stream)


def bf16_gemv_fits(weight: torch.Tensor) -> bool:
    """Whether the kernel takes `weight` (N, K): dense bf16 on the CPU, K a multiple of 32, N of 4."""
    N, K = weight.shape
    return weight.dtype == torch.bfloat16 and weight.is_contiguous() and K % 32 == 0 and N % 4 == 0


def bf16_gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stream: bool = False
) -> torch.Tensor:
    """`x` (..., K) times `weight` (N, K) transposed, plus `bias`, all bf16: (..., N), every row computed
    as it would be alone, through blocks of weight rows or (`stream`) one weight row at a time."""
    library = _bf16_library(stream)
    assert library is not None, "bf16_gemv called where bf16_gemv_works is False"
    shape, (N, K) = x.shape, weight.shape
    x2d = x.reshape(-1, K).contiguous()
    out = torch.empty(len(x2d), N, dtype=torch.bfloat16)
    status = (library.bf16_gemv_stream if stream else library.bf16_gemv)(
        x2d.data_ptr(), len(x2d), K, N, weight.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise ValueError(f"the bf16 kernel takes no weight of shape {N}x{K}")
    return out.view(*shape[:-1], N)


def _bf16_library(stream: bool = False) -> ctypes.CDLL | None:
    """The bf16 kernel for this CPU: AVX512-BF16's dot products where it has them, else AVX2's FMAs (the
    one with the `stream` order)."""
    if stream:
        return None if _library("bf16_gemv") else _library("bf16_avx2")
    return _library("bf16_gemv") or _library("bf16_avx2")


@functools.cache
def _bf16_agrees(stream: bool = False) -> bool:
    """The kernel (in its `stream` order) against float64 maths, within bf16's rounding of the result, for
    1 to 4 rows."""
    if _bf16_library(stream) is None:
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(36, 96, generator=generator).bfloat16()
    bias = torch.randn(36, generator=generator).bfloat16()
    for rows in (1, 4):
        x = torch.randn(rows, 96, generator=generator).bfloat16()
        want = x.double() @ weight.double().t() + bias.double()
        got = bf16_gemv(x, weight, bias, stream).double()
        if not bool(((got - want).abs() <= 2**-8 * want.abs() + 1e-3).all()):
            return False
    return True


def attention_one_works() -> bool:
    """Whether the one-token attention kernel runs here (a compiler; AVX512-BF16, or AVX2 and FMA) and agrees
    with float64 maths."""
    return _attention_agrees()


def attention_library() -> ctypes.CDLL | None:
    """The attention kernel for this CPU: AVX512-BF16's dot products where it has them, else AVX2's FMAs."""
    return _library("attention_one") or _library("attention_avx2")


def attention_one_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernel takes this call: one sequence, bf16 on the CPU, head size a multiple of 32, each
    head's keys dense and K, V laid out alike (slices of the KV cache are)."""
    B, H, _, hd = q.shape
    return (
        B == 1
        and hd % 32 == 0
        and q.dtype == k.dtype == v.dtype == torch.bfloat16
        and k.device.type == "cpu"
        and k.shape == v.shape
        and k.stride() == v.stride()
        and k.stride(-1) == 1
        and k.stride(-2) == hd
        and H % k.shape[1] == 0
    )


def attention_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: list[tuple[int, int]] | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v for each of T tokens: q (1, H, T, hd), k and v (1, n_kv, S, hd), each K/V
    head serving H / n_kv query heads, token t over keys [first, first + count) = `keys[t]` (default: one
    token over all S); (1, H, T, hd) bf16, computed in fp32 and rounded once, each token as alone."""
    library = attention_library()
    assert library is not None, "attention_one called where attention_one_works is False"
    _, H, T, hd = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    keys = keys or [(0, S)]
    rows = q.transpose(1, 2).contiguous()  # (1, T, H, hd): each token's heads together
    out = torch.empty_like(rows)
    if len(keys) != T or not all(a >= 0 and n > 0 and a + n <= S for a, n in keys):
        raise ValueError(f"keys {keys} do not fit {T} tokens over {S} keys")
    firsts, counts = ((ctypes.c_int * T)(*column) for column in zip(*keys, strict=True))
    scores = _working("scores", T * H * max(counts), torch.float32)
    status = library.attend_rows(
        rows.data_ptr(), T, H, n_kv, hd, firsts, counts, k.data_ptr(), v.data_ptr(), k.stride(1), hd**-0.5,
        out.data_ptr(), scores.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise ValueError(f"the attention kernel takes no call of {H} heads over {n_kv}, head size {hd}")
    return out.transpose(1, 2)  # (1, H, T, hd)


def _built(name: str) -> bool:
    """Whether library `name` is loaded (a check before a remembered agreement: the library's own memory can
    be cleared, as tests do, while the agreement's is not)."""
    return _library(name) is not None


_scratch = threading.local()


def _working(name: str, size: int, dtype: torch.dtype) -> torch.Tensor:
    """This thread's working memory `name` for a kernel, at least `size` elements, kept between calls: a
    fresh buffer of a long cache's size would be mapped and zeroed by the system on every call (~50 us
    for the attention scores at 2,048 keys)."""
    held = getattr(_scratch, name, None)
    if held is None or held.numel() < size:
        with torch.inference_mode(False):  # usable in and outside inference mode alike
            held = torch.empty(max(size, 1 << 16), dtype=dtype)
        setattr(_scratch, name, held)
    return held


@functools.cache
def _attention_agrees() -> bool:
    """The kernel against float64 maths, within bf16's rounding of the result, over key counts around its
    blocks of 16 and query groups split across threads or not."""
    if attention_library() is None:
        return False
    generator = torch.Generator().manual_seed(0)
    for heads, n_kv, keys in ((4, 2, 1), (12, 1, 37), (8, 4, 64)):
        q = torch.randn(1, heads, 1, 64, generator=generator).bfloat16()
        cache = torch.randn(2, 1, n_kv, keys + 3, 64, generator=generator).bfloat16()
        k, v = cache[0, :, :, :keys], cache[1, :, :, :keys]
        groups = heads // n_kv
        scores = q.double() @ k.double().repeat_interleave(groups, 1).transpose(2, 3) / 8
        want = torch.softmax(scores, dim=-1) @ v.double().repeat_interleave(groups, 1)
        got = attention_one(q, k, v).double()
        if not bool(((got - want).abs() <= 2**-8 * want.abs() + 1e-3).all()):
            return False
    return True


@functools.cache
def _library(name: str) -> ctypes.CDLL | None:
    """The compiled library `name` (`LIBRARIES`; its source is name.c beside this module), built on first
    use; None where this CPU lacks its instructions or it cannot be built or trusted."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    _, cpu_flags, *functions = LIBRARIES[name]
    if not _cpu_has(cpu_flags) or compiler is None:
        return None
    path = library_path(compiler, name)
    if not path.exists() and not _build(compiler, path, name):
        return None
    if not _trusted(path):
        return None
    try:
        library = ctypes.CDLL(str(path))
    except OSError:  # damaged (cut short by a crash, say): built again once
        if not _build(compiler, path, name) or not _trusted(path):
            return None
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            return None
    for function, result, arguments in functions:
        getattr(library, function).restype = result
        getattr(library, function).argtypes = arguments
    return library


def library_path(compiler: str, name: str) -> Path:
    """Where library `name` built from its source, with its flags, by this compiler is kept."""
    how = repr((FLAGS, LIBRARIES[name][0], compiler, _version(compiler))).encode()
    headers = b"".join(Path(__file__).with_name(h).read_bytes() for h in HEADERS)
    key = hashlib.sha256(_source(name).read_bytes() + headers + how).hexdigest()[:16]
    return cache_folder() / "native" / f"{name}-{key}.so"


def _source(name: str) -> Path:
    return Path(__file__).with_name(f"{name}.c")


def _build(compiler: str, path: Path, name: str) -> bool:
    """Compile into a temporary file beside `path`, then move it in place (a reader never sees half)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            built = Path(work) / path.name
            flags = [*FLAGS, *LIBRARIES[name][0]]
            command = [compiler, *flags, "-shared", "-fPIC", "-o", str(built), str(_source(name))]
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


@functools.cache
def _version(compiler: str) -> str:
    """The compiler's first line of `--version` (part of each library's key), asked once per process."""
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
