"""The kernels `prepare` picks: every path, pinned, against an fp32 reference; int8/int4 close to unquantized."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sc2cli
from sc2cli.checkpoint.load import load_checkpoint
from sc2cli.errors import InputError
from sc2cli.model import native, native_int8, onednn
from sc2cli.model.int8 import DynamicInt8Linear, VnniInt8Linear, WeightOnlyInt8Linear, quantize_per_channel
from sc2cli.model.linear import (
    KINDS,
    OneDnnLinear,
    Scratch,
    UpcastLinear,
    dynamic_int8_available,
    plan_kernels,
    prepare,
)
from sc2cli.model.quant import Int4Linear, QuantizedLinear, quantize_int4

from ..checkpoints import write_tiny_model

DECODE_PATHS = ["linear", pytest.param("onednn", marks=pytest.mark.skipif(
    onednn.inner_product() is None, reason="this build or CPU has no oneDNN bf16 inner product")),
    pytest.param("packed", marks=pytest.mark.skipif(
    not onednn.packed_works(), reason="this build or CPU has no oneDNN inner product on packed bf16 weights"))]  # fmt: skip
no_fbgemm = pytest.mark.skipif(not dynamic_int8_available(torch.device("cpu")), reason="no fbgemm")


def layer(dtype=torch.bfloat16, out=96, inp=64) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(inp, out).to(dtype)
    with torch.no_grad():
        linear.bias.normal_()
    return linear


def fp32_reference(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), linear.weight.float(), linear.bias.float())


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_upcast_prompts_equal_bf16_arithmetic_and_keep_one_copy_of_the_weight():
    linear = layer()
    fast = UpcastLinear(linear, Scratch(), decode="linear", prefill="upcast")
    prompt = torch.randn(2, 16, 64).bfloat16()
    assert torch.equal(fast(prompt), fp32_reference(linear, prompt).bfloat16())  # fp32 sums, rounded once
    assert fast.weight is linear.weight


def test_upcast_prompts_through_onednn_are_fp32_products_rounded_once():
    if not onednn.fp32_works():
        pytest.skip("oneDNN's fp32 inner product does not run in this build")
    linear = layer(out=300, inp=64)
    fast = UpcastLinear(linear, Scratch(), decode="linear", prefill="upcast-onednn")
    prompt = torch.randn(2, 16, 64).bfloat16()
    want = fp32_reference(linear, prompt)
    got = fast(prompt)
    assert got.dtype == torch.bfloat16
    # the same fp32 sums up to their order, then one rounding: at most one bf16 step apart, mostly equal
    torch.testing.assert_close(got.float(), want, atol=0, rtol=2**-7)
    assert (got == want.bfloat16()).float().mean() > 0.95


@pytest.mark.parametrize("decode", DECODE_PATHS)
@pytest.mark.parametrize("prefill", ["linear", "upcast", "upcast-onednn"])
@pytest.mark.parametrize("shape", [(1, 1, 64), (3, 64), (2, 16, 64)], ids=["token", "few-rows", "prompt"])
def test_every_bf16_path_matches_fp32(decode, prefill, shape):
    linear = layer(out=300, inp=64)
    if prefill == "upcast-onednn" and not onednn.fp32_works():
        pytest.skip("oneDNN's fp32 inner product does not run in this build")
    if decode == "packed" and prefill != "linear":  # the packed layout replaces the weight upcasting reads
        with pytest.raises(InputError):
            UpcastLinear(linear, Scratch(), decode=decode, prefill=prefill)
        return
    fast = UpcastLinear(linear, Scratch(), decode=decode, prefill=prefill)
    assert (fast.inner_product is not None) == (decode in ("onednn", "packed"))
    x = torch.randn(shape).bfloat16()
    out = fast(x)
    assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], 300)
    torch.testing.assert_close(out.float(), fp32_reference(linear, x), atol=0.05, rtol=1e-2)


def test_fp16_weights_decode_through_the_plain_product():
    half = UpcastLinear(layer(torch.float16), Scratch(), decode="linear", prefill="linear")
    token = torch.randn(1, 1, 64).half()
    torch.testing.assert_close(half(token)[0, 0], half.weight @ token[0, 0] + half.bias, atol=2e-2, rtol=1e-2)


def test_scratch_is_reused():
    scratch = Scratch()
    a = scratch.fp32(torch.ones(8, 8, dtype=torch.bfloat16))
    b = scratch.fp32(torch.ones(4, 4, dtype=torch.bfloat16))
    assert a.data_ptr() == b.data_ptr()


def test_per_channel_quantization_round_trips_in_chunks(monkeypatch):
    import sc2cli.model.quant as quant

    monkeypatch.setattr(quant, "block_rows", lambda k: 7)  # several blocks, the last one short
    w = torch.randn(32, 64)
    q, scales = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scales[:, None]) - w).abs().max() <= scales.max() / 2 + 1e-6


def restore_int4(codes, sz, group):
    scale, zero = (sz[..., i].t().repeat_interleave(group, 1) for i in (0, 1))  # (N, K) each
    return (codes - 8) * scale + zero


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_scales_are_whole_multiples_of_a_4_bit_row_scale(monkeypatch, group):
    """What the int8 prompt path relies on: every scale is its row's scale times 1..16, exactly, in bf16 and
    fp16 too; and each group's error is at most that of a scale covering its whole range (half a step)."""
    import sc2cli.model.quant as quant

    monkeypatch.setattr(quant, "block_rows", lambda k: 5)
    w = torch.randn(24, 256) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different sizes
    w[3, :group] *= 20  # one group far wider than the rest of its row
    codes, sz, row_scales = quantize_int4(w, group)  # sz (K/group, N, 2)
    assert codes.min() >= 0 and codes.max() <= 15 and sz.shape == (256 // group, 24, 2)
    multipliers = sz[..., 0] / row_scales
    assert (
        torch.equal(multipliers, multipliers.round()) and multipliers.min() >= 1 and multipliers.max() <= 16
    )
    mantissa, _ = torch.frexp(row_scales)
    assert torch.equal(mantissa * 16, (mantissa * 16).round())  # 4 significant bits
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(sz[..., 0].to(dtype).float(), sz[..., 0])
    groups = w.view(24, -1, group)
    covering = row_scales[:, None] * ((groups.amax(-1) - groups.amin(-1)) / 15 / row_scales[:, None]).ceil()
    error = (restore_int4(codes, sz, group) - w).view(24, -1, group).square().mean(-1)  # (N, G)
    assert (error <= (covering / 2).square() * 1.0001).all()


def test_int4_error_is_no_worse_than_plain_min_max_groups():
    """The whole-multiple scales cost nothing measurable against one free scale per group (min-max)."""
    w = torch.randn(512, 3072, generator=torch.Generator().manual_seed(0))
    codes, sz, _ = quantize_int4(w)
    groups = w.view(512, -1, 64)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (high - low) / 15
    plain = ((groups - low) / scale).round() * scale + low
    assert (restore_int4(codes, sz, 64) - w).square().mean() <= (plain.view(512, -1) - w).square().mean()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_int4_product_is_the_product_of_its_dequantized_weight(dtype, rows):
    linear = layer(dtype, 256, 512)
    fast = Int4Linear.from_linear(linear)
    codes, sz, _ = quantize_int4(linear.weight)
    dequantized = restore_int4(codes, sz, fast.group)
    x = torch.randn(2, rows, 512).to(dtype)
    out = fast(x)
    assert out.dtype == dtype and out.shape == (2, rows, 256)
    expected = F.linear(x.float(), dequantized.to(dtype).float(), linear.bias.float())
    assert relative_error(out, expected) < 0.01
    assert relative_error(out, fp32_reference(linear, x)) < 0.15  # 4 bits: ~1/15 of a group's range


@no_fbgemm
def test_dynamic_int8_is_close_to_fp32():
    linear = layer(torch.float32, 256, 512)
    x = torch.randn(3, 512)
    assert relative_error(DynamicInt8Linear.from_linear(linear)(x), fp32_reference(linear, x)) < 0.02


def test_weight_only_int8_is_close_to_fp32():
    linear = layer(torch.bfloat16, 256, 512)
    x = torch.randn(3, 512).bfloat16()
    assert relative_error(WeightOnlyInt8Linear.from_linear(linear)(x), fp32_reference(linear, x)) < 0.02


@pytest.mark.parametrize(
    "kind", [pytest.param("int8-dynamic", marks=no_fbgemm), "int8-weight-only", "int8-vnni", "int4"]
)
def test_a_quantized_layer_rebuilt_from_its_state_computes_the_same(kind):
    linear = layer(torch.bfloat16, 128, 256)
    made = KINDS[kind].from_linear(linear)
    again = KINDS[kind].from_state({k: v.clone() for k, v in made.state().items()}, torch.bfloat16)
    x = torch.randn(5, 256).bfloat16()
    assert torch.equal(made(x), again(x))
    assert made.weight_bytes < linear.weight.nbytes * (0.6 if kind.startswith("int8") else 0.35)


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantizing_keeps_embeddings_and_norms_in_full_precision(tmp_path, quantize):
    folder = write_tiny_model(tmp_path / "m", seed=2)
    model = load_checkpoint(folder, quantize=quantize, dtype="bf16", device="cpu")
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16 == model.model.norm.weight.dtype
    expected = Int4Linear if quantize == "int4" else (DynamicInt8Linear, WeightOnlyInt8Linear, VnniInt8Linear)
    assert isinstance(model.model.layers[0].mlp.c_fc, expected)
    assert isinstance(model.lm_head, QuantizedLinear)  # its own copy: a vocabulary of 300 rows takes int8
    reference = sc2cli.load_model(folder, dtype="fp32", device="cpu")
    ids = torch.randint(0, 100, (1, 24))
    with torch.no_grad():
        a, b = model(ids).float(), reference(ids)
    assert relative_error(a, b) < (0.05 if quantize == "int8" else 0.3)  # random weights: ~10% per int4 layer


no_int8_kernel = pytest.mark.skipif(
    not native_int8.int8_vnni_works(torch.bfloat16), reason="no int8 kernel here"
)


@pytest.mark.parametrize(
    "path",
    [pytest.param("dynamic", marks=no_fbgemm), "weight-only", pytest.param("vnni", marks=no_int8_kernel)],
)
def test_forced_int8_path_is_the_one_used(tmp_path, monkeypatch, path):
    folder = write_tiny_model(tmp_path / "m", seed=2)
    monkeypatch.setenv("SC2_KERNELS", f"int8={path}")
    model = sc2cli.load_model(folder, quantize="int8", dtype="bf16", device="cpu")
    assert {type(m) for m in model.modules()} & set(KINDS.values()) == {KINDS[f"int8-{path}"]}


def test_plan_follows_forced_paths_and_measures_only_the_rest(monkeypatch):
    import sc2cli.model.kernels as kernels

    measured = []
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: measured.append(sorted(candidates)) or "linear"
    )
    plan = plan_kernels(
        [(96, 64)], "none", torch.device("cpu"), torch.bfloat16, "prefill=upcast", remember=False
    )
    assert plan[(96, 64)]["prefill"] == "upcast"
    assert plan[(96, 64)]["decode"] == "linear"
    candidates = ["linear"] + [p for p in ("native", "stream") if native.bf16_gemv_works(p == "stream")]
    candidates += ["onednn"] if onednn.inner_product() else []
    assert measured == ([candidates] if len(candidates) > 1 else [])


