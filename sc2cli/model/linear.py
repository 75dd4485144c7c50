"""Which kernel each matrix product of the model runs on, chosen once after loading.

The weights load into plain `nn.Linear` layers under their Hugging Face names; `prepare` then swaps each
for the fastest faithful form on this device and dtype, the paths measured here (kernels.py):

- `UpcastLinear`, for bf16/fp16 weights on a CPU. A single token's product, bound by memory, stays in the
  weight's format (half the bytes of fp32) through oneDNN's inner product (`mkldnn._linear_pointwise`,
  the kernel inductor's freezing pass emits) or `F.linear`'s matmul, whichever reads the weights faster
  here. A prompt's many rows run in bf16 where the CPU has the arithmetic, or in fp32 through a shared
  scratch copy of the weight, exactly as oneDNN computes bf16 (fp32 accumulation, rounded to bf16), by
  `F.linear`'s BLAS or by oneDNN's fp32 inner product, whichever multiplies faster here.
- `OneDnnLinear`, for fp32 weights on a CPU where oneDNN's inner product measures faster than `F.linear`'s
  BLAS (MKL takes a generic path on AMD CPUs); elsewhere fp32 layers stay `nn.Linear`.
- `quantize="int8"`: fbgemm's dynamic int8 product, the weight-only int8 product, or the rows rounded to
  int8 for sc2's own kernel and `torch._int_mm` (int8.py).
- `quantize="int4"`: 4-bit weights with group-wise scales through PyTorch's tinygemm kernels (quant.py);
  on a CPU, prompts through tinygemm or through a dense product on weights unpacked chunk by chunk
  (dequant.py), whichever the plan measured faster for the shape; a token and its drafts through tinygemm
  or sc2's own int8-dot-product kernels (native_int4.py), likewise (`use_prompt_paths`).

Embeddings and layer norms are never quantized; a tied lm_head gets its own quantized copy so the
embedding lookup keeps full precision. Each weight is quantized and its bf16 original freed before the
next, so memory never holds the model twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from . import native, native_int4, native_int8, onednn
from .dequant import UnpackScratch, cpu_layout, int8_mm_fast, int8_mm_works
from .device import cpu_has_native_bf16
from .int8 import DynamicInt8Linear, VnniInt8Linear, WeightOnlyInt8Linear
from .kernels import PROBE_MAX_OUT, Choices, cache_reader, cache_sized, choose, measure_again, parse_forced
from .quant import INT4_GROUP, Int4Linear, QuantizedLinear, int4_fits

QUANTIZATIONS = ("none", "int8", "int4")
UPCAST_MIN_ROWS = 8  # below this many rows a product is bound by memory: the decode path
# Models whose matrices hold fewer bytes are not measured (the tiny model: its first completion must not
# wait for a probe, and its products take microseconds whichever path runs them).
PROBE_MIN_BYTES = 64 << 20
Plan = dict[tuple[int, int], dict[str, str]]  # weight shape (N, K) -> role -> path


class Scratch:
    """One fp32 buffer shared by every layer, so upcasting a weight never allocates (or page-faults)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0)

    def fp32(self, weight: torch.Tensor) -> torch.Tensor:
        if self.buffer.numel() < weight.numel():
            self.buffer = torch.empty(weight.numel(), dtype=torch.float32, device=weight.device)
        return self.buffer[: weight.numel()].view(weight.shape).copy_(weight)


