"""int4 prompts through one dense product: tinygemm's packed CPU weights unpacked into the model's dtype.

tinygemm's CPU kernel (`aten._weight_int4pack_mm_for_cpu`) unpacks every weight again for each four input
rows, so a prompt's many rows run ~2.5x slower than the same product in bf16. `unpacked_product` instead
unpacks a slice of output rows (a *chunk*, ~`CHUNK_ELEMENTS` weights) into a scratch buffer shared by every
layer, multiplies it densely (fp32 accumulation), and goes on to the next: the unpacked chunk stays in
cache, and memory grows by ~12 MB of buffers, never by a weight, while the model keeps only its packed bytes.

The layout. `aten._convert_weight_to_int4pack_for_cpu` packs each block of B output rows (64 on AVX-512
builds, 32 otherwise) as (K, B/2) bytes, one byte holding two rows' codes of one input, low nibble first.
Which two rows depends on the instruction set the build dispatches to: rows j and j + B/2 ("halves",
AVX2/AVX-512) or rows 2j and 2j + 1 ("pairs": the portable kernel, and a last block shorter than B).
Rather than assume one, `cpu_layout` takes the known arrangement whose products match tinygemm's exactly
on this machine (None: prompts stay on tinygemm).

Unpacking never moves single elements: a chunk's bytes move in runs of B/2 (block-major to input-major), the
low and high nibbles fill the two halves of the chunk's (K, rows) codes, so its columns come out in the
order (nibble, byte); the scales are read in that order, and the product's columns are put back in runs.

The arithmetic is tinygemm's: each weight is (code - 8) * scale + zero in fp32 (the product is exact: 4-bit
codes times bf16 or fp16 scales), rounded once to the model's dtype; `cpu_layout` checks it bit for bit
against tinygemm's own product with an identity matrix.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from . import onednn

CHUNK_ELEMENTS = 3 << 19  # weights unpacked at once: 3 MB of bf16, 6 MB of fp32 temporaries


class Layout(NamedTuple):
    """`block` output rows packed together; within a region of whole blocks, byte q of an input holds rows
    (q // run) * 2 * run + nibble * run + q % run (run B/2: "halves", run 1: "pairs"). `moved_zero`: the
    kernel computes code * scale + (zero - 8 * scale), the last term rounded to fp32 first (AVX2's)."""

    block: int
    run: int
    moved_zero: bool = False


KNOWN_LAYOUTS = (
    Layout(64, 32),
    Layout(32, 16, True),
    Layout(32, 16),
    Layout(32, 1),
    Layout(64, 1),
    Layout(16, 1),
)


class UnpackScratch:
    """Buffers shared by a model's int4 layers, each grown to the largest chunk and then reused."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < n or buffer.dtype != dtype:
            with torch.inference_mode(False):  # written in place in and outside inference mode alike
                buffer = self.buffers[name] = torch.empty(n, dtype=dtype)
        return buffer[:n].view(shape)


def chunks(rows: int, in_features: int, layout: Layout) -> list[tuple[int, int, Layout]]:
    """(first row, end row, layout) of each chunk: whole blocks, ~`CHUNK_ELEMENTS` weights each, then the
    shorter last block (always "pairs")."""
    full = rows // layout.block * layout.block
    step = max(layout.block, CHUNK_ELEMENTS // in_features // layout.block * layout.block)
    spans = [(start, min(start + step, full), layout) for start in range(0, full, step)]
    return spans + ([(full, rows, Layout(rows - full, 1, layout.moved_zero))] if rows > full else [])


def unpack_chunk(
    packed: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    span: tuple[int, int, Layout],
    dtype: torch.dtype,
    scratch: UnpackScratch,
) -> torch.Tensor:
    """Rows [start, end) of the weight as (K, end - start) in `dtype`, columns in (nibble, byte) order."""
    start, end, (block, run, moved_zero) = span
    n, K = end - start, packed.shape[1] * 2
    groups = scales_and_zeros.shape[0]
    group = K // groups
    source = packed[start:end].view(n // block, K, block // 2)  # (blocks, K, B/2), contiguous
    data = scratch.take("bytes", (K, n // block, block // 2), torch.uint8)
    data.copy_(source.transpose(0, 1))  # input-major: runs of B/2 bytes
    data = data.view(K, n // 2)
    codes = scratch.take("codes", (K, 2, n // 2), torch.uint8)
    torch.bitwise_and(data, 15, out=codes[:, 0])
    torch.bitwise_right_shift(data, 4, out=codes[:, 1])
    if not moved_zero:
        codes.view(torch.int8).sub_(8)  # code - 8, exact in int8
    weight = scratch.take("fp32", (groups, group, n), torch.float32)
    weight.copy_(codes.view(torch.int8).view(groups, group, n))
    sz = scales_and_zeros[:, start:end].view(groups, n // (2 * run), 2, run, 2)  # (.., nibble, .., s/z)
    scales = scratch.take("scales", (2, groups, 1, n), torch.float32)  # scale, zero in the columns' order
    scales.view(2, groups, 2, -1, run).copy_(sz.permute(4, 0, 2, 1, 3))
    scale, zero = scales
    if moved_zero:
        zero.sub_(scale * 8)  # rounded to fp32, as the kernel does
    torch.addcmul(zero, weight, scale, out=weight)  # the product is exact; the sum rounded once
    if dtype == torch.float32:
        return weight.view(K, n)
    return scratch.take("weight", (K, n), dtype).copy_(weight.view(K, n))


def unpacked_product(
    x2d: torch.Tensor,
    packed: torch.Tensor,
    scales_and_zeros: torch.Tensor,
    layout: Layout,
    scratch: UnpackScratch,
    fp32: bool = False,
    through_onednn: bool = False,
) -> torch.Tensor:
    """`x2d` (rows, K) times the packed weight, chunk by chunk: (rows, N) in the scales' dtype, multiplied
    in that dtype (fp32 accumulation) or, with `fp32`, in fp32 on the unrounded weights, by `torch.mm` or,
    `through_onednn` (fp32 only), by oneDNN's inner product (on the chunk's transposed view: no copy)."""
    dtype = scales_and_zeros.dtype
    compute = torch.float32 if fp32 else dtype
    x2d = x2d.to(compute)
    rows, K = x2d.shape
    out = torch.empty(rows, packed.shape[0], dtype=dtype)
    for span in chunks(packed.shape[0], K, layout):
        start, end, run = span[0], span[1], span[2].run
        weight = unpack_chunk(packed, scales_and_zeros, span, compute, scratch)  # (K, n)
        if through_onednn and fp32:
            product = onednn.product(x2d, weight.t())
        else:
            product = scratch.take("product", (rows, end - start), compute)
            torch.mm(x2d, weight, out=product)  # columns in (nibble, byte) order
        out[:, start:end].view(rows, -1, 2, run).copy_(product.view(rows, 2, -1, run).transpose(1, 2))
    return out


@functools.cache
def cpu_layout(dtype: torch.dtype) -> Layout | None:
    """The known layout whose unpacked product equals tinygemm's bit for bit here for weights of `dtype`
    (each weight alone: the product with an identity matrix), or None. The weights have whole blocks and a
    shorter last one, and zeros so small next to their scales that the two orders of arithmetic differ."""
    generator = torch.Generator().manual_seed(0)
    identity = torch.eye(128, dtype=dtype)
    cases = []
    for rows in (240, 208):
        codes = torch.randint(0, 16, (rows, 128), generator=generator, dtype=torch.int32)
        scale = torch.rand(2, rows, generator=generator) / 10 + 0.01
        zero = torch.randn(2, rows, generator=generator) / 10
        zero[:, ::3] = scale[:, ::3] * 2**-20  # (zero - 8 * scale) is not exact in fp32
        cases.append((codes, torch.stack([scale, zero], -1).to(dtype)))
    try:
        cases = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(c, 1), sz) for c, sz in cases]
        expected = [torch.ops.aten._weight_int4pack_mm_for_cpu(identity, p, 64, sz) for p, sz in cases]
    except (AttributeError, NotImplementedError, RuntimeError):  # a build without tinygemm's CPU kernel
        return None
    for layout in KNOWN_LAYOUTS:
        got = [unpacked_product(identity, p, sz, layout, UnpackScratch()) for p, sz in cases]
        if all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)):
            return layout
    return None
