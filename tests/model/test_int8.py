"""int8.py's `VnniInt8Linear` and native.py's int8 kernel: the kernel's rows equal the prompt path's bit for
bit (the same rounding of the rows, exact int32 sums, the same fp32 steps), so a row comes out the same
whichever path, and whatever rows come with it; close to the exact product; rebuilt from its stored state."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sc2cli
from sc2cli.model import native, native_int8
from sc2cli.model.int8 import INT8_PROMPT_ROWS, VnniInt8Linear, quantize_per_channel, rounded_product
from sc2cli.model.linear import KINDS, plan_kernels

from .test_native import assert_drafts_change_no_greedy_token, write_small_checkpoint

needs_kernel = pytest.mark.skipif(
    not native_int8.int8_vnni_works(torch.bfloat16),
    reason="no int8 kernel here (AVX-512 VNNI and a C compiler)",
)


def int8_layer(n, k, seed=0, bias=True, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            linear.bias.copy_(torch.randn(n, generator=g))
    return VnniInt8Linear.from_linear(linear.to(dtype))


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, INT8_PROMPT_ROWS - 1),
    shape=st.sampled_from([(16, 64), (48, 128), (32, 320)]),
    dtype=st.sampled_from([torch.bfloat16, torch.float32]),
    bias=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 300.0]),
    seed=st.integers(0, 2**16),
)
def test_the_kernel_gives_the_prompt_paths_rows_bit_for_bit(rows, shape, dtype, bias, scale, seed):
    layer = int8_layer(*shape, seed=seed % 7, bias=bias, dtype=dtype)
    assert layer.product is not None
    x = (torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)
    x[0, : seed % 5] = 0  # ties and zeros among the rounded values
    expected = rounded_product(x, layer.q, layer.scales, layer.bias, dtype)
    assert torch.equal(layer.product(x), expected)


@needs_kernel
def test_a_row_is_the_same_alone_with_drafts_or_in_a_prompt():
    layer = int8_layer(48, 128, seed=1)
    x = torch.randn(INT8_PROMPT_ROWS + 4, 128, generator=torch.Generator().manual_seed(3)).bfloat16()
    alone = torch.cat([layer(row[None]) for row in x])
    assert torch.equal(layer(x[:4]), alone[:4])  # a token and three drafts: the kernel
    assert torch.equal(layer(x), alone)  # a prompt's rows: torch._int_mm


def test_the_product_errs_only_by_rounding_rows_and_weights_to_int8():
    layer = int8_layer(64, 256, seed=2, dtype=torch.float32)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(4))
    exact = x.double() @ (layer.q.double() * layer.scales.double()[:, None]).t() + layer.bias.double()
    got = layer(x).double()
    assert (got - exact).norm() < 0.01 * exact.norm()  # the rows' rounding: ~1/254 of each row's largest
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    q, scales = quantize_per_channel(weight)
    assert torch.equal(q, layer.q) and torch.equal(scales, layer.scales)


def test_a_shape_the_kernel_does_not_take_and_a_row_of_zeros_take_the_prompt_path():
    layer = int8_layer(40, 128, seed=5)  # 40 rows: not whole blocks of 16
    assert layer.product is None
    assert native_int8.int8_vnni_fits(16, 65536) and not native_int8.int8_vnni_fits(
        16, 65536 + 64
    )  # int32 sums
    x = torch.zeros(2, 128).bfloat16()
    assert torch.equal(layer(x), layer.bias.expand(2, -1))


def test_rebuilt_from_its_stored_state_it_computes_the_same_without_summing_again(monkeypatch):
    layer = int8_layer(48, 128, seed=6)
    state = {k: v.clone() for k, v in layer.state().items()}
    assert set(state) == {"q", "scales", "row_sums", "bias"}
    assert torch.equal(state["row_sums"], layer.q.sum(1, dtype=torch.int32))
    again = KINDS["int8-vnni"].from_state(state, torch.bfloat16)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(7)).bfloat16()
    assert torch.equal(again(x), layer(x))
    assert layer.weight_bytes < 48 * 128 * 2 * 0.6


@needs_kernel
def test_the_self_check_fails_a_kernel_that_disagrees(monkeypatch):
    native_int8._int8_agrees.cache_clear()
    real = native_int8.Int8Product.__call__
    monkeypatch.setattr(
        native_int8.Int8Product, "__call__", lambda self, x, s=None: real(self, x, s) * 1.0001
    )
    try:
        assert not native_int8._int8_agrees()
    finally:
        native_int8._int8_agrees.cache_clear()


def test_the_plan_offers_the_kernel_only_where_it_runs(monkeypatch):
    import sc2cli.model.kernels as kernels

    measured = []
    monkeypatch.setattr(
        kernels,
        "fastest",
        lambda candidates, x, evict=None: (
            measured.append(sorted(candidates)) or ("vnni" if "vnni" in candidates else sorted(candidates)[0])
        ),
    )
    plan = plan_kernels([(128, 256)], "int8", torch.device("cpu"), torch.bfloat16, "auto", remember=False)
    works = native_int8.int8_vnni_works(torch.bfloat16)
    assert ("vnni" in measured[0]) == works
    assert plan[(128, 256)]["int8"] == ("vnni" if works else measured[0][0])
    assert not native_int8.int8_vnni_works(torch.float16)  # the kernel reads bf16 or fp32 rows only


@needs_kernel
def test_a_model_decodes_through_the_kernel_and_drafts_change_no_greedy_token(tmp_path, monkeypatch):
    folder = write_small_checkpoint(tmp_path / "m")
    monkeypatch.setenv("SC2_KERNELS", "int8=vnni")
    model = sc2cli.load_model(folder, dtype="bf16", device="cpu", attn="sdpa", quantize="int8")
    layers = [m for m in model.modules() if isinstance(m, VnniInt8Linear)]
    assert layers and all(m.product is not None for m in layers)  # 128, 256 and 208 rows: whole blocks
    assert "int8-vnni" in model.kernels
    assert_drafts_change_no_greedy_token(model, seed=8)
    reference = sc2cli.load_model(folder, dtype="fp32", device="cpu", attn="sdpa")
    ids = torch.randint(10, 200, (1, 20), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got, want = model(ids).float(), reference(ids)
    assert (got - want).norm() < 0.05 * want.norm()


def test_without_a_compiler_int8_keeps_pytorchs_paths(monkeypatch, tmp_path):
    """Nor do prompts use the row helpers."""
    for cached in (native._library, native_int8._int8_agrees, native_int8._rows_agree):
        cached.cache_clear()
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    try:
        assert not native_int8.int8_vnni_works(torch.bfloat16)
        plan = plan_kernels(
            [(128, 256)], "int8", torch.device("cpu"), torch.bfloat16, "int8=vnni", remember=False
        )
        assert plan[(128, 256)]["int8"] != "vnni"
        layer = int8_layer(
            48, 128, seed=9
        )  # made anyway (a cache written elsewhere): prompts' path for all rows
        assert layer.product is None
        x = torch.randn(2, 128, generator=torch.Generator().manual_seed(9)).bfloat16()
        assert torch.equal(layer(x), rounded_product(x, layer.q, layer.scales, layer.bias, torch.bfloat16))
    finally:
        for cached in (native._library, native_int8._int8_agrees, native_int8._rows_agree):
            cached.cache_clear()


needs_rows = pytest.mark.skipif(not native_int8.int8_rows_work(), reason="sc2's row helpers do not run here")


@needs_rows
@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 40),
    n=st.sampled_from([16, 40, 53]),
    dtype=st.sampled_from([torch.bfloat16, torch.float32]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_row_helpers_give_pytorchs_prompt_products_bit_for_bit(rows, n, dtype, bias, seed):
    g = torch.Generator().manual_seed(seed)
    q, scales = quantize_per_channel(torch.randn(n, 96, generator=g))
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    x = (torch.randn(rows, 96, generator=g) * 10).to(dtype)
    x[0, : seed % 9] = 0.5  # ties
    fast = rounded_product(x, q, scales, b, dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native_int8, "int8_rows_work", lambda: False)
        assert torch.equal(fast, rounded_product(x, q, scales, b, dtype))


@needs_rows
def test_a_row_holding_nan_comes_out_nan_and_leaves_the_others_alone():
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    x[1, 5] = float("nan")
    q, scales = quantize_per_channel(torch.randn(16, 64, generator=torch.Generator().manual_seed(2)))
    got = rounded_product(x, q, scales, None, torch.bfloat16)
    assert got[1].isnan().all() and not got[[0, 2]].isnan().any()
    assert torch.equal(got[[0, 2]], rounded_product(x[[0, 2]], q, scales, None, torch.bfloat16))


@needs_rows
def test_the_row_helpers_self_check_fails_helpers_that_disagree(monkeypatch):
    real = native_int8.scale_rows
    monkeypatch.setattr(native_int8, "scale_rows", lambda *a, **k: real(*a, **k).mul_(1.0001))
    native_int8._rows_agree.cache_clear()
    try:
        assert not native_int8._rows_agree()
    finally:
        native_int8._rows_agree.cache_clear()


def test_fbgemms_deprecation_warning_stays_quiet_when_another_threads_warning_block_ends_midway(tmp_path):
    """PyTorch warns that quantized tensors are deprecated; a `warnings.catch_warnings` block around the call
    was undone when another thread's block (begun before it) ended during it, and the warning reached the
    user's terminal. That interleaving, played out in one thread, in a fresh process."""
    script = tmp_path / "race.py"
    script.write_text(
        "import warnings\n"
        "import torch\n"
        "from sc2cli.model import int8\n"
        "other = warnings.catch_warnings()\n"
        "other.__enter__()  # another thread's block, begun first\n"
        "real = torch._make_per_channel_quantized_tensor\n"
        "def racing(*args):\n"
        "    other.__exit__(None, None, None)  # ... ends while the layer is made\n"
        "    return real(*args)\n"
        "torch._make_per_channel_quantized_tensor = racing\n"
        "int8.DynamicInt8Linear(torch.ones(16, 16, dtype=torch.int8), torch.full((16,), 0.01), None)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "deprecated" not in done.stderr
