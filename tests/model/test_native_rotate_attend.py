"""A token's (and its drafts') rotary embedding, cache write and attention in one native call
(native_attention.py): bit for bit what model.py's separate operations give, for any heads, positions,
windows and values; a model decoding through it gives the same logits and cache as without; calls it cannot
take are left alone; and its self-check notices a rotation rounded differently."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sc2cli.model.model as model_module
from sc2cli.model import native
from sc2cli.model import native_attention as one_call
from sc2cli.model.attention import first_visible_key, native_attention, rotate, visibility
from sc2cli.model.config import ModelConfig
from sc2cli.model.model import KVCache, Starcoder2

needs_kernel = pytest.mark.skipif(
    not native.attention_one_works(),
    reason="sc2's attention kernel does not run here (needs a C compiler, and native bf16 or AVX2 and FMA)",
)


def test_where_the_kernel_builds_the_one_call_agrees():
    if native.attention_library() is None:
        pytest.skip(
            "the attention kernel does not build here (needs a C compiler, and native bf16 or AVX2 and FMA)"
        )
    assert one_call.rotate_attend_works()


def config(window: int | None, heads: int = 4, n_kv: int = 2, hd: int = 32, layers: int = 2) -> ModelConfig:
    return ModelConfig(hidden_size=heads * hd, num_attention_heads=heads, num_key_value_heads=n_kv,
                       intermediate_size=64, num_hidden_layers=layers, vocab_size=64, sliding_window=window,
                       max_position_embeddings=96)  # fmt: skip


def separately(q, k, v, cos, sin, cache: KVCache, start: int, window: int | None) -> torch.Tensor:
    """model.py's path without the one call: rotate, store, then the native attention of the few rows."""
    T = q.shape[1]
    q, k = rotate(q, cos, sin).transpose(1, 2), rotate(k, cos, sin).transpose(1, 2)
    k_start = first_visible_key(start, window)
    keys, values = cache.store(0, start, k, v.transpose(1, 2), k_start)
    out = native_attention(q, keys, values, visibility(start, T, k_start, window, q.device))
    return out.transpose(1, 2).reshape(1, T, -1)


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    heads=st.sampled_from([(4, 2, 32), (6, 3, 64), (8, 1, 128), (2, 2, 96)]),
    start=st.integers(0, 60),
    rows=st.integers(1, 7),
    window=st.one_of(st.none(), st.integers(1, 20)),
    scale=st.sampled_from([1e-3, 1.0, 40.0]),
    seed=st.integers(0, 2**16),
)
def test_the_one_call_gives_the_separate_operations_bits(heads, start, rows, window, scale, seed):
    H, n_kv, hd = heads
    g = torch.Generator().manual_seed(seed)
    q, k, v = ((torch.randn(1, rows, n, hd, generator=g) * scale).bfloat16() for n in (H, n_kv, n_kv))
    cos, sin = model_module.Rotary(config(window, H, n_kv, hd))(start, rows, q.device, torch.bfloat16)
    caches = [KVCache(config(window, H, n_kv, hd, 1), dtype=torch.bfloat16) for _ in range(2)]
    filled = torch.randn(caches[0].keys.shape, generator=g).bfloat16()
    for cache in caches:
        cache.keys.copy_(filled), cache.values.copy_(-filled)
    want = separately(q, k, v, cos, sin, caches[0], start, window)
    got = one_call.rotate_attend(q, k, v, cos, sin, *caches[1].layers[0], start, window)
    assert got is not None
    assert torch.equal(got, want)
    assert torch.equal(caches[1].keys, caches[0].keys) and torch.equal(caches[1].values, caches[0].values)


@needs_kernel
@pytest.mark.parametrize("window", [None, 6])
def test_a_model_decodes_the_same_with_and_without_the_one_call(window):
    torch.manual_seed(3)
    model = Starcoder2(config(window)).to(torch.bfloat16).eval()
    model.set_attention("sdpa", "native")
    assert all(block.self_attn.one_call for block in model.model.layers)
    prompt = torch.randint(0, 64, (1, 20))
    steps = [torch.randint(0, 64, (1, n)) for n in (1, 3, 1, 7, 2)]  # tokens, and tokens with drafts
    results = []
    for one in (True, False):
        for block in model.model.layers:
            block.self_attn.one_call = one
        cache = model.new_cache(64)
        with torch.inference_mode():
            model(prompt, cache)
            logits = [model(step, cache) for step in steps]
        filled = cache.length
        results.append(
            (torch.cat(logits, dim=1), cache.keys[:, :, :, :filled], cache.values[:, :, :, :filled])
        )
    (a, *cache_a), (b, *cache_b) = results
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(cache_a, cache_b, strict=True))


@needs_kernel
def test_calls_it_cannot_take_are_left_alone():
    g = torch.Generator().manual_seed(0)
    cache = KVCache(config(None, layers=1), batch_size=2, dtype=torch.bfloat16)
    cache.keys.zero_()
    q, k, v = (torch.randn(2, 1, n, 32, generator=g).bfloat16() for n in (4, 2, 2))
    cos, sin = model_module.Rotary(config(None))(0, 1, q.device, torch.bfloat16)
    assert one_call.rotate_attend(q, k, v, cos, sin, *cache.layers[0], 0, None) is None  # two sequences
    assert not cache.keys.any()
    q, k, v = (t[:1].float() for t in (q, k, v))
    assert one_call.rotate_attend(q, k, v, cos, sin, *cache.layers[0], 0, None) is None  # fp32


@needs_kernel
def test_the_self_check_notices_a_rotation_rounded_once(monkeypatch):
    """The kernel reproduces two roundings (each product to bf16, then the sum); a rotation that rounds
    once (fused multiply-add) differs in the last bit often enough to be caught."""

    def rounded_once(x, cos, signed_sin):
        both = x.float() * cos.float() + x.roll(x.shape[-1] // 2, dims=-1).float() * signed_sin.float()
        return both.to(x.dtype)

    monkeypatch.setattr(one_call, "rotate", rounded_once)
    one_call._rotate_attend_agrees.cache_clear()
    try:
        assert not one_call.rotate_attend_works()
    finally:
        monkeypatch.undo()
        one_call._rotate_attend_agrees.cache_clear()
    assert one_call.rotate_attend_works()
