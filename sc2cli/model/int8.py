"""int8 weights, one scale per output row (symmetric, quantized from a loaded `nn.Linear` or rebuilt from a
packed-weight cache's tensors, like quant.py's int4 layers):

- `DynamicInt8Linear`: activations quantized on the fly and multiplied in int8 by fbgemm (x86 CPUs; VNNI
  where present). fbgemm re-packs the weights on every load (~0.17 s per 3B MLP matrix on one core).
- `WeightOnlyInt8Linear`: bf16/fp16 activations (`aten._weight_int8pack_mm`; a prompt's rows run at a
  fifth of the int8 paths' rate: 12288x3072 x 512 rows 124 GOPS against 540-610, 2 threads, AMD Zen 5).
- `VnniInt8Linear`: each row of activations rounded to int8 with its own scale and multiplied in int8 on
  the weights as stored, so loading is reading: a token and its drafts by sc2's kernel (native.py,
  int8_vnni.c), a prompt's rows by `torch._int_mm`; both round and scale alike, so a row comes out the
  same bit for bit on either path, and alone or with other rows.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from . import native_int8
from .dequant import round_rows
from .quant import QuantizedLinear, block_rows

# fbgemm's path needs a quantized tensor, which PyTorch now warns are deprecated (in favour of torchao):
# that one message is ignored by a filter set once, since `warnings.catch_warnings` around the call is not
# thread-safe (another thread's block ending restores the filters mid-call, and the warning reached users'
# terminals while layers were built on several threads).
warnings.filterwarnings(
    "ignore",
    message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized",
    category=UserWarning,
)
# Rows from which `VnniInt8Linear` multiplies through torch._int_mm rather than sc2's kernel.
INT8_PROMPT_ROWS = 16


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp32 scale per output row: (int8 weight (N, K), scales (N,))."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scales = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    rows = block_rows(weight.shape[1])
    for start in range(0, weight.shape[0], rows):
        w = weight[start : start + rows].detach().to(torch.float32, copy=True)  # (n, K)
        s = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q[start : start + rows] = w.div_(s[:, None]).round_().clamp_(-127, 127)
        scales[start : start + rows] = s
    return q, scales


class DynamicInt8Linear(QuantizedLinear):
    """fbgemm's dynamic int8 product; multiplies fp32, returns the input's dtype."""

    kind = "int8-dynamic"

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(q, scales.double(), zero, 0)  # its warning: above
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.float())
        # 8-bit activations are exact in VNNI's int32 accumulation; older x86 needs 7 bits to avoid overflow
        self.reduce_range = not getattr(torch.cpu, "_is_vnni_supported", lambda: False)()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> DynamicInt8Linear:
        q, scales = quantize_per_channel(linear.weight)
        return cls(q, scales, None if linear.bias is None else linear.bias.detach())

    def state(self) -> dict[str, torch.Tensor]:
        """Unpacked from fbgemm's layout (only the packed copy is kept in memory)."""
        qweight, bias = torch.ops.quantized.linear_unpack(self.packed)
        tensors = {"q": qweight.int_repr(), "scales": qweight.q_per_channel_scales().float()}
        return tensors | ({} if bias is None else {"bias": bias})

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], dtype: torch.dtype) -> DynamicInt8Linear:
        return cls(state["q"], state["scales"], state.get("bias"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range).to(x.dtype)


class WeightOnlyInt8Linear(QuantizedLinear):
    """int8 weights times bf16/fp16 activations."""

    kind = "int8-weight-only"

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.q, self.scales, self.bias = q, scales, bias

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> WeightOnlyInt8Linear:
        q, scales = quantize_per_channel(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scales.to(linear.weight.dtype), bias)

    def state(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scales": self.scales} | ({} if self.bias is None else {"bias": self.bias})

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], dtype: torch.dtype) -> WeightOnlyInt8Linear:
        return cls(state["q"], state["scales"], state.get("bias"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.q, self.scales.to(x.dtype))
        out = out.reshape(*shape[:-1], -1)
        return out + self.bias if self.bias is not None else out


class VnniInt8Linear(QuantizedLinear):
    """int8 weights (N, K) with fp32 scales (N,); the rows rounded to int8 (`rounded_product`), fewer than
    `INT8_PROMPT_ROWS` of them through sc2's kernel where it runs here for the model's `dtype` (bf16 or
    fp32) and takes the shape. `row_sums` (N,) int32: each weight row's sum, which the kernel needs (its
    activations are biased by 128); stored, so a load never sums 3 GB again."""

    kind = "int8-vnni"

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 row_sums: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16) -> None:  # fmt: skip
        super().__init__()
        self.q, self.scales, self.bias = q, scales.float(), bias
        self.row_sums = q.sum(1, dtype=torch.int32) if row_sums is None else row_sums
        N, K = q.shape
        runs = (
            q.device.type == "cpu" and native_int8.int8_vnni_fits(N, K) and native_int8.int8_vnni_works(dtype)
        )
        self.product = native_int8.Int8Product(q, self.scales, self.row_sums, bias, dtype) if runs else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> VnniInt8Linear:
        q, scales = quantize_per_channel(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scales, bias, dtype=linear.weight.dtype)

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {"q": self.q, "scales": self.scales, "row_sums": self.row_sums}
        return tensors | ({} if self.bias is None else {"bias": self.bias})

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], dtype: torch.dtype) -> VnniInt8Linear:
        return cls(state["q"], state["scales"], state.get("bias"), state.get("row_sums"), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        product = self.product
        if product is not None and x.numel() < INT8_PROMPT_ROWS * product.K:  # a token's: kept lean
            return product(x)
        shape = x.shape
        out = rounded_product(x.reshape(-1, shape[-1]), self.q, self.scales, self.bias, x.dtype)
        return out.to(x.dtype).view(*shape[:-1], -1)


def rounded_product(
    x2d: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """`x2d` (rows, K), each row rounded to int8 with its own scale (dequant.py's `round_rows`), times the
    int8 weight `q` (N, K) transposed, in exact int32 sums (`torch._int_mm`), then scaled by the row's and
    each weight row's fp32 `scales` (N,), the bias added in fp32 and the result rounded once to `dtype`:
    (rows, N). Rounding and scaling through sc2's own helpers where they run (native.py: one pass each, the
    same results bit for bit)."""
    native_rows = native_int8.int8_rows_work() and x2d.shape[1] % 16 == 0
    if (
        native_rows
        and x2d.dtype in (torch.bfloat16, torch.float32)
        and dtype in (torch.bfloat16, torch.float32)
    ):
        x8, x_scale = native_int8.round_rows_int8(x2d)
        out = torch.empty(len(x2d), q.shape[0], dtype=dtype)
        return native_int8.scale_rows(torch._int_mm(x8, q.t()), x_scale, scales, out, bias=bias)
    x8, x_scale = round_rows(x2d.to(torch.float32, copy=True))
    out = torch._int_mm(x8, q.t()).float().mul_(x_scale).mul_(scales)
    return (out.add_(bias.float()) if bias is not None else out).to(dtype)