class UpcastLinear(nn.Module):
    """bf16/fp16 weights on a CPU: few rows by `decode` (`onednn`, `native` or `stream`, bf16 only, or
    `linear`; `native` and `stream` are sc2's own kernel in its two orders through a weight, native.py,
    where the weight's layout fits it), many rows by
    `prefill` (`upcast`: fp32 through `scratch` by F.linear, `upcast-onednn`: by oneDNN; `linear`: as they
    are). `decode="packed"` (bf16, with `prefill="linear"`): every product through oneDNN on the weight
    reordered once into its blocked layout, which replaces the dense one (a tied lm_head gets its own copy;
    the embedding keeps the dense one)."""

    def __init__(self, linear: nn.Linear, scratch: Scratch, decode: str = "linear", prefill: str = "upcast"):
        super().__init__()
        self.decode, self.prefill = decode, prefill
        self.inner_product = onednn.inner_product() if decode in ("onednn", "packed") else None
        if decode == "packed" and (prefill != "linear" or self.inner_product is None):
            raise InputError("the packed oneDNN path needs bf16 weights multiplied as they are")
        if prefill == "upcast-onednn" and not onednn.fp32_works():
            raise InputError("oneDNN's fp32 inner product does not run here; use prefill=upcast")
        # packed: a plain attribute (an opaque tensor is no Parameter); else kept as is, so a tied lm_head
        # still shares the embedding
        self.weight = onednn.pack(linear.weight) if decode == "packed" else linear.weight
        self.bias = linear.bias
        self.scratch = scratch
        bias_fits = self.bias is None or self.bias.dtype == torch.bfloat16
        self.stream = decode == "stream"  # the kernel's one-row-at-a-time order (AVX2's kernel)
        self.native_fits = (  # the `native` and `stream` decode paths: sc2's kernel takes this weight and bias
            decode in ("native", "stream")
            and bias_fits
            and native.bf16_gemv_works(self.stream)
            and native.bf16_gemv_fits(self.weight)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decode == "packed":
            return onednn.product(x, self.weight, self.bias)
        rows = x.numel() // x.shape[-1]
        if rows < UPCAST_MIN_ROWS:
            if self.native_fits:
                return native.bf16_gemv(x, self.weight, self.bias, self.stream)
            if self.inner_product is not None:
                return onednn.product(x, self.weight, self.bias)
            return F.linear(x, self.weight, self.bias)
        if self.prefill == "linear":
            return F.linear(x, self.weight, self.bias)
        return _upcast_product(x, self.scratch.fp32(self.weight), self.bias, self.prefill).to(x.dtype)


def _upcast_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, path: str
) -> torch.Tensor:
    """`x` times the fp32 `weight` in fp32, by `path` (`upcast`: F.linear, `upcast-onednn`: oneDNN)."""
    bias = None if bias is None else bias.float()
    if path == "upcast-onednn":
        return onednn.product(x.float(), weight, bias)
    return F.linear(x.float(), weight, bias)


class OneDnnLinear(nn.Linear):
    """An fp32 `nn.Linear` (same parameters, shared: a tied head stays tied) multiplied by oneDNN's inner
    product at every row count."""

    kind = "onednn"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn.product(x, self.weight, self.bias)


def dynamic_int8_available(device: torch.device) -> bool:
    return device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines


def linear_shapes(model: nn.Module) -> tuple[list[tuple[int, int]], int]:
    """The distinct (out, in) shapes of the model's matrix products, largest first, and their weights'
    total bytes in the model's dtype (works on the meta device too)."""
    weights = [m.weight for m in model.modules() if type(m) is nn.Linear]
    shapes = sorted({tuple(w.shape) for w in weights}, key=lambda s: -s[0] * s[1])
    return shapes, sum(w.numel() for w in weights) * model.dtype.itemsize  # type: ignore[return-value]


def weights_of(model: nn.Module) -> Callable[[tuple[int, int]], list[torch.Tensor]]:
    """The model's (loaded) weights of a shape, for `plan_kernels` to time a token's products on."""
    return lambda shape: [
        m.weight for m in model.modules() if type(m) is nn.Linear and m.weight.shape == shape
    ]


def plan_kernels(
    shapes: list[tuple[int, int]],
    quantize: str,
    device: torch.device,
    dtype: torch.dtype,
    kernels: str | None = None,
    remember: bool = True,
    weight_bytes: int | None = None,
    roles: Collection[str] | None = None,
    evict: Callable[[], object] | None = None,
    weights: Callable[[tuple[int, int]], list[torch.Tensor]] | None = None,
) -> Plan:
    """The path of every role each shape needs (of `roles` only, when given), forced by `kernels` (else
    `$SC2_KERNELS`), remembered, or measured on stand-in weights of that shape (kernels.py); models of
    fewer than `PROBE_MIN_BYTES` of `weight_bytes` take unmeasured defaults. Only CPUs have choices. A
    token's products are timed after `evict` (kernels.py's `COLD_ROLES`; default: one buffer for the plan)
    and, where `weights` gives a loaded model's weights of a shape, over those in turn
    (`_decode_candidates`)."""
    if quantize not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {quantize!r}; use {', '.join(QUANTIZATIONS)}")
    forced = parse_forced(kernels)
    if device.type != "cpu":
        return {shape: {} for shape in shapes}
    choices = Choices(fresh=measure_again(kernels)) if remember else None
    plan: Plan = {}
    small = weight_bytes is not None and weight_bytes < PROBE_MIN_BYTES
    evict = evict or cache_reader()  # allocated on its first call
    for shape in shapes:
        plan[shape] = {}
        stand_in = _stand_in(shape, dtype)
        for role in (r for r in _roles(quantize, shape, dtype) if roles is None or r in roles):
            built = not small or role in forced  # a small model compiles nothing it would not measure
            available = _available(role, dtype, shape, plan[shape].get("prefill"), built)
            if forced.get(role) not in available:  # what is measured: the paths that can win
                available = [path for path in available if _worth_timing(role, path)]
            make = functools.partial(CANDIDATES[role], stand_in, available)
            if role == "decode" and weights is not None and "packed" not in available:  # no copies of them
                make = functools.partial(_decode_candidates, stand_in, available, cache_sized(weights(shape)))
            default = _default(role, available) if small else None
            plan[shape][role] = choose(role, shape, available, make, dtype, forced, choices, default, evict)
    if choices is not None:
        choices.save()
    return plan


