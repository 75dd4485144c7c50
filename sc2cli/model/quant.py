"""Quantized matrix products: the `QuantizedLinear` they share, quantized from a loaded `nn.Linear` or
rebuilt from the tensors a packed-weight cache stored (`state()` / `from_state`), so a model is quantized
once per machine; and int4 weights (int8 ones: int8.py).

- `Int4Linear`: 4-bit weights with an fp scale and zero point per group of `INT4_GROUP` inputs, through
  PyTorch's own tinygemm kernels (`aten._weight_int4pack_mm_for_cpu` on CPUs, `_weight_int4pack_mm` on
  CUDA); on a CPU, a prompt's many rows may instead take its `prompt` path: the packed weight unpacked
  chunk by chunk into a shared scratch buffer and multiplied densely (dequant.py; in bf16, in fp32 by
  `torch.mm` or oneDNN, or in int8 with the rows rounded to int8). Each group's scale is a whole multiple
  of its row's scale, so the int8 product multiplies the very weights tinygemm does. A token and its drafts
  may instead take sc2's own kernel on the same packed bytes (native_int4.py: int8-rounded rows, AVX-512
  VNNI or AVX2).

Every quantizer works on a block of output rows at a time, so its fp32 temporaries stay small next to
the weights: peak memory while quantizing stays near the bf16 model.
"""

from __future__ import annotations

import abc
import functools

import torch
from torch import nn

from . import native_int4, native_int8, onednn
from .dequant import (
    MULTIPLIER_MAX,
    Layout,
    Native,
    UnpackScratch,
    cpu_layout,
    int8_mm_works,
    int8_product,
    multipliers_exact,
    unpacked_product,
)
from .kernels import ROLES

QUANT_ELEMENTS = 1 << 19  # weights quantized (and int4-packed) at once: fp32 temporaries of 2 MB
PACK_BLOCK = 64  # rows tinygemm's CPU layout packs together (checked at run time, not assumed)
# Inputs sharing one int4 scale and zero point. Measured (issue 20's report): the trained tiny model's
# held-out loss rises 0.021 (g32) / 0.030 (g64) nats over bf16, greedy FIM agreement 91% / 90%; the
# kernels' time is the same within noise, but g32's scales add 25% to the packed bytes decode reads
# (g64: 12.5%). g128 does not divide the tiny model's 192 inputs.
INT4_GROUP = 64
INT4_MULTIPLIER_MAX = MULTIPLIER_MAX  # a group's scale: its row's times a whole number up to this
INT4_INNER_K_TILES = 8  # tinygemm's CUDA layout: in_features must be a multiple of 16 * this
# Rows from which an int4 product takes its prompt path. Measured (3B shapes, one thread): unpacking then
# multiplying densely overtakes tinygemm between 64 and 128 rows (12288x3072: 42 vs 33 ms at 64 rows,
# 55 vs 67 at 128), since unpacking costs the same whatever the rows.
INT4_PROMPT_ROWS = 128
# The int8 path overtakes tinygemm sooner (3B shapes, 2 threads: 12288x3072 at 32 rows 7.9 vs 10.3 ms, at
# 64 rows 15.5 vs 11.8; 3072x12288 at 64 rows 19.9 vs 13.5; 3072x3072 at 64 rows 5.0 vs 3.9).
INT4_INT8_PROMPT_ROWS = 48
INT4_PROMPT_PATHS = ROLES["int4-prompt"]


