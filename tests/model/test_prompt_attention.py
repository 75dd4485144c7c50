"""A prompt's rows through sc2's attention kernel (`prompt="native"`, role `prompt-attention`): each row
bit for bit what that token gets alone, over a fresh prompt, after a cache and under a sliding window,
however many calls the rows are split into; within bf16 rounding of the exact maths; calls the kernel
cannot take left to the backend; offered only where it runs; a model prefilling through it."""

from __future__ import annotations

import pytest
import torch

import sc2cli
from sc2cli.model import attention, native
from sc2cli.model.attention import (
    FEW_ROWS,
    attention_function,
    first_visible_key,
    sdpa_attention,
    visibility,
)
from sc2cli.model.attention_probe import plan_prompt_attention

from .test_native import write_small_checkpoint
from .test_native_attention import exact, heads_config, needs_kernel


def prompt_call(q_start: int, length: int, window: int | None, heads: int = 4, n_kv: int = 2, seed: int = 0):
    """q for `length` new tokens at `q_start`, the cache's K/V slices the model would pass, and the cache."""
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, 1, n_kv, q_start + length + 5, 64, generator=g).bfloat16()
    q = torch.randn(1, heads, length, 64, generator=g).bfloat16()
    k_start = first_visible_key(q_start, window)
    vis = visibility(q_start, length, k_start, window, q.device)
    return (
        q,
        cache[0, :, :, k_start : q_start + length],
        cache[1, :, :, k_start : q_start + length],
        vis,
        cache,
    )


@needs_kernel
@pytest.mark.parametrize(("q_start", "length", "window"), [(0, 40, None), (25, 30, None), (20, 33, 16)])
@pytest.mark.parametrize("split", [False, True], ids=["one-call", "many-calls"])
def test_each_row_of_a_prompt_is_bit_for_bit_that_token_alone(q_start, length, window, split, monkeypatch):
    if split:  # a few rows per call of the kernel
        monkeypatch.setattr(attention, "NATIVE_SCORES", 4 * 3 * (q_start + length))
    q, k, v, vis, cache = prompt_call(q_start, length, window)
    assert length > FEW_ROWS
    attend = attention_function("sdpa", "native", "native")
    together = attend(q, k, v, vis)
    for i in range(length):
        position = q_start + i
        first = first_visible_key(position, window)
        keys = slice(first, position + 1)
        alone = attend(q[:, :, i : i + 1], cache[0, :, :, keys], cache[1, :, :, keys],
                       visibility(position, 1, first, window, q.device))  # fmt: skip
        assert torch.equal(together[:, :, i : i + 1], alone), i
        want = exact(q[:, :, i : i + 1], cache[0, :, :, keys], cache[1, :, :, keys])
        assert ((alone.double() - want).abs() <= 2**-8 * want.abs() + 1e-3).all()


@needs_kernel
def test_calls_the_kernel_cannot_take_go_to_the_backend(monkeypatch):
    q, k, v, vis, _ = prompt_call(0, 20, None)
    calls = []
    monkeypatch.setattr(native, "attention_one", lambda *a: calls.append(1))
    attend = attention_function("sdpa", "native", "native")
    two = torch.cat([q, q]), torch.cat([k, k]), torch.cat([v, v])  # two sequences
    assert torch.equal(attend(*two, vis), sdpa_attention(*two, vis))
    as_fp32 = q.float(), k.float(), v.float()
    assert torch.equal(attend(*as_fp32, vis), sdpa_attention(*as_fp32, vis))
    assert calls == []


def test_a_fused_prompt_path_leaves_prompts_to_the_backend(monkeypatch):
    q, k, v, vis, _ = prompt_call(0, 20, None)
    monkeypatch.setattr(native, "attention_one", lambda *a: pytest.fail("the kernel ran"))
    assert torch.equal(attention_function("sdpa", "grouped")(q, k, v, vis), sdpa_attention(q, k, v, vis))


def test_the_plan_offers_the_kernel_for_prompts_only_where_it_runs(monkeypatch):
    import sc2cli.model.kernels as kernels

    config = heads_config(128, 4, 2)
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    works = native.attention_one_works()
    measured = []
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: measured.append(sorted(candidates)) or "fused"
    )
    assert plan_prompt_attention(config, "sdpa", cpu, bf16, "measure") == "fused"
    assert measured == ([["fused", "native"]] if works else [])
    forced = plan_prompt_attention(config, "sdpa", cpu, bf16, "prompt-attention=native", measure=False)
    assert (forced == "native") == works
    assert plan_prompt_attention(config, "sdpa", cpu, torch.float32, "prompt-attention=native") == "fused"
    assert plan_prompt_attention(config, "eager", cpu, bf16, "prompt-attention=native") == "fused"
    monkeypatch.setattr(native, "attention_one_works", lambda: pytest.fail("compiled for a tiny model"))
    assert plan_prompt_attention(heads_config(96, 3, 1), "sdpa", cpu, bf16, measure=False) == "fused"


@needs_kernel
def test_a_model_prefills_through_the_kernel(tmp_path, monkeypatch):
    folder = write_small_checkpoint(tmp_path / "m")
    monkeypatch.setenv("SC2_KERNELS", "prompt-attention=native,attention=native,decode=linear,prefill=linear")
    model = sc2cli.load_model(folder, dtype="bf16", device="cpu", attn="sdpa")
    assert model.prompt_attention == "native" and "prompt attention native" in model.kernels
    rows = []
    attend = native.attention_one
    monkeypatch.setattr(native, "attention_one", lambda *a: rows.append(a[0].shape[2]) or attend(*a))
    ids = torch.randint(10, 200, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        got = model(ids, model.new_cache(64)).float()  # a prompt as generation runs it: into a cache
    assert rows == [40] * model.config.num_hidden_layers
    monkeypatch.setenv("SC2_KERNELS", "prompt-attention=fused,attention=native,decode=linear,prefill=linear")
    fused = sc2cli.load_model(folder, dtype="bf16", device="cpu", attn="sdpa")
    with torch.inference_mode():
        want = fused(ids, fused.new_cache(64)).float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()