def _roles(quantize: str, shape: tuple[int, int], dtype: torch.dtype) -> list[str]:
    """The decisions a weight of `shape` needs: int4 prompts and decode only where tinygemm packs the shape
    (others take int8 weights, whose one layout needs no choice under int4)."""
    if quantize == "int4":
        return ["int4-prompt", "int4-decode"] if int4_fits(shape, torch.device("cpu")) else []
    if quantize == "int8":
        return ["int8"]
    return ["prefill", "decode"] if dtype != torch.float32 else ["fp32"]


def _available(
    role: str, dtype: torch.dtype, shape: tuple[int, int], prefill: str | None = None, built: bool = True
) -> list[str]:
    """The paths of `role` this CPU and build can run for weights of `dtype` (decode: given the prefill path
    chosen for the shape, since the packed layout serves both; int4: sc2's own kernels only when `built`, as
    they may need compiling first, and where they take `shape`)."""
    if role == "decode":
        dense = dtype == torch.bfloat16 and onednn.inner_product() is not None
        packed = dense and prefill == "linear" and onednn.packed_works()
        own = [path for path in ("native", "stream") if dtype == torch.bfloat16 and built
               and native.bf16_gemv_works(path == "stream")]  # fmt: skip
        return ["linear"] + (["onednn"] if dense else []) + (["packed"] if packed else []) + own
    if role == "prefill":
        return ["linear", "upcast"] + (["upcast-onednn"] if onednn.fp32_works() else [])
    if role == "fp32":
        return ["linear"] + (["onednn"] if onednn.fp32_works() else [])
    own = [
        path
        for path in native_int4.KERNELS
        if role.startswith("int4") and built and native_int4.int4_fits(*shape, INT4_GROUP, path)
        and native_int4.int4_works(path, dtype)
    ]  # fmt: skip
    if role == "int4-decode":
        return ["tinygemm", *own]
    if role == "int4-prompt":  # unpacking needs tinygemm's layout recognised (dequant.py)
        unpacked = ["dequant", "dequant-fp32"] + (["dequant-fp32-onednn"] if onednn.fp32_works() else [])
        unpacked += ["int8"] if int8_mm_works() else []
        return ["tinygemm"] + (unpacked if cpu_layout(dtype) is not None else []) + own
    paths = (["dynamic"] if dynamic_int8_available(torch.device("cpu")) else []) + (
        ["weight-only"] if dtype != torch.float32 else []
    )
    paths += ["vnni"] if built and native_int8.int8_vnni_works(dtype) else []
    if not paths:
        raise InputError("--quantize int8 on this device needs --dtype bf16 or fp16")
    return paths


def _worth_timing(role: str, path: str) -> bool:
    """Whether a path that runs here can win at all: int8 prompts not where `torch._int_mm` is a plain loop
    (forced, they still run)."""
    return not (role == "int4-prompt" and path == "int8") or int8_mm_fast()


def _default(role: str, available: list[str]) -> str:
    """The unmeasured path for small models: what is right on most CPUs, the first available otherwise (int4
    prompts: tinygemm, as a small matrix unpacks in less time than the dozen calls unpacking takes)."""
    preferred = {"decode": "onednn", "prefill": "linear" if cpu_has_native_bf16() else "upcast",
                 "int4-prompt": "tinygemm", "int4-decode": "tinygemm", "fp32": "linear"}  # fmt: skip
    return preferred.get(role) if preferred.get(role) in available else available[0]


