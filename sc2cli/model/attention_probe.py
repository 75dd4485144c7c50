"""Which attention path runs fastest here: one token after `PROBE_KEYS` - 1 cached, and a prompt of
`PROBE_PROMPT` tokens, each path timed from the projections on as a layer runs it, the choice remembered
per machine beside the matrix kernels' (kernels.py). Only the CPU's sdpa backend has a choice."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from . import native
from . import native_attention as one_call
from .attention import ATTENTION_PATHS, AttentionFn, Visibility, rotate
from .config import ModelConfig
from .kernels import Choices, choose, measure_again, parse_forced

PROBE_KEYS = 1024  # keys the single-query paths are timed over
PROBE_PROMPT = 512  # tokens the prompt paths are timed over


def plan_single_query(
    config: ModelConfig,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    kernels: str | None = None,
    measure: bool = True,
) -> str:
    """How one-token attention runs for `config`'s heads: only the CPU's sdpa
    backend has a choice, forced by `kernels` (`attention=fused|grouped|native`), remembered, or timed
    over `PROBE_KEYS` keys here (kernels.py); `native` is offered for bf16 where sc2's kernel builds and
    agrees (native.py). `measure=False` (models too small to matter) keeps `fused` and compiles nothing
    unless forced, so a tiny model runs one attention kernel whatever the number of new tokens (its
    near-flat logits would otherwise pick other tokens when a warm cache splits a prompt differently)."""
    candidates = functools.partial(_candidates, 1)
    return _plan(
        "attention", ["fused", "grouped"], candidates, config, backend, device, dtype, kernels, measure
    )


def plan_prompt_attention(
    config: ModelConfig,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    kernels: str | None = None,
    measure: bool = True,
) -> str:
    """How a prompt's many rows attend (role `prompt-attention`, chosen as `plan_single_query` chooses):
    `fused` (PyTorch's kernel) or `native` (sc2's one-token kernel, row by row in few calls: 3B heads, 2
    threads, AMD Zen 5: 512 causal tokens in 10 ms against 20, 2,048 in 130 against 190; each row then
    the same as that token decoded alone)."""
    candidates = functools.partial(_candidates, PROBE_PROMPT)
    return _plan("prompt-attention", ["fused"], candidates, config, backend, device, dtype, kernels, measure)


def _plan(
    role: str,
    stock: list[str],
    candidates: Callable[..., dict[str, Callable]],
    config: ModelConfig,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    kernels: str | None,
    measure: bool,
) -> str:
    """`role`'s path among `stock` and, for bf16 where sc2's kernel runs, `native` (see the callers)."""
    if device.type != "cpu" or backend != "sdpa":
        return "fused"
    n_heads, n_kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    shape = (n_heads * hd, n_kv * hd)  # the widths of q and of k, as the choice is remembered
    forced = parse_forced(kernels)
    built = measure or forced.get(role) == "native"
    own = built and dtype == torch.bfloat16 and hd % 32 == 0 and native.attention_one_works()
    available = stock + (["native"] if own else [])
    choices = Choices(fresh=measure_again(kernels))
    made = functools.partial(candidates, n_heads, n_kv, hd, dtype, available)
    default = None if measure else "fused"
    path = choose(role, shape, available, made, dtype, forced, choices, default)
    choices.save()
    return path


def _candidates(
    tokens: int, n_heads: int, n_kv: int, hd: int, dtype: torch.dtype, available: list[str]
) -> dict[str, Callable]:
    """Each available path on one token over `PROBE_KEYS` keys (`_token_candidates`), or on a prompt of
    `tokens` tokens with no cache before it."""
    g = torch.Generator().manual_seed(0)
    if tokens == 1:
        return _token_candidates(n_heads, n_kv, hd, dtype, available, g)
    q = torch.randn(1, n_heads, tokens, hd, generator=g).to(dtype)
    k, v = (torch.randn(1, n_kv, tokens, hd, generator=g).to(dtype) for _ in range(2))
    vis = Visibility(0, 0, None, causal=True, mask=None)
    return {name: lambda _, f=ATTENTION_PATHS[name]: f(q, k, v, vis) for name in available}


def _token_candidates(
    n_heads: int, n_kv: int, hd: int, dtype: torch.dtype, available: list[str], g: torch.Generator
) -> dict[str, Callable]:
    """Each path on one token after `PROBE_KEYS` - 1 cached, from its projections on, as a layer runs it
    (model.py's Attention): the rotary embedding, the cache write and the attention, or for `native`,
    where it agrees, all three in sc2's one call (`rotate_attend`). Timing the attention alone would miss
    the operations the one call removes (3B heads, 2 threads: `grouped` won such a probe where `native`
    won the whole token, 70 against 74 ms)."""

    start = PROBE_KEYS - 1
    q = torch.randn(1, 1, n_heads, hd, generator=g).to(dtype)  # (B, T, H, hd), before the rotary embedding
    k, v = (torch.randn(1, 1, n_kv, hd, generator=g).to(dtype) for _ in range(2))
    cos, sin = (torch.randn(1, 1, hd, generator=g).to(dtype) for _ in range(2))  # (T, 1, hd)
    keys, values = (torch.randn(1, n_kv, PROBE_KEYS, hd, generator=g).to(dtype) for _ in range(2))
    vis = Visibility(start, 0, None, causal=False, mask=None)

    def separate(attend: AttentionFn) -> torch.Tensor:
        qr, kr = rotate(q, cos, sin).transpose(1, 2), rotate(k, cos, sin).transpose(1, 2)
        keys[:, :, start:] = kr
        values[:, :, start:] = v.transpose(1, 2)
        return attend(qr, keys, values, vis).transpose(1, 2).reshape(1, 1, -1)  # (B, T, H * hd)

    made = {name: lambda _, f=ATTENTION_PATHS[name]: separate(f) for name in available}
    if "native" in made and one_call.rotate_attend_works():  # as Starcoder2.set_attention runs it
        made["native"] = lambda _: one_call.rotate_attend(q, k, v, cos, sin, keys, values, start, None)
    return made