def block_rows(in_features: int) -> int:
    """Output rows quantized at once: about `QUANT_ELEMENTS` weights, a multiple of `PACK_BLOCK` rows."""
    return max(PACK_BLOCK, QUANT_ELEMENTS // in_features // PACK_BLOCK * PACK_BLOCK)


def quantize_int4(
    weight: torch.Tensor, group: int = INT4_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of `group` inputs, with weight ≈ (code - 8) * scale + zero (tinygemm's
    convention): (codes int32 (N, K) in 0..15, scales_and_zeros (K/group, N, 2) fp32, row_scales (N,)).

    Each group's scale is its row's `row_scale` times a whole multiplier in 1..`INT4_MULTIPLIER_MAX`, and
    `row_scale` has 4 significant bits, so every scale is exact in bf16 and fp16 and (code - 8) * multiplier
    fits in int8: a prompt can be multiplied in int8 against the very weights tinygemm multiplies
    (dequant.py's `int8_product`). Of the two multipliers around a group's range / 15 (the smaller clips
    its extremes a little, the larger is coarser), each group keeps the one with the smaller squared
    error; its codes are centred on the range."""
    N, K = weight.shape
    if K % group:
        raise ValueError(f"int4 needs in_features ({K}) divisible by the group size {group}")
    codes = torch.empty(N, K, dtype=torch.int32, device=weight.device)
    scales_and_zeros = torch.empty(K // group, N, 2, dtype=torch.float32, device=weight.device)
    row_scales = torch.empty(N, dtype=torch.float32, device=weight.device)
    rows = block_rows(K)
    for start in range(0, N, rows):
        w = weight[start : start + rows].detach().to(torch.float32, copy=True)  # (n, K): never the original
        w = w.view(-1, K // group, group)  # (n, G, group)
        low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        ideal = (high - low).clamp(min=1e-6) / 15  # (n, G, 1)
        row_scale = _round_up_to_4_bits(ideal.amax(1, keepdim=True) / INT4_MULTIPLIER_MAX)  # (n, 1, 1)
        ratio = ideal / row_scale  # <= 16
        multipliers = (
            ratio.floor().clamp_(1, INT4_MULTIPLIER_MAX),
            ratio.ceil().clamp_(1, INT4_MULTIPLIER_MAX),
        )
        scale, scale2 = (row_scale * m for m in multipliers)
        (q, zero, error), (q2, zero2, error2) = _fit(w, low, high, scale), _fit(w, low, high, scale2)
        better = error2 < error  # (n, G, 1): the larger multiplier wins
        q, scale, zero = (
            torch.where(better, q2, q),
            torch.where(better, scale2, scale),
            torch.where(better, zero2, zero),
        )
        scales_and_zeros[:, start : start + rows, 0] = scale[..., 0].t()
        scales_and_zeros[:, start : start + rows, 1] = zero[..., 0].t()
        row_scales[start : start + rows] = row_scale.view(-1)
        codes[start : start + rows] = q.view(-1, K)
    return codes, scales_and_zeros, row_scales


def _fit(
    w: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Codes for `w` (n, G, group) at `scale` (n, G, 1), centred on each group's range: (codes, zero,
    squared error per group)."""
    zero = (low + high) / 2 + scale / 2  # codes 0..15 span zero - 8 * scale .. zero + 7 * scale
    q = ((w - zero) / scale).round_().add_(8).clamp_(0, 15)
    return q, zero, ((q - 8) * scale + zero - w).square_().sum(-1, keepdim=True)


def _round_up_to_4_bits(x: torch.Tensor) -> torch.Tensor:
    """The smallest number >= `x` (positive) with at most 4 significant bits."""
    _, exponent = torch.frexp(x)  # x = m * 2**exponent, 0.5 <= m < 1
    step = torch.pow(2.0, exponent.to(x.dtype) - 4)
    return torch.ceil(x / step) * step


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """tinygemm's packed layout for this device: CPU (N, K/2) uint8, CUDA int32 tiles."""
    if codes.device.type == "cuda":
        pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # (N, K/2)
        return torch.ops.aten._convert_weight_to_int4pack(pairs, INT4_INNER_K_TILES)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)


@functools.cache
def cpu_packing_splits_by_rows() -> bool:
    """Whether the CPU layout packs blocks of `PACK_BLOCK` rows independently (checked here, on a short
    tail block too, rather than assumed), so a large weight can be packed block by block instead of
    through an int32 copy of all its codes (2x its bf16 bytes)."""
    codes = torch.randint(0, 16, (3 * PACK_BLOCK + 16, 128), generator=torch.Generator().manual_seed(0))
    codes = codes.to(torch.int32)
    blocks = [pack_int4(codes[start : start + PACK_BLOCK]) for start in range(0, len(codes), PACK_BLOCK)]
    return torch.equal(pack_int4(codes), torch.cat(blocks))


def quantize_and_pack_int4(
    weight: torch.Tensor, group: int = INT4_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed weight, scales_and_zeros (K/group, N, 2) fp32, row_scales (N,)), a block of rows at a time on
    CPUs where the layout allows it."""
    if weight.device.type == "cuda" or not cpu_packing_splits_by_rows():
        codes, scales_and_zeros, row_scales = quantize_int4(weight, group)
        return pack_int4(codes), scales_and_zeros, row_scales
    N, K = weight.shape
    packed = torch.empty(N, K // 2, dtype=torch.uint8)
    scales_and_zeros = torch.empty(K // group, N, 2, dtype=torch.float32)
    row_scales = torch.empty(N, dtype=torch.float32)
    rows = block_rows(K)
    for start in range(0, N, rows):
        codes, sz, rs = quantize_int4(weight[start : start + rows], group)
        packed[start : start + rows] = pack_int4(codes)
        scales_and_zeros[:, start : start + rows] = sz
        row_scales[start : start + rows] = rs
    return packed, scales_and_zeros, row_scales


def int4_fits(shape: tuple[int, int], device: torch.device, group: int = INT4_GROUP) -> bool:
    """Whether tinygemm packs a weight of `shape` (N, K) here: N a multiple of 16 on CPUs (8 on CUDA, where
    K must also fill whole tiles) and K of the group size. Every StarCoder2 matrix does."""
    N, K = shape
    if device.type == "cuda":
        return N % 8 == 0 and K % (16 * INT4_INNER_K_TILES) == 0 and K % group == 0
    return N % 16 == 0 and K % group == 0


def int4_layout(device: torch.device) -> str:
    """Names the packed layout, part of the packed-weight cache's key (it differs between devices)."""
    return f"tinygemm-cuda-k{INT4_INNER_K_TILES}" if device.type == "cuda" else "tinygemm-cpu"


class QuantizedLinear(nn.Module, abc.ABC):
    """A quantized product whose whole state is its tensors: `state()` to store, `from_state` to rebuild."""

    kind = ""

    @property
    def weight_bytes(self) -> int:
        """Bytes one product reads from memory: the packed weight and its scales (and bias)."""
        return sum(t.numel() * t.element_size() for t in self.state().values())

    @abc.abstractmethod
    def state(self) -> dict[str, torch.Tensor]: ...

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, torch.Tensor], dtype: torch.dtype) -> QuantizedLinear: ...