def _stand_in(shape: tuple[int, int], dtype: torch.dtype) -> Callable[[], nn.Linear]:
    """A layer of `shape` (at most `PROBE_MAX_OUT` rows) to time kernels on, made once if measured at all:
    dense kernels ignore the values."""
    return functools.cache(
        lambda: _as_linear(torch.full((min(shape[0], PROBE_MAX_OUT), shape[1]), 0.02, dtype=dtype))
    )


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


def _decode_candidates(
    layer: Callable[[], nn.Linear], available: list[str], weights: list[torch.Tensor] | None = None
) -> dict[str, Callable]:
    """`F.linear` and the oneDNN paths `available` names, on the stand-in weight (bf16 decode; fp32), or on
    each of `weights` in turn, a loaded model's (kernels.py's `cache_sized`): a product read right after
    another matrix's, as in a pass over the model, runs as it does there. On the AVX2-only EPYC, the
    stand-in timed alone from memory ranked `F.linear` first for 3072 inputs, where over a whole 3B pass
    it was the slowest (a token's matrices 0.240 s against 0.217 in blocks of rows and 0.187 with one row
    at a time there)."""
    weights = weights or [layer().weight]
    paths = {"linear": F.linear}
    if "onednn" in available:
        paths["onednn"] = onednn.product
    if all(native.bf16_gemv_fits(w) for w in weights):
        paths |= {path: functools.partial(native.bf16_gemv, bias=None, stream=path == "stream")
                  for path in ("native", "stream") if path in available}  # fmt: skip
    made = {path: functools.partial(_each, product, weights) for path, product in paths.items()}
    if "packed" in available:  # a copy of each weight: the stand-in's only (`plan_kernels`)
        made["packed"] = functools.partial(_each, onednn.product, [onednn.pack(w) for w in weights])
    return made


def _each(product: Callable, weights: list[torch.Tensor], x: torch.Tensor) -> None:
    for weight in weights:
        product(x, weight)


def _prefill_candidates(layer: Callable[[], nn.Linear], available: list[str]) -> dict[str, Callable]:
    weight, scratch = layer().weight, Scratch()
    paths = {"linear": lambda x: F.linear(x, weight)}
    for path in available[1:]:
        paths[path] = lambda x, p=path: _upcast_product(x, scratch.fp32(weight), None, p).to(x.dtype)
    return paths


def _int8_candidates(layer: Callable[[], nn.Linear], available: list[str]) -> dict[str, Callable]:
    """The int8 layers over stand-in codes (not a quantized stand-in: the values do not change the time)."""
    weight = layer().weight
    q, scales = torch.ones(weight.shape, dtype=torch.int8), torch.full((weight.shape[0],), 0.01)
    made = {
        "dynamic": lambda: DynamicInt8Linear(q, scales, None),
        "weight-only": lambda: WeightOnlyInt8Linear(q, scales.to(weight.dtype), None),
        "vnni": lambda: VnniInt8Linear(q, scales, None, dtype=weight.dtype),
    }
    return {path: made[path]() for path in available}


