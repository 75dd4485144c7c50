"""sc2's int8 kernels (native.py builds, trusts and loads them): int8_vnni.c, int8 weights times a token and
its drafts in VNNI's dot products, and int8_rows.c, the rounding of a prompt's rows to int8 and the scaling
of its int8 products back, in one pass each. Each is used only where it gives exactly what the PyTorch
path it stands for gives: the kernel `rounded_product`'s rows (int8.py), the helpers PyTorch's operations'
results, bit for bit."""

from __future__ import annotations

import functools

import torch

from .dequant import int8_mm_works, round_rows
from .native import _built, _library, _pointer_of, _Product  # the build machinery they share

INT8_MAX_K = 65536  # the int8 kernel's sums stay within int32 up to this many inputs (255 * 127 * K < 2^31)


def int8_vnni_works(dtype: torch.dtype) -> bool:
    """Whether the int8 kernel runs here for a model of `dtype` (bf16 or fp32) and gives the prompt path's
    products (int8.py's `rounded_product`) bit for bit."""
    return dtype in (torch.bfloat16, torch.float32) and _built("int8_vnni") and _int8_agrees()


def int8_vnni_fits(out_features: int, in_features: int) -> bool:
    """Whether the int8 kernel takes a weight of this shape: rows in whole 64-byte loads, 16 rows at a time,
    and its int32 sums exact (|sum| < 255 * 127 * K)."""
    return in_features % 64 == 0 and out_features % 16 == 0 and in_features <= INT8_MAX_K


class Int8Product(_Product):
    """An int8 weight (N, K) with its fp32 `scales` (N,), its rows' int32 sums `row_sums` (N,) and `bias`."""

    library = "int8_vnni"

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, row_sums: torch.Tensor,
                 bias: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16) -> None:  # fmt: skip
        bias = None if bias is None else bias.to(dtype).contiguous()
        tensors = (q.contiguous(), scales.float().contiguous(), row_sums.int().contiguous(), bias)
        pointers = (*(t.data_ptr() for t in tensors[:3]), _pointer_of(bias))
        super().__init__(q.shape[0], q.shape[1], tensors, pointers, dtype)

    def scratch_bytes(self, rows: int) -> int:
        return rows * (self.K + 4)


@functools.cache
def _int8_agrees() -> bool:
    """The kernel against the prompt path on a random weight and bias, bit for bit, for 1, 2, 3 and 7 (4 + 3)
    rows, every way it groups rows, in bf16 and fp32; False where it cannot be built or `torch._int_mm` fails."""
    if _library("int8_vnni") is None:
        return False
    from .int8 import quantize_per_channel, rounded_product  # int8.py imports this module

    if not int8_mm_works():
        return False
    generator = torch.Generator().manual_seed(0)
    q, scales = quantize_per_channel(torch.randn(32, 192, generator=generator))
    bias = torch.randn(32, generator=generator)
    for rows, dtype in ((1, torch.bfloat16), (2, torch.float32), (3, torch.bfloat16), (7, torch.float32)):
        x = (torch.randn(rows, 192, generator=generator) * 3).to(dtype)
        got = Int8Product(q, scales, q.sum(1, dtype=torch.int32), bias, dtype)(x)
        if not torch.equal(got, rounded_product(x, q, scales, bias.to(dtype), dtype)):
            return False
    return True


def int8_rows_work() -> bool:
    """Whether `round_rows_int8` and `scale_rows` run here and give PyTorch's operations' results bit for
    bit (dequant.py's `round_rows`; the scaling in int8.py and dequant.py)."""
    return _built("int8_rows") and _rows_agree()


def round_rows_int8(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dequant.py's `round_rows` of `x2d` (rows, K) bf16 or fp32, K a multiple of 16, in one pass, the
    caller's rows untouched: (int8 (rows, K), scales (rows, 1) fp32)."""
    library = _library("int8_rows")
    assert library is not None, "round_rows_int8 called where int8_rows_work is False"
    x2d = x2d.contiguous()
    rows, K = x2d.shape
    xq, scales = torch.empty(rows, K, dtype=torch.int8), torch.empty(rows, 1)
    bf16 = int(x2d.dtype == torch.bfloat16)
    if x2d.dtype not in (torch.bfloat16, torch.float32) or library.round_rows(
        x2d.data_ptr(), rows, K, bf16, xq.data_ptr(), scales.data_ptr(), torch.get_num_threads()
    ):
        raise ValueError(f"round_rows takes bf16 or fp32 rows of a multiple of 16, not {x2d.dtype} x {K}")
    return xq, scales


def scale_rows(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    row_scales: torch.Tensor,
    out: torch.Tensor,
    base: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """out = ((acc as fp32) * x_scale) * row_scales (+ base) (+ bias), rounded once into `out` (rows, n) bf16
    or fp32, rows may be strided (a column range of a wider product), as PyTorch's operations compute it:
    acc (rows, n) int32; x_scale (rows, 1), row_scales (n,), base (rows, n) strided like out, bias (n,),
    all fp32."""
    library = _library("int8_rows")
    assert library is not None, "scale_rows called where int8_rows_work is False"
    rows, n = acc.shape
    row_scales, bias = row_scales.contiguous(), None if bias is None else bias.float().contiguous()
    assert out.stride(1) == 1 and (base is None or base.stride(1) == 1) and acc.is_contiguous()
    status = library.scale_rows(
        acc.data_ptr(), rows, n, x_scale.data_ptr(), row_scales.data_ptr(), _pointer_of(base),
        0 if base is None else base.stride(0), _pointer_of(bias), out.data_ptr(), out.stride(0),
        int(out.dtype == torch.bfloat16), torch.get_num_threads(),
    )  # fmt: skip
    if status or out.dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"scale_rows takes bf16 or fp32 results, not {out.dtype}")
    return out


@functools.cache
def _rows_agree() -> bool:
    """Both helpers against PyTorch's operations on random rows with ties, zeros and a tail of columns."""
    if _library("int8_rows") is None:
        return False

    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        x = (torch.randn(5, 96, generator=generator) * 3).to(dtype)
        x[1], x[2, :7] = 0, 0.5  # a zero row; ties
        want_q, want_scale = round_rows(x.to(torch.float32, copy=True))
        got_q, got_scale = round_rows_int8(x)
        if not (torch.equal(got_q, want_q) and torch.equal(got_scale, want_scale)):
            return False
        acc = torch.randint(-(2**24), 2**24, (5, 37), generator=generator, dtype=torch.int32)
        rs, base, bias = (torch.randn(*shape, generator=generator) for shape in ((37,), (5, 40), (37,)))
        want = (acc.float().mul_(want_scale).mul_(rs) + base[:, :37] + bias).to(dtype)
        out = torch.empty(5, 40, dtype=dtype)
        if not torch.equal(scale_rows(acc, want_scale, rs, out[:, :37], base[:, :37], bias), want):
            return False
    return True