class Int4Linear(QuantizedLinear):
    """4-bit weights, a scale and zero per group of `INT4_GROUP` inputs; the activations are multiplied in
    the scales' dtype (the model's on a CPU, bf16 on CUDA) and returned in their own. `prompt` is the path
    of products of `INT4_PROMPT_ROWS` (`int8`: `INT4_INT8_PROMPT_ROWS`) rows or more on a CPU
    (`INT4_PROMPT_PATHS`): `tinygemm` like single tokens, `dequant` (unpacked into the model's dtype) or
    `dequant-fp32` (into fp32, multiplied in fp32, by `torch.mm` or oneDNN), or `int8` (the rows quantized
    to int8, the weights unpacked into int8: needs `row_scales`, which quantize_int4 makes), all through
    `scratch`, which the model's int4 layers share, or a native kernel as decode's (`use_prompt_path`).
    `decode` is the path of fewer rows on a CPU: `tinygemm`, or `vnni` or `avx2` (native_int4.py: sc2's
    own kernels, the rows rounded to int8 as the `int8` prompt path rounds them; `use_decode_path`)."""

    kind = "int4"

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, row_scales: torch.Tensor | None = None) -> None:  # fmt: skip
        super().__init__()
        self.packed, self.scales_and_zeros, self.bias = packed, scales_and_zeros, bias
        self.row_scales = row_scales  # (N,) fp32: each group's scale is a whole multiple of its row's
        self.in_features = in_features
        self.out_features = scales_and_zeros.shape[1]
        self.group = in_features // scales_and_zeros.shape[0]
        self.prompt, self.decode, self.scratch = "tinygemm", "tinygemm", UnpackScratch()
        self.layout: Layout | None = None  # tinygemm's CPU layout, once a prompt path unpacks it
        self.few = INT4_PROMPT_ROWS  # products of fewer rows take the decode path
        self.product: native_int4.Int4Product | None = None  # a native decode path, bound to these weights
        self.prompt_product: native_int4.Int4Product | None = None  # a native prompt path, likewise
        self.helpers = Native()  # sc2's own helpers for the `int8` prompt path, where they run here

    def use_prompt_path(self, path: str, scratch: UnpackScratch | None = None) -> str:
        """Take `path` for prompts where it runs here (tinygemm otherwise); returns the path taken."""
        layout = cpu_layout(self.scales_and_zeros.dtype) if self.packed.device.type == "cpu" else None
        unpacks = layout is not None and (path.startswith("dequant") or path == "int8")  # dequant.py's paths
        if path == "dequant-fp32-onednn":
            unpacks = unpacks and onednn.fp32_works()
        if path == "int8":
            unpacks = (
                unpacks and int8_mm_works() and multipliers_exact(self.scales_and_zeros, self.row_scales)
            )
        self.prompt_product = self._native(path)  # the kernel reads the packed bytes itself
        if not unpacks and self.prompt_product is None:
            path = "tinygemm"
        self.prompt, self.layout = path, layout if unpacks else None
        self.helpers = _helpers(self.scales_and_zeros, layout) if path == "int8" else Native()
        self.few = INT4_INT8_PROMPT_ROWS if path == "int8" else INT4_PROMPT_ROWS
        self.scratch = scratch or self.scratch
        return path

    def use_decode_path(self, path: str) -> str:
        """Take `path` for products of fewer rows than a prompt's where it runs here (tinygemm otherwise);
        returns the path taken."""
        self.product = self._native(path)
        self.decode = path if self.product is not None else "tinygemm"
        return self.decode

    def _native(self, path: str) -> native_int4.Int4Product | None:
        """Native kernel `path` bound to these weights (bias inside), or None where it does not run here."""
        runs = (
            path in native_int4.KERNELS
            and self.packed.device.type == "cpu"
            and native_int4.int4_fits(self.out_features, self.in_features, self.group, path)
            and native_int4.int4_works(path, self.scales_and_zeros.dtype)
        )
        sz = self.scales_and_zeros
        return (
            native_int4.Int4Product(self.packed, sz, self.group, self.bias, sz.dtype, path) if runs else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = INT4_GROUP) -> Int4Linear:
        packed, scales_and_zeros, row_scales = quantize_and_pack_int4(linear.weight, group)
        bias = None if linear.bias is None else linear.bias.detach()
        dtype = torch.bfloat16 if linear.weight.device.type == "cuda" else linear.weight.dtype
        return cls(packed, scales_and_zeros.to(dtype), bias, linear.in_features, row_scales)

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {
            "packed": self.packed,
            "scales_and_zeros": self.scales_and_zeros,
            "row_scales": self.row_scales,
        }
        return {name: t for name, t in (tensors | {"bias": self.bias}).items() if t is not None}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Int4Linear:
        in_features = state["scales_and_zeros"].shape[0] * _group_of(state)
        sz, bias, row_scales = state["scales_and_zeros"], state.get("bias"), state.get("row_scales")
        return cls(state["packed"], sz, bias, in_features, row_scales)

    def _prompt(self, rows: int) -> bool:
        """Whether a product of `rows` rows takes the prompt path (`self.prompt`; int8 from fewer rows)."""
        return rows >= self.few

    def _mm(self, x2d: torch.Tensor) -> torch.Tensor:
        sz = self.scales_and_zeros
        if self.packed.device.type == "cuda":
            return torch.ops.aten._weight_int4pack_mm(x2d.to(sz.dtype), self.packed, self.group, sz)
        prompt = self._prompt(len(x2d))
        if prompt and self.layout is not None and self.prompt == "int8":
            return int8_product(
                x2d, self.packed, sz, self.row_scales, self.layout, self.scratch, self.helpers
            )
        if prompt and self.layout is not None:
            fp32, through_onednn = self.prompt.startswith("dequant-fp32"), self.prompt.endswith("onednn")
            return unpacked_product(x2d, self.packed, sz, self.layout, self.scratch, fp32, through_onednn)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2d.to(sz.dtype), self.packed, self.group, sz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a token's, kept lean (211 a token): a native kernel, bias inside, for the rows' side of `few`
        product = self.product if x.numel() < self.few * self.in_features else self.prompt_product
        if product is not None:
            return product(x)
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])  # (rows, K)
        out = self._mm(x2d).to(x.dtype).reshape(*shape[:-1], -1)
        return out + self.bias if self.bias is not None else out


def _helpers(scales_and_zeros: torch.Tensor, layout: Layout) -> Native:
    """sc2's native helpers for int8 prompts that run here: unpacking where the int4 kernel runs on this
    layout, rounding and scaling where they agree with PyTorch."""
    unpack = layout == native_int4.LAYOUT and native_int4.int4_vnni_works(scales_and_zeros.dtype)
    rows = native_int8.int8_rows_work()
    return Native(
        native_int4.unpack_int8 if unpack else None,
        native_int8.round_rows_int8 if rows else None,
        native_int8.scale_rows if rows else None,
    )


def _group_of(state: dict[str, torch.Tensor]) -> int:
    """The group size a stored int4 weight was quantized with: a cache names it in its key, and the
    packed tensor's shape gives in_features (CPU: (N, K/2); CUDA tiles: K = dim1 * tiles * 16)."""
    packed, groups = state["packed"], state["scales_and_zeros"].shape[0]
    in_features = packed.shape[1] * 2 if packed.dim() == 2 else packed.shape[1] * INT4_INNER_K_TILES * 16
    return in_features // groups
