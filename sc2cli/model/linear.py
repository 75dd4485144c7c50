"""Which kernel each matrix product of the model runs on, chosen once after loading.

The weights load into plain `nn.Linear` layers under their Hugging Face names; `prepare` then swaps each
for the fastest faithful form on this device and dtype:

- `UpcastLinear`, for bf16/fp16 weights on a CPU. Without native bf16/fp16 arithmetic oneDNN emulates the
  format and a matrix product of many tokens runs ~4x below fp32 speed, so prompts (many rows) are
  multiplied in fp32 through a shared scratch copy of the weight, exactly as oneDNN computes bf16 (fp32
  accumulation, result rounded to bf16). Single-token decode, bound by memory, stays in the weight's
  format so it reads half the bytes; with bf16 it goes to oneDNN's inner product
  (`mkldnn._linear_pointwise`, the kernel inductor's freezing pass emits) rather than `F.linear`'s
  matmul, which reads the weights ~1.5x faster (12288x3072: 4.0 vs 5.9 ms on 2 cores) with the same
  numbers up to summation order.
- `DynamicInt8Linear` (`quantize="int8"` on x86 CPUs): int8 weights with one scale per output channel,
  activations quantized per row on the fly, products in int8 through fbgemm (VNNI where present).
- `WeightOnlyInt8Linear` (`quantize="int8"` elsewhere): int8 weights, bf16/fp16 activations.

Embeddings and layer norms are never quantized; a tied lm_head gets its own int8 copy so the embedding
lookup keeps full precision.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .device import cpu_has_native_bf16

QUANTIZATIONS = ("none", "int8")
UPCAST_MIN_ROWS = 8  # below this many rows a product is bound by memory: keep the compact format


class Scratch:
    """One fp32 buffer shared by every layer, so upcasting a weight never allocates (or page-faults)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0)

    def fp32(self, weight: torch.Tensor) -> torch.Tensor:
        if self.buffer.numel() < weight.numel():
            self.buffer = torch.empty(weight.numel(), dtype=torch.float32, device=weight.device)
        return self.buffer[: weight.numel()].view(weight.shape).copy_(weight)


@functools.cache
def _onednn_inner_product() -> Callable | None:
    """oneDNN's bf16 inner product on dense weights, where this build of PyTorch has it and this CPU runs
    it (tried once on a small product: oneDNN refuses formats some CPUs lack)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise  # a private op: absent from some builds
        x, w = torch.ones(1, 16, dtype=torch.bfloat16), torch.ones(8, 16, dtype=torch.bfloat16)
        if not torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w)):
            return None
    except (AttributeError, RuntimeError):
        return None
    return op


class UpcastLinear(nn.Module):
    """bf16/fp16 weights on a CPU: few rows through oneDNN's inner product (bf16) or `F.linear` (fp16, which
    oneDNN's inner product refuses without AVX-NE-CONVERT); many rows in fp32 through `scratch`, or as
    they are when `scratch` is None (native bf16 arithmetic)."""

    def __init__(self, linear: nn.Linear, scratch: Scratch | None) -> None:
        super().__init__()
        self.weight = linear.weight  # kept as is: a tied lm_head still shares the embedding
        self.bias = linear.bias
        self.scratch = scratch
        self.inner_product = _onednn_inner_product() if self.weight.dtype == torch.bfloat16 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows < UPCAST_MIN_ROWS and self.inner_product is not None:
            return self.inner_product(x, self.weight, self.bias, "none", [], "")
        if rows < UPCAST_MIN_ROWS or self.scratch is None:
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.scratch.fp32(self.weight), bias).to(x.dtype)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp32 scale per output row: (int8 weight, scales)."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


class DynamicInt8Linear(nn.Module):
    """fbgemm's dynamic int8 product; takes and returns fp32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scales = quantize_per_channel(linear.weight)
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        with (
            warnings.catch_warnings()
        ):  # quantized tensors are deprecated in favour of torchao (not a dependency)
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(q, scales.double(), zero, 0)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.weight_bytes = q.numel()
        # 8-bit activations are exact in VNNI's int32 accumulation; older x86 needs 7 bits to avoid overflow
        self.reduce_range = not getattr(torch.cpu, "_is_vnni_supported", lambda: False)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range).to(x.dtype)


class WeightOnlyInt8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scales = quantize_per_channel(linear.weight)
        dtype = linear.weight.dtype
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.weight_bytes = q.numel() + scales.numel() * scales.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.aten._weight_int8pack_mm(
            x.reshape(-1, shape[-1]), self.qweight, self.scales.to(x.dtype)
        )
        out = out.reshape(*shape[:-1], -1)
        return out + self.bias if self.bias is not None else out


def dynamic_int8_available(device: torch.device) -> bool:
    return device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines


def prepare(model: nn.Module, quantize: str = "none") -> str:
    """Swap the model's nn.Linear layers for the kernels chosen here; returns a short description."""
    if quantize not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {quantize!r}; use {', '.join(QUANTIZATIONS)}")
    device, dtype = model.device, model.dtype
    if quantize == "int8":
        return _quantize_int8(model, device, dtype)
    name = str(dtype).removeprefix("torch.")
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        scratch = None if cpu_has_native_bf16() else Scratch()
        _swap(model, lambda linear: UpcastLinear(linear, scratch))
        return f"{name} weights, prompts multiplied in fp32" if scratch else name
    return name


def _quantize_int8(model: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    if dynamic_int8_available(device):
        _swap(model, DynamicInt8Linear)
        _to_fp32(model)  # fbgemm works on fp32 activations: embeddings and norms stay in full precision
        return "int8 weights and activations (fbgemm)"
    if dtype == torch.float32:
        raise InputError("--quantize int8 on this device needs --dtype bf16 or fp16")
    _swap(model, WeightOnlyInt8Linear)
    return "int8 weights"


def _to_fp32(model: nn.Module) -> None:
    """New fp32 parameters (not an in-place cast: other holders of the old tensors keep them as they were)."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(p.detach().float(), requires_grad=False))


def _swap(model: nn.Module, make) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, make(child))