def test_choices_made_under_capped_instruction_sets_are_remembered_apart(monkeypatch, tmp_path):
    from sc2cli.model.kernels import Choices

    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    native = Choices(tmp_path / "kernels.json")
    native.put("decode", (96, 64), "packed")
    native.save()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    capped = Choices(tmp_path / "kernels.json")
    assert capped.key != native.key and capped.get("decode", (96, 64)) is None
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert Choices(tmp_path / "kernels.json").get("decode", (96, 64)) == "packed"


def test_small_models_are_not_measured(monkeypatch):
    import sc2cli.model.kernels as kernels

    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: pytest.fail("measured a tiny model")
    )
    plan = plan_kernels([(96, 64)], "none", torch.device("cpu"), torch.bfloat16, "auto", weight_bytes=12288)
    assert set(plan[(96, 64)]) == {"decode", "prefill"}


def test_prepare_builds_what_the_plan_says():
    model = nn.Sequential(nn.Linear(64, 96)).bfloat16()
    model.device, model.dtype = torch.device("cpu"), torch.bfloat16  # what prepare reads of a Starcoder2
    description = prepare(model, "none", {(96, 64): {"decode": "linear", "prefill": "linear"}})
    assert isinstance(model[0], UpcastLinear) and (model[0].decode, model[0].prefill) == ("linear", "linear")
    assert "decode linear, prompts linear" in description


