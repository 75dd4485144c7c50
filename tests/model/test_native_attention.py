"""sc2's attention kernel for a token and its drafts (native.py, attention_one.c): the exact maths rounded
once to bf16 over any number of keys (its blocks of 16 and the rest), each draft's row in one call exactly
as that token alone, the same result however many threads share a call, NaN kept, calls it cannot take
left to the grouped path, offered by the plan only where it runs, and a model decoding through it whose
drafts change no greedy token."""

from __future__ import annotations

import pytest
import torch

import sc2cli
from sc2cli.model import attention_probe, native
from sc2cli.model import native_attention as one_call
from sc2cli.model.attention import (
    FEW_ROWS,
    Visibility,
    attention_function,
    first_visible_key,
    grouped_attention,
    native_attention,
    visibility,
)
from sc2cli.model.attention_probe import PROBE_KEYS, plan_single_query
from sc2cli.model.config import ModelConfig

from .test_native import assert_drafts_change_no_greedy_token, write_small_checkpoint

needs_kernel = pytest.mark.skipif(
    not native.attention_one_works(),
    reason="sc2's attention kernel does not run here (needs a C compiler, and native bf16 or AVX2 and FMA)",
)


def cached(heads: int, n_kv: int, hd: int, keys: int, seed: int = 0):
    """q (1, heads, 1, hd) and k, v (1, n_kv, keys, hd) as slices of a longer cache, all bf16."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, 1, hd, generator=g).bfloat16()
    cache = (torch.randn(2, 1, n_kv, keys + 9, hd, generator=g) * 2).bfloat16()
    return q, cache[0, :, :, :keys], cache[1, :, :, :keys]


def heads_config(hidden: int, heads: int, n_kv: int) -> ModelConfig:
    return ModelConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=n_kv,
                       intermediate_size=256, num_hidden_layers=1, vocab_size=32)  # fmt: skip


def exact(q, k, v):
    """softmax(q k^T / sqrt(hd)) v in float64, each K/V head serving its query group."""
    groups = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(groups, 1) for t in (k, v))
    return torch.softmax(q.double() @ k.transpose(2, 3) * q.shape[-1] ** -0.5, dim=-1) @ v


def test_where_the_kernel_builds_it_agrees_with_the_maths():
    """Its self-check is what offers it: a kernel that builds but errs would otherwise only skip the rest."""
    if native.attention_library() is None:
        pytest.skip(
            "the attention kernel does not build here (needs a C compiler, and native bf16 or AVX2 and FMA)"
        )
    assert native.attention_one_works()


@needs_kernel
@pytest.mark.parametrize(
    ("heads", "n_kv", "hd", "keys"),
    [(4, 2, 32, 1), (4, 2, 32, 16), (24, 2, 128, 17), (24, 2, 128, 300), (12, 1, 64, 100), (36, 4, 128, 33),
     (8, 8, 96, 47)],
)  # fmt: skip
def test_the_kernel_is_the_exact_attention_rounded_once(heads, n_kv, hd, keys):
    """Within bf16's rounding of the result plus fp32's of the sums; the grouped path meets the same bound
    (a misplaced key's score errs by whole units)."""
    q, k, v = cached(heads, n_kv, hd, keys, seed=keys)
    want = exact(q, k, v)
    bound = 2**-8 * want.abs() + 1e-5 * v.abs().max().double()
    got = native.attention_one(q, k, v)
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    assert bool(((got.double() - want).abs() <= bound).all())
    vis = Visibility(keys - 1, 0, None, causal=False, mask=None)
    assert bool(((grouped_attention(q, k, v, vis).double() - want).abs() <= bound).all())


@needs_kernel
def test_threads_sharing_a_call_change_nothing():
    """One K/V head's 12 queries split between two threads or not: the same numbers."""
    q, k, v = cached(12, 1, 64, 77, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = native.attention_one(q, k, v)
        torch.set_num_threads(2)
        shared = native.attention_one(q, k, v)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, shared)


@needs_kernel
def test_a_nan_stays_nan_and_stays_in_its_head():
    q, k, v = cached(4, 2, 32, 40, seed=4)
    q[0, 1, 0, 5] = float("nan")
    out = native.attention_one(q, k, v)
    assert out[0, 1].isnan().all()
    assert out[0, [0, 2, 3]].isfinite().all()


def test_calls_the_kernel_cannot_take_go_through_the_grouped_path(monkeypatch):
    q, k, v = cached(4, 2, 32, 10)
    assert native.attention_one_fits(q, k, v)
    two = torch.cat([q, q]), torch.cat([k, k]), torch.cat([v, v])
    unfit = {
        "two sequences": two,
        "fp32": (q.float(), k.float(), v.float()),
        "head size 48": cached(4, 2, 48, 10),
        "keys not dense": (q, *(t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))),
        "K and V laid out apart": (q, k, v.contiguous()),
    }
    for name, call in unfit.items():
        assert not native.attention_one_fits(*call), name
    monkeypatch.setattr(native, "attention_one", lambda *a: pytest.fail("the kernel took an unfit call"))
    vis = Visibility(9, 0, None, causal=False, mask=None)
    assert torch.equal(native_attention(*two, vis), grouped_attention(*two, vis))


