"""A token's (and its drafts') rotary embedding, KV-cache write and attention in one call of sc2's attention
kernel (attention_one.c's `rotate_attend`; native.py builds, trusts and loads it).

Around the one-token attention kernel, model.py's Attention takes a dozen PyTorch operations and calls per
layer: rotating q and k (four operations each), three transposes, two cache writes, and the kernel's own
wrapper (a transpose, the keys each token sees, its arrays). On a 3B model's 30 layers they cost more than
the attention itself at a few hundred keys: ~3 ms of a token's ~70 at int4 (10.5 against 7.3 ms a token
on a model of the same layer count with tiny matrices, so only what surrounds them is timed). Used only
where the one call gives what those operations give, bit for bit (`rotate_attend_works`).
"""

from __future__ import annotations

import functools

import torch

from .attention import first_visible_key, rotate
from .native import _working, attention_library, attention_one  # the build machinery they share


def rotate_attend_works() -> bool:
    """Whether the one call runs here and gives, bit for bit, the output and cache of attention.py's rotate,
    KVCache.store and `native.attention_one`."""
    return attention_library() is not None and _rotate_attend_agrees()


def rotate_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    window: int | None,
) -> torch.Tensor | None:
    """The attention of T new tokens at positions [start, start + T): q (1, T, H, hd), k and v (1, T, n_kv,
    hd), their projections before the rotary embedding; cos and sin (T, 1, hd), the rotary table's rows for
    those positions (model.py's `Rotary`, sin signed); keys and values (1, n_kv, P, hd), this layer's cache,
    holding `start` positions, into which the rotated k and v are written. Each token sees every key up to
    itself, or the `window` ending at itself. Returns (1, T, H * hd) bf16, or None where the call does not
    fit (several sequences, another dtype or layout): then nothing was written."""
    _, T, H, hd = q.shape
    n_kv = k.shape[2]
    fits = (
        q.shape[0] == 1
        and q.dtype == k.dtype == v.dtype == cos.dtype == keys.dtype == values.dtype == torch.bfloat16
        and sin.dtype == cos.dtype
        and q.is_contiguous()
        and k.is_contiguous()
        and v.is_contiguous()
        and cos.is_contiguous()
        and sin.is_contiguous()
        and keys.stride() == values.stride()
        and keys.stride(-2) == hd
        and keys.stride(-1) == 1
        and start + T <= keys.shape[2]
    )
    if not fits:
        return None
    rotated = _working("rotated", T * H * hd, torch.bfloat16)
    scores = _working("scores", T * H * (start + T), torch.float32)
    out = torch.empty(1, T, H * hd, dtype=torch.bfloat16)
    status = attention_library().rotate_attend(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), T, H, n_kv, hd, cos.data_ptr(), sin.data_ptr(),
        keys.data_ptr(), values.data_ptr(), keys.stride(1), start, window or 0, hd**-0.5, rotated.data_ptr(),
        out.data_ptr(), scores.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise ValueError(f"the attention kernel takes no call of {H} heads over {n_kv}, head size {hd}")
    return out


@functools.cache
def _rotate_attend_agrees() -> bool:
    """The one call against the operations it stands for (attention.py's rotate and a cache slice assignment,
    then `attention_one` over the keys each token sees), bit for bit: outputs and cache alike, for a token
    and for drafts, with and without a window, after a cache of a few positions or none."""
    generator = torch.Generator().manual_seed(0)
    for H, n_kv, hd, start, T, window in (
        (4, 2, 64, 0, 1, None),
        (6, 2, 128, 37, 3, None),
        (4, 1, 64, 20, 4, 8),
    ):
        q, k, v = (torch.randn(1, T, n, hd, generator=generator).bfloat16() for n in (H, n_kv, n_kv))
        angles = torch.randn(T, 1, hd, generator=generator)
        cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
        cache = torch.randn(2, 1, n_kv, start + T + 5, hd, generator=generator).bfloat16()
        want_cache = cache.clone()
        qr, kr = rotate(q, cos, sin), rotate(k, cos, sin)
        want_cache[0, :, :, start : start + T] = kr.transpose(1, 2)
        want_cache[1, :, :, start : start + T] = v.transpose(1, 2)
        seen = []
        for position in range(start, start + T):
            first = first_visible_key(position, window)
            seen.append((first, position + 1 - first))
        keys, values = want_cache[0, :, :, : start + T], want_cache[1, :, :, : start + T]
        want = attention_one(qr.transpose(1, 2), keys, values, seen).transpose(1, 2).reshape(1, T, H * hd)
        got = rotate_attend(q, k, v, cos, sin, cache[0], cache[1], start, window)
        if got is None or not (torch.equal(got, want) and torch.equal(cache, want_cache)):
            return False
    return True