def test_unknown_quantization_and_kernel_choices_are_refused():
    with pytest.raises(InputError, match="unknown quantization"):
        plan_kernels([], "int3", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(InputError, match="unknown kernel choice 'decode=fast'"):
        plan_kernels([], "none", torch.device("cpu"), torch.bfloat16, "decode=fast")


def test_bytes_per_token_count_what_each_kernel_reads(tmp_path):
    from sc2cli.bench.models import weight_bytes_per_token

    folder = write_tiny_model(tmp_path / "m", seed=2)
    read = {q: weight_bytes_per_token(load_checkpoint(folder, quantize=q, dtype="bf16", device="cpu"))
            for q in ("none", "int8", "int4")}  # fmt: skip
    int4 = load_checkpoint(folder, quantize="int4", dtype="bf16", device="cpu")
    packed = sum(
        t.nbytes for m in int4.modules() if isinstance(m, QuantizedLinear) for t in m.state().values()
    )
    assert read["int4"] == packed
    assert read["int4"] < read["int8"] < 0.6 * read["none"]


def test_the_cpu_default_dtype_is_bf16_and_fp32_stays_exact_by_name(monkeypatch):
    import sc2cli.model.device as device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)  # the default no longer depends on it
    cpu = torch.device("cpu")
    assert device.resolve_dtype(None, cpu) == device.resolve_dtype("auto", cpu) == torch.bfloat16
    assert device.resolve_dtype("fp32", cpu) == torch.float32