def _int4_candidates(
    layer: Callable[[], nn.Linear], available: list[str], role: str = "int4-prompt"
) -> dict[str, Callable]:
    """An int4 layer per path of `role` over stand-in packed bytes and scales (the values do not change the
    time), sharing one scratch as a model's layers do."""
    n, k = layer().weight.shape
    dtype = layer().weight.dtype
    packed = torch.full((n, k // 2), 0x88, dtype=torch.uint8)
    scales_and_zeros = torch.full((k // INT4_GROUP, n, 2), 0.01, dtype=dtype)
    row_scales = scales_and_zeros[0, :, 0].float()  # multipliers of 1
    scratch, made = UnpackScratch(), {}
    for path in available:
        made[path] = Int4Linear(packed, scales_and_zeros, None, k, row_scales)
        if role == "int4-decode":
            made[path].use_decode_path(path)
        else:
            made[path].use_prompt_path(path, scratch)
    return made


CANDIDATES = {
    "decode": _decode_candidates,
    "prefill": _prefill_candidates,
    "fp32": _decode_candidates,  # the same two products on fp32 weights (never packed: bf16 only)
    "int8": _int8_candidates,
    "int4-prompt": _int4_candidates,
    "int4-decode": functools.partial(_int4_candidates, role="int4-decode"),
}


def prepare(model: nn.Module, quantize: str = "none", plan: Plan | None = None) -> str:
    """Swap the model's nn.Linear layers for the kernels `plan` names (planned here when None); returns a
    short description."""
    device, dtype = model.device, model.dtype
    if plan is None:
        shapes, weight_bytes = linear_shapes(model)
        plan = plan_kernels(shapes, quantize, device, dtype, weight_bytes=weight_bytes)
    name = str(dtype).removeprefix("torch.")
    if quantize != "none":
        return f"{quantize_linears(model, quantize, plan)}{use_prompt_paths(model, plan)}"
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        scratch = Scratch()
        _swap(model, lambda linear: _upcast(linear, scratch, plan))
        made = [m for m in model.modules() if isinstance(m, UpcastLinear)]
        decode, prompts = (
            " + ".join(sorted({getattr(m, role) for m in made})) for role in ("decode", "prefill")
        )
        return f"{name} weights (decode {decode}, prompts {prompts})"
    through_onednn = {shape for shape, paths in plan.items() if paths.get("fp32") == "onednn"}
    if device.type == "cpu" and dtype == torch.float32 and through_onednn:
        paths = _swap(
            model,
            lambda linear: OneDnnLinear(linear) if tuple(linear.weight.shape) in through_onednn else linear,
        )
        return f"{name} weights ({', '.join(sorted(paths))})"
    return name


def quantize_linears(model: nn.Module, quantize: str, plan: Plan) -> str:
    """Swap the model's nn.Linear layers for quantized ones; returns what they are ("int4 weights")."""
    kinds = _swap(model, lambda linear: quantized_linear(linear, quantize, plan))
    return f"{' + '.join(sorted(kinds))} weights"


def quantized_linear(linear: nn.Linear, quantize: str, plan: Plan) -> QuantizedLinear:
    """`linear` quantized by the scheme and the path the plan gives its shape; a shape tinygemm cannot pack
    (only in toy models) takes int8 weights under int4."""
    if quantize == "int4" and int4_fits(tuple(linear.weight.shape), linear.weight.device):
        return Int4Linear.from_linear(linear)
    if quantize == "int4":
        return WeightOnlyInt8Linear.from_linear(linear)
    path = plan.get(tuple(linear.weight.shape), {}).get("int8")
    if path == "dynamic":
        return DynamicInt8Linear.from_linear(linear)
    if path == "vnni":
        return VnniInt8Linear.from_linear(linear)
    if linear.weight.dtype == torch.float32:
        raise InputError("--quantize int8 on this device needs --dtype bf16 or fp16")
    return WeightOnlyInt8Linear.from_linear(linear)


def use_prompt_paths(model: nn.Module, plan: Plan) -> str:
    """Give each int4 layer the prompt and decode paths the plan names for its shape (tinygemm where it
    names none), all sharing one scratch; returns a note for the kernels' description ("" without int4
    layers on a CPU). Called on quantized and on cached layers alike, so both take the same paths."""
    scratch, prompts, decode = UnpackScratch(), set(), set()
    for module in model.modules():
        if isinstance(module, Int4Linear) and module.packed.device.type == "cpu":
            paths = plan.get((module.out_features, module.in_features), {})
            prompts.add(module.use_prompt_path(paths.get("int4-prompt", "tinygemm"), scratch))
            decode.add(module.use_decode_path(paths.get("int4-decode", "tinygemm")))
    if not prompts:
        return ""
    return f", int4 prompts {' + '.join(sorted(prompts))}, decode {' + '.join(sorted(decode))}"


def _upcast(linear: nn.Linear, scratch: Scratch, plan: Plan) -> UpcastLinear:
    paths = plan.get(tuple(linear.weight.shape), {})
    return UpcastLinear(linear, scratch, paths.get("decode", "linear"), paths.get("prefill", "upcast"))


def _swap(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> set[str]:
    """Replace each nn.Linear by `make(linear)`, one at a time so each original can be freed before the
    next is made; returns the kinds made (for the description)."""
    kinds = set()
    parents = [m for m in model.modules() if any(type(c) is nn.Linear for c in m.children())]
    parents.sort(key=lambda m: m is model)  # lm_head last: a tied head's copy frees nothing, the rest do
    for parent in parents:  # not the layers themselves: a list of them would keep every original alive
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                made = make(child)
                setattr(parent, name, made)
                kinds.add(getattr(made, "kind", "") or "linear")
                del child, made
    return kinds


KINDS: dict[str, type[QuantizedLinear]] = {
    cls.kind: cls for cls in (DynamicInt8Linear, WeightOnlyInt8Linear, VnniInt8Linear, Int4Linear)
}  # a packed-weight cache names each layer's kind (checkpoint/packed.py)