@needs_kernel
@pytest.mark.parametrize(("q_start", "length", "window"), [(30, 6, None), (30, 6, 8), (3, FEW_ROWS, 4)])
def test_each_of_a_few_rows_is_bit_for_bit_that_token_alone(q_start, length, window):
    """Through the cache's slices as the model passes them: a token with its drafts gets exactly what it
    gets alone."""
    g = torch.Generator().manual_seed(5)
    cache = torch.randn(2, 1, 2, 64, 32, generator=g).bfloat16()
    q = torch.randn(1, 4, length, 32, generator=g).bfloat16()
    k_start = first_visible_key(q_start, window)
    vis = visibility(q_start, length, k_start, window, q.device)
    k, v = cache[0, :, :, k_start : q_start + length], cache[1, :, :, k_start : q_start + length]
    attend = attention_function("sdpa", "native")
    together = attend(q, k, v, vis)
    for i in range(length):
        position = q_start + i
        first = first_visible_key(position, window)
        alone = attend(q[:, :, i : i + 1], cache[0, :, :, first : position + 1], cache[1, :, :, first : position + 1],
                       visibility(position, 1, first, window, q.device))  # fmt: skip
        assert torch.equal(together[:, :, i : i + 1], alone)
    assert native.attention_one_fits(q, k, v)  # the rows in one call of the kernel, not the fallback
    with pytest.raises(ValueError, match="do not fit"):
        native.attention_one(q[:, :, :2], k, v, [(0, k.shape[2] + 1), (0, 1)])  # more keys than given


def test_the_plan_offers_the_kernel_only_where_it_runs_and_is_wanted(monkeypatch):
    import sc2cli.model.kernels as kernels

    config = heads_config(128, 4, 2)
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    works = native.attention_one_works()
    measured = []
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: measured.append(sorted(candidates)) or "grouped"
    )
    assert plan_single_query(config, "sdpa", cpu, bf16, "measure") == "grouped"
    assert measured == [["fused", "grouped"] + (["native"] if works else [])]
    forced = plan_single_query(config, "sdpa", cpu, bf16, "attention=native", measure=False)
    assert (forced == "native") == works
    assert plan_single_query(config, "sdpa", cpu, torch.float32, "attention=native") != "native"  # bf16 only
    monkeypatch.setattr(native, "attention_one_works", lambda: pytest.fail("compiled for a tiny model"))
    other = heads_config(96, 3, 1)  # not remembered from above
    assert plan_single_query(other, "sdpa", cpu, bf16, measure=False) == "fused"


def test_the_token_probe_times_what_a_layer_runs(monkeypatch):
    """Each one-token candidate runs a layer's work from the projections on: the rotary embedding, the
    cache write and the attention, or sc2's one call for `native` where it agrees, and all give the same
    token."""
    rotated, one = [], []
    rotate, rotate_attend = attention_probe.rotate, one_call.rotate_attend
    monkeypatch.setattr(attention_probe, "rotate", lambda *a: rotated.append(1) or rotate(*a))
    monkeypatch.setattr(one_call, "rotate_attend", lambda *a: one.append(a[7]) or rotate_attend(*a))
    available = ["fused", "grouped"] + (["native"] if native.attention_one_works() else [])
    made = attention_probe._candidates(1, 4, 2, 64, torch.bfloat16, available)
    assert sorted(made) == sorted(available)
    outs = {}
    for name, run in made.items():  # the separate paths first: the one call's cache write is not theirs
        rotated.clear(), one.clear()
        outs[name] = run(None).float()  # (1, 1, H * hd)
        if name == "native" and one_call.rotate_attend_works():
            assert one == [PROBE_KEYS - 1] and not rotated
        else:
            assert len(rotated) == 2 and not one
    for name, out in outs.items():
        assert out.shape == (1, 1, 4 * 64)
        assert torch.allclose(out, outs["fused"], atol=2e-2), name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("native-attention"))


@needs_kernel
def test_a_model_decodes_through_the_kernel_and_drafts_change_no_greedy_token(checkpoint, monkeypatch):
    calls = []
    attend = one_call.rotate_attend
    monkeypatch.setattr(  # keys seen by the call's last token
        one_call, "rotate_attend", lambda *a: calls.append(a[7] + a[0].shape[1]) or attend(*a)
    )
    monkeypatch.setattr(
        native, "attention_one", lambda *a: pytest.fail("a token's call took the slower path")
    )
    monkeypatch.setenv("SC2_KERNELS", "attention=native,decode=linear,prefill=linear")
    model = sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa")
    assert model.single_query == "native" and "one-token attention native" in model.kernels
    piece = assert_drafts_change_no_greedy_token(model, seed=2)
    assert calls and max(calls) > 30  # one token over the prompt and what followed it
    monkeypatch.setenv("SC2_KERNELS", "attention=grouped,decode=linear,prefill=linear")
    grouped = sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa")
    for m in (model, grouped):  # one token at a time over a cache: the one-token paths
        cache = m.new_cache(64)
        with torch.inference_mode():
            m(torch.tensor([piece * 4]), cache)
            m.logits = torch.cat([m(torch.tensor([[t]]), cache) for t in piece], dim=1).float()
    assert (model.logits - grouped.logits).abs().max() <= 0.05 * grouped.logits.abs().max()
