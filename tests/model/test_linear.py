"""The kernels `prepare` picks: same numbers as plain layers (fp32 upcast), int8 close to unquantized."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sc2cli
from sc2cli.errors import InputError
from sc2cli.model import linear as kernels
from sc2cli.model.linear import (
    DynamicInt8Linear,
    Scratch,
    UpcastLinear,
    WeightOnlyInt8Linear,
    _onednn_inner_product,
    dynamic_int8_available,
    prepare,
    quantize_per_channel,
)

from ..checkpoints import write_tiny_model


def layer(dtype=torch.bfloat16, out=96, inp=64) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(inp, out).to(dtype)
    with torch.no_grad():
        linear.bias.normal_()
    return linear


def test_upcast_equals_bf16_arithmetic_for_prompts_and_stays_compact_for_decode():
    linear = layer()
    fast = UpcastLinear(linear, Scratch())
    prompt = torch.randn(2, 16, 64).bfloat16()
    expected = F.linear(prompt.float(), linear.weight.float(), linear.bias.float()).bfloat16()
    assert torch.equal(fast(prompt), expected)  # fp32 accumulation, rounded once to bf16
    assert fast(prompt).dtype == torch.bfloat16
    token = torch.randn(1, 1, 64).bfloat16()
    torch.testing.assert_close(fast(token), linear(token), atol=1e-2, rtol=1e-2)
    assert fast.weight is linear.weight  # no second copy of the weights


@pytest.mark.skipif(
    _onednn_inner_product() is None, reason="this build or CPU has no oneDNN bf16 inner product"
)
@pytest.mark.parametrize("shape", [(1, 1, 64), (1, 64), (3, 64)], ids=["token", "row", "few-rows"])
def test_bf16_decode_runs_on_onednn_with_the_same_numbers(shape):
    linear = layer(out=300, inp=64)
    fast = UpcastLinear(linear, Scratch())
    assert fast.inner_product is not None
    x = torch.randn(shape).bfloat16()
    expected = F.linear(x.float(), linear.weight.float(), linear.bias.float())
    out = fast(x)
    assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], 300)
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=1e-2)  # bf16 rounding of the result
    torch.testing.assert_close(out, linear(x), atol=0.05, rtol=1e-2)


def test_bf16_decode_falls_back_to_the_plain_product_where_onednn_cannot(monkeypatch):
    monkeypatch.setattr(kernels, "_onednn_inner_product", lambda: None)
    fast = UpcastLinear(layer(), Scratch())
    token = torch.randn(1, 1, 64).bfloat16()
    assert fast.inner_product is None
    assert torch.equal(fast(token), F.linear(token, fast.weight, fast.bias))


def test_fp16_and_native_bf16_prompts_use_the_plain_product():
    half = UpcastLinear(layer(torch.float16), Scratch())
    assert half.inner_product is None  # fp16 stays on F.linear: oneDNN refuses it without AVX-NE-CONVERT
    token = torch.randn(1, 1, 64).half()
    torch.testing.assert_close(half(token)[0, 0], half.weight @ token[0, 0] + half.bias, atol=2e-2, rtol=1e-2)
    native = UpcastLinear(layer(), None)
    prompt = torch.randn(2, 16, 64).bfloat16()
    assert torch.equal(native(prompt), F.linear(prompt, native.weight, native.bias))


def test_scratch_is_reused():
    scratch = Scratch()
    a = scratch.fp32(torch.ones(8, 8, dtype=torch.bfloat16))
    b = scratch.fp32(torch.ones(4, 4, dtype=torch.bfloat16))
    assert a.data_ptr() == b.data_ptr()


def test_per_channel_quantization_round_trips():
    w = torch.randn(32, 64)
    q, scales = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scales[:, None]) - w).abs().max() <= scales.max() / 2 + 1e-6


@pytest.mark.skipif(not dynamic_int8_available(torch.device("cpu")), reason="fbgemm is not available")
def test_dynamic_int8_is_close():
    linear = layer(torch.float32, 256, 512)
    x = torch.randn(3, 512)
    got, want = DynamicInt8Linear(linear)(x), linear(x)
    assert (got - want).norm() / want.norm() < 0.02


def test_weight_only_int8_is_close():
    linear = layer(torch.bfloat16, 256, 512)
    x = torch.randn(3, 512).bfloat16()
    got, want = WeightOnlyInt8Linear(linear)(x).float(), linear(x).float()
    assert (got - want).norm() / want.norm() < 0.02


@pytest.mark.parametrize("fbgemm", [True, False], ids=["fbgemm", "weight-only"])
def test_prepare_int8_keeps_embeddings_and_norms_in_full_precision(tmp_path, monkeypatch, fbgemm):
    """Each int8 path forced (fbgemm where x86 has it, weight-only elsewhere), from bf16 weights."""
    if fbgemm and not dynamic_int8_available(torch.device("cpu")):
        pytest.skip("fbgemm is not available in this build of PyTorch")
    monkeypatch.setattr(kernels, "dynamic_int8_available", lambda device: fbgemm)
    folder = write_tiny_model(tmp_path / "m", seed=2)
    model = sc2cli.load_model(folder, quantize="int8", dtype="bf16", device="cpu")
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds and (DynamicInt8Linear if fbgemm else WeightOnlyInt8Linear) in kinds
    full = torch.float32 if fbgemm else torch.bfloat16  # fbgemm takes fp32 activations: the rest follows
    assert model.model.embed_tokens.weight.dtype == model.model.norm.weight.dtype == full
    reference = sc2cli.load_model(folder, dtype="fp32", device="cpu")
    ids = torch.randint(0, 100, (1, 24))
    with torch.no_grad():
        a, b = model(ids).float(), reference(ids)
    assert (a - b).norm() / b.norm() < 0.05


@pytest.mark.parametrize("native", [False, True], ids=["emulated-bf16", "native-bf16"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prepare_upcasts_prompts_only_without_native_bf16(monkeypatch, native, dtype):
    """Both branches, whatever this CPU has: prompts go through the fp32 scratch only where bf16 is emulated."""
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: native)
    model = nn.Sequential(layer(dtype), layer(dtype, out=64, inp=96))
    model.device, model.dtype = torch.device("cpu"), dtype
    described = prepare(model)
    upcast = [m for m in model.modules() if isinstance(m, UpcastLinear)]
    assert len(upcast) == 2 and not any(type(m) is nn.Linear for m in model.modules())
    assert all((m.scratch is None) == native for m in upcast)
    assert upcast[0].scratch is upcast[1].scratch  # one scratch buffer for every layer
    assert ("prompts multiplied in fp32" in described) != native
    prompt = torch.randn(2, 16, 64).to(dtype)
    plain = F.linear(F.linear(prompt, upcast[0].weight, upcast[0].bias), upcast[1].weight, upcast[1].bias)
    torch.testing.assert_close(model(prompt).float(), plain.float(), atol=0.1, rtol=0.02)


def test_prepare_leaves_fp32_as_it_is(monkeypatch):
    for native in (False, True):
        monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda native=native: native)
        model = nn.Sequential(layer(torch.float32))
        model.device, model.dtype = torch.device("cpu"), torch.float32
        assert prepare(model) == "float32" and type(model[0]) is nn.Linear


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown quantization"):
        prepare(nn.Module(), "int3")