@pytest.mark.skipif(
    not onednn.packed_works(), reason="this build or CPU has no oneDNN inner product on packed bf16 weights"
)
def test_a_model_on_packed_weights_computes_what_it_does_on_dense_ones(tmp_path, monkeypatch):
    """The packed path forced for the whole model: the same logits as F.linear on the dense weights, for a
    prompt and a token; its layers hold the packed weight only."""
    folder = write_tiny_model(tmp_path / "m")
    monkeypatch.setenv("SC2_KERNELS", "decode=linear,prefill=linear")
    dense = load_checkpoint(folder, dtype="bf16", device="cpu")
    monkeypatch.setenv("SC2_KERNELS", "decode=packed,prefill=linear")
    packed = load_checkpoint(folder, dtype="bf16", device="cpu")
    layers = [m for m in packed.modules() if isinstance(m, UpcastLinear)]
    assert layers and all(m.decode == "packed" and m.weight.is_mkldnn for m in layers)
    ids = torch.tensor([[5, 9, 17, 33, 2, 40, 41, 42, 7, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).float(), dense(ids).float(), atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(
            packed(ids[:, :1]).float(), dense(ids[:, :1]).float(), atol=2e-2, rtol=1e-2
        )


@pytest.mark.skipif(not onednn.fp32_works(), reason="oneDNN's fp32 inner product does not run in this build")
def test_an_fp32_model_through_onednn_computes_what_f_linear_does_and_keeps_its_parameters(
    tmp_path, monkeypatch
):
    """fp32=onednn forced for the whole model: the same logits as F.linear to fp32 rounding, for a prompt
    and a token; the layers keep the parameters (and names) they had, so the tied head stays tied."""
    folder = write_tiny_model(tmp_path / "m")
    monkeypatch.setenv("SC2_KERNELS", "fp32=linear")
    plain = load_checkpoint(folder, dtype="fp32", device="cpu")
    assert not any(isinstance(m, OneDnnLinear) for m in plain.modules())
    monkeypatch.setenv("SC2_KERNELS", "fp32=onednn")
    fast = load_checkpoint(folder, dtype="fp32", device="cpu")
    layers = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert layers and all(type(m) is OneDnnLinear for m in layers) and "onednn" in fast.kernels
    assert fast.lm_head.weight is fast.model.embed_tokens.weight
    assert fast.state_dict().keys() == plain.state_dict().keys()
    ids = torch.tensor([[5, 9, 17, 33, 2, 40, 41, 42, 7, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids), plain(ids), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast(ids[:, :1]), plain(ids[:, :1]), atol=1e-4, rtol=1e-4)


def test_fp32_weights_are_measured_between_blas_and_onednn(monkeypatch):
    import sc2cli.model.kernels as kernels

    measured = []
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: measured.append(sorted(candidates)) or "linear"
    )
    plan = plan_kernels([(96, 64)], "none", torch.device("cpu"), torch.float32, "auto", remember=False)
    assert plan == {(96, 64): {"fp32": "linear"}}
    assert measured == ([["linear", "onednn"]] if onednn.fp32_works() else [])


def test_measure_sets_remembered_choices_aside_and_replaces_them(monkeypatch, tmp_path):
    """A probe run while the machine was busy can remember a slower path; SC2_KERNELS=measure measures
    every choice the load needs again, remembers the new winner and keeps the other remembered ones."""
    import sc2cli.model.kernels as kernels
    from sc2cli.model.kernels import Choices

    monkeypatch.setenv("SC2_CACHE_DIR", str(tmp_path))
    old = Choices()
    old.put("prefill", (96, 64), "linear")
    old.put("decode", (96, 64), "linear")
    old.put("decode", (512, 64), "linear")  # a shape this load does not need
    old.save()
    timed: list[list[str]] = []

    def fake_fastest(candidates, x, evict=None):
        timed.append(sorted(candidates))
        return sorted(candidates)[-1]  # another winner than the remembered one

    monkeypatch.setattr(kernels, "fastest", fake_fastest)
    monkeypatch.delenv("SC2_KERNELS", raising=False)
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    assert plan_kernels([(96, 64)], "none", cpu, bf16)[(96, 64)]["decode"] == "linear"
    assert timed == []  # remembered: nothing measured

    monkeypatch.setenv("SC2_KERNELS", "measure")
    plan = plan_kernels([(96, 64)], "none", cpu, bf16)
    assert timed and plan[(96, 64)]["prefill"] != "linear"  # measured again, a new winner
    again = Choices()
    assert again.get("prefill", (96, 64)) == plan[(96, 64)]["prefill"]
    assert again.get("decode", (512, 64)) == "linear"  # the other shapes' choices stay
    monkeypatch.setenv("SC2_KERNELS", "auto")
    timed.clear()
    assert plan_kernels([(96, 64)], "none", cpu, bf16) == plan and timed == []


def test_a_tokens_products_are_timed_from_memory_and_a_prompts_from_cache(monkeypatch):
    """Decode roles read memory the cache cannot hold before each timed call (a pass over the model reads
    each weight from memory); prompt roles do not (their weights are reused across rows)."""
    import sc2cli.model.kernels as kernels

    events = []
    candidates = {name: lambda x, n=name: events.append(n) for name in ("a", "b")}
    kernels.fastest(candidates, torch.zeros(1, 4), reps=2, evict=lambda: events.append("read"))
    assert (
        events == ["a", "b"] + ["read", "a", "read", "b"] * 2
    )  # warm-ups, then each timed call after a read
    events.clear()
    kernels.fastest(candidates, torch.zeros(1, 4), reps=2)
    assert events == ["a", "b"] * 3
    events.clear()
    kernels.fastest(candidates, torch.zeros(1, 4), evict=lambda: None)  # cold: more repetitions
    assert events == ["a", "b"] * (1 + kernels.COLD_REPS)
    events.clear()
    kernels.fastest(candidates, torch.zeros(1, 4))
    assert events == ["a", "b"] * (1 + kernels.PROBE_REPS)
    evicts = []
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: evicts.append(evict) or "linear"
    )
    for role in ("decode", "prefill"):
        assert (
            kernels.choose(role, (96, 64), ["linear", "upcast"], dict, torch.bfloat16, {}, None) == "linear"
        )
    assert callable(evicts[0]) and evicts[1] is None  # decode: a buffer of its own, when given none
    mine = lambda: None  # noqa: E731
    kernels.choose("decode", (96, 64), ["linear", "upcast"], dict, torch.bfloat16, {}, None, evict=mine)
    assert evicts[2] is mine
    assert set(kernels.COLD_ROLES) == {"decode", "int8", "int4-decode"}


def test_the_cold_probes_read_enough_memory_and_a_loaded_models_weights_serve(monkeypatch):
    import sc2cli.model.kernels as kernels

    monkeypatch.setattr(kernels, "last_level_cache_bytes", lambda: 1 << 10)
    read = kernels.cache_reader()
    assert float(read()) == kernels.EVICT_MULTIPLE * (1 << 10) / 4  # ones, all of them read
    sums = []
    tensors = [torch.ones(256) * i for i in range(1, 6)]  # 1 KB each: the first two cover 2 KB
    for t in tensors:
        t.sum = lambda t=t: sums.append(t[0].item())
    kernels.tensors_reader(tensors)()
    assert sums == [1, 2]


def test_a_loaded_models_decode_products_are_timed_over_its_own_weights_in_turn(monkeypatch):
    """Each timed call runs a candidate over the model's weights of the shape one after another, up to twice
    the cache (the stand-in timed alone ranks the kernels as no pass over the model does)."""
    import sc2cli.model.kernels as kernels

    weights = [torch.randn(96, 64).bfloat16() for _ in range(4)]
    monkeypatch.setattr(kernels, "last_level_cache_bytes", lambda: 96 * 64 * 2)  # two weights: twice it
    seen, timed = [], {}
    monkeypatch.setattr(F, "linear", lambda x, w: seen.append(w))
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: timed.update(candidates) or "linear"
    )
    shapes = [(96, 64)]
    plan_kernels(shapes, "none", torch.device("cpu"), torch.bfloat16, "prefill=linear", remember=False,
                 weights=lambda shape: weights if shape == (96, 64) else [])  # fmt: skip
    timed["linear"](torch.zeros(1, 64).bfloat16())
    assert [id(w) for w in seen] == [id(w) for w in weights[:2]]
    seen.clear()
    plan_kernels(shapes, "none", torch.device("cpu"), torch.bfloat16, "prefill=linear", remember=False)
    timed["linear"](torch.zeros(1, 64).bfloat16())
    assert (
        len(seen) == 1 and seen[0].shape == (96, 64) and not any(seen[0] is w for w in weights)
    )  # a stand-in
