"""sc2's int4 kernels (native.py builds, trusts and loads them): tinygemm's packed int4 weights times a token
and its drafts, the rows rounded to int8 and multiplied by int8 dot products on the packed codes.

- `vnni` (int4_vnni.c): AVX-512 VNNI and VBMI, on the layout PyTorch packs with AVX-512 (blocks of 64
  rows); also unpacks weights into int8 for prompts (`unpack_int8`).
- `avx2` (int4_avx2.c): AVX2 and FMA, on the layout PyTorch packs without AVX-512 (blocks of 32 rows: most
  desktop and laptop CPUs), by byte products that add up in int16 before they are widened.

Why native code: PyTorch's int4 kernel unpacks each weight into floating point and multiplies in fp32, so
on two cores it is bound by that arithmetic (~18-20 GB/s of packed weights on an AMD Zen 5 where memory
gives 80), while the same bytes multiplied as int8 codes against int8-rounded activations take a quarter
of the instructions. Nothing is installed for it: a machine without a C compiler or the instructions, or
whose kernel disagrees with PyTorch's own, keeps tinygemm (`int4_works`).
"""

from __future__ import annotations

import functools

import torch

from .dequant import Layout, Native, UnpackScratch, cpu_layout, int8_mm_works, int8_product
from .native import _built, _library, _pointer_of, _Product  # the build machinery they share

KERNELS = {"vnni": "int4_vnni", "avx2": "int4_avx2"}  # decode path -> library
LAYOUTS = {"vnni": Layout(64, 32), "avx2": Layout(32, 16)}  # the packing each reads (dequant.py)
LAYOUT = LAYOUTS["vnni"]  # the packing `unpack_int8` reads
# A kernel's products against tinygemm's, relative (norm of the difference over the norm): rounding
# activations to int8 costs ~1% on random rows; a misread layout would cost ~100%.
AGREEMENT = 0.03


def int4_works(path: str, dtype: torch.dtype) -> bool:
    """Whether kernel `path` (`KERNELS`) runs here for a model of `dtype` (bf16 scales only): PyTorch packs
    the layout it reads, and it agrees with tinygemm."""
    library, layout = KERNELS.get(path), cpu_layout(dtype)
    return (
        library is not None
        and dtype == torch.bfloat16
        and layout is not None
        and layout[:2] == LAYOUTS[path][:2]  # how tinygemm rounds (`moved_zero`) is its own matter
        and _built(library)
        and _agrees(path)
    )


def int4_vnni_works(dtype: torch.dtype) -> bool:
    """Whether the VNNI kernel, and with it `unpack_int8`, runs here."""
    return int4_works("vnni", dtype)


def int4_fits(out_features: int, in_features: int, group: int, path: str = "vnni") -> bool:
    """Whether kernel `path` takes a weight of this shape: whole blocks of rows, groups of whole 16 inputs
    (the rows are rounded to int8 16 at a time; AVX2's int16 sums are widened every 16 inputs)."""
    block = LAYOUTS[path].block
    return out_features % block == 0 and group % 16 == 0 and in_features % group == 0


def scratch_bytes(rows: int, in_features: int, group: int) -> int:
    """A kernel's working memory: the rows in int8, their scales, and two sums per group."""
    return rows * (in_features + 4 + 8 * (in_features // group))


class Int4Product(_Product):
    """A packed int4 weight (N, K/2) with its (K/group, N, 2) bf16 scales and zeros and `bias` (N,), bound to
    kernel `path`."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int,
                 bias: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16,
                 path: str = "vnni") -> None:  # fmt: skip
        self.library = KERNELS[path]
        bias = None if bias is None else bias.to(dtype).contiguous()
        pointers = (packed.data_ptr(), scales_and_zeros.data_ptr(), group, _pointer_of(bias))
        super().__init__(
            packed.shape[0], packed.shape[1] * 2, (packed, scales_and_zeros, bias), pointers, dtype
        )
        self.group = group

    def scratch_bytes(self, rows: int) -> int:
        return scratch_bytes(rows, self.K, self.group)


def int4_mm(
    x2d: torch.Tensor,
    packed: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    group: int,
    scratch: torch.Tensor,
    bias: torch.Tensor | None = None,
    path: str = "vnni",
) -> torch.Tensor:
    """`x2d` (rows, K) bf16 or fp32 times the packed weight, plus `bias`, by kernel `path` through an
    `Int4Product` made for this one call: (rows, N) in x2d's dtype. `scratch`: at least `scratch_bytes`
    uint8."""
    product = Int4Product(packed, scales_and_zeros, group, bias, x2d.dtype, path)
    return product(x2d.contiguous(), scratch)


def unpack_int8(
    packed: torch.Tensor, span: tuple[int, int], multipliers: torch.Tensor, group: int, out: torch.Tensor
) -> torch.Tensor:
    """Rows [start, end) of a packed int4 weight (`LAYOUT`, whole blocks) into `out` (K, end - start) int8,
    rows in their own order: (code - 8) * `multipliers` (K/group, end - start) int8, in one pass (the
    unpacking int8 prompts need, dequant.py; what `_codes` and four PyTorch operations do, in order
    (nibble, byte))."""
    library = _library("int4_vnni")
    assert library is not None, "unpack_int8 called where int4_vnni_works is False"
    (start, end), (N, K) = span, (packed.shape[0], packed.shape[1] * 2)
    status = library.int4_unpack_int8(
        packed.data_ptr(), K, N, start, end - start, multipliers.data_ptr(), group, out.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise ValueError(f"cannot unpack rows {start}..{end} of {N}x{K} in groups of {group}")
    return out


@functools.cache
def _agrees(path: str) -> bool:
    """Kernel `path` against tinygemm on a random weight with several row counts (the layout is checked,
    not assumed), and the VNNI library's unpacking for prompts against PyTorch's operations, bit for bit;
    False where it cannot be built."""
    if _library(KERNELS[path]) is None:
        return False
    from .quant import quantize_and_pack_int4  # quant.py imports this module

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 256, generator=generator) * 0.02
    packed, scales_and_zeros, row_scales = quantize_and_pack_int4(weight, 64)
    scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
    for rows, dtype in ((1, torch.bfloat16), (5, torch.float32)):
        x = torch.randn(rows, 256, generator=generator).to(torch.bfloat16)
        expected = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scales_and_zeros).float()
        scratch = torch.empty(scratch_bytes(rows, 256, 64), dtype=torch.uint8)
        got = int4_mm(x.to(dtype), packed, scales_and_zeros, 64, scratch, path=path).float()
        if not bool((got - expected).norm() <= AGREEMENT * expected.norm()):
            return False
    if path == "vnni" and int8_mm_works():
        x = torch.randn(20, 256, generator=generator).to(torch.bfloat16)
        prompt = (x, packed, scales_and_zeros, row_scales, LAYOUT, UnpackScratch())
        return torch.equal(int8_product(*prompt), int8_product(*prompt, Native(unpack=unpack_int8)))
    return True
