"""Attention backends and the sliding-window rule, in one place.

The rule (as the reference defines it): a query at position i sees key j iff `i - W < j <= i`, i.e. the W
keys ending at itself; without a window, every key up to itself. Callers hand each backend only the keys
that can be visible (`[k_start, q_end)`), and `Visibility` says what else must be masked.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

BACKENDS = ("auto", "sdpa", "flash", "eager")


@dataclass(frozen=True)
class Visibility:
    """Which keys the queries of one forward call see; computed once per call, shared by all layers.

    Queries are positions `[q_start, q_start + T)`, keys `[k_start, q_start + T)`.
    """

    q_start: int
    k_start: int
    window: int | None
    causal: bool  # top-left aligned causal mask is exactly the rule (no past keys, no window cut)
    mask: torch.Tensor | None  # (T, S) bool, True where visible; None when `causal` or all visible

    @property
    def flash_window(self) -> tuple[int, int]:
        return (self.window - 1, 0) if self.window else (-1, -1)


def first_visible_key(q_start: int, window: int | None) -> int:
    """The oldest key the query at `q_start` can see: everything older can be left out of the call."""
    return max(0, q_start - window + 1) if window else 0


def visibility(
    q_start: int, length: int, k_start: int, window: int | None, device: torch.device
) -> Visibility:
    """The mask for queries `[q_start, q_start+length)` over keys `[k_start, q_start+length)`."""
    if length == 1 and k_start >= first_visible_key(q_start, window):
        return Visibility(q_start, k_start, window, causal=False, mask=None)  # one query sees every key given
    if k_start == q_start and (window is None or length <= window):
        return Visibility(q_start, k_start, window, causal=True, mask=None)
    i = torch.arange(q_start, q_start + length, device=device)[:, None]  # (T, 1) query positions
    j = torch.arange(k_start, q_start + length, device=device)[None, :]  # (1, S) key positions
    mask = j <= i
    if window:
        mask &= j > i - window
    return Visibility(q_start, k_start, window, causal=False, mask=mask)


# A backend: (q (B, H, T, hd), k (B, n_kv, S, hd), v (B, n_kv, S, hd), Visibility) -> (B, H, T, hd)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Visibility], torch.Tensor]


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
    """Plain maths, softmax in fp32 as the reference does: the path the other backends are checked against."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, S, hd)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    mask = vis.mask
    if vis.causal:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
    """PyTorch's fused kernels; `enable_gqa` shares each K/V head across its query group without copying."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=vis.mask, is_causal=vis.causal, enable_gqa=k.shape[1] != q.shape[1]
    )


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
    """flash-attn: its causal mask is bottom-right aligned, so with `window_size=(W-1, 0)` it applies the
    rule above to any mix of cached and new keys."""
    from flash_attn import flash_attn_func

    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, window_size=vis.flash_window
    )  # (B, T, H, hd)
    return out.transpose(1, 2)


_FUNCTIONS: dict[str, AttentionFn] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "flash": flash_attention,
}


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def select_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """The one place a backend is chosen. `auto`: flash-attn on CUDA in half precision when installed,
    otherwise PyTorch's SDPA (fused kernels on every device). `flash` where it cannot run is an error."""
    if requested not in BACKENDS:
        raise InputError(f"unknown attention backend {requested!r}; use {', '.join(BACKENDS)}")
    flash_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if requested == "flash":
        if device.type != "cuda":
            raise InputError(f"--attn flash needs a CUDA GPU (device is {device}); use --attn sdpa")
        if not flash_ok:
            raise InputError("--attn flash needs fp16 or bf16; use --dtype bf16 or --attn sdpa")
        if not flash_available():
            raise InputError("--attn flash needs the flash-attn package: pip install 'sc2cli[flash]'")
    if requested == "auto":
        return "flash" if flash_ok and flash_available() else "sdpa"
    return requested


def attention_function(backend: str) -> AttentionFn:
    return _FUNCTIONS[backend]
