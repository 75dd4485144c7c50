"""Attention backends and the sliding-window rule, in one place.

The rule (as the reference defines it): a query at position i sees key j iff `i - W < j <= i`, i.e. the W
keys ending at itself; without a window, every key up to itself. Callers hand each backend only the keys
that can be visible (`[k_start, q_end)`), and `Visibility` says what else must be masked.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import native

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


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, hd): rotate-half form of RoPE, x cos + (-x2, x1) sin, as x cos + (x2, x1) signed_sin
    with signed_sin = (-sin1, sin2) (`Rotary`): the same products, in four operations instead of seven
    (a token's decode runs this twice per layer)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


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


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
    """The same maths in fp32 with each K/V head read once for its whole query group, as two matrix
    products: for a single query on a CPU the fused kernel re-packs K/V for every query head and block
    (one token over 2,000 keys, 3B heads: 5.2 ms there, 0.5 ms here), a cost this layout does not pay."""
    B, H, T, hd = q.shape
    n_kv = k.shape[1]
    group = H // n_kv
    q = q.reshape(B, n_kv, group * T, hd).float()  # (B, n_kv, g*T, hd): rows of head kv*g + i, then T
    scores = torch.matmul(q, k.float().transpose(2, 3)) * hd**-0.5  # (B, n_kv, g*T, S)
    mask = vis.mask
    if vis.causal:
        mask = torch.ones(T, scores.shape[-1], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.view(B, n_kv, group, T, -1).masked_fill(~mask, float("-inf")).view(scores.shape)
    out = torch.matmul(torch.softmax(scores, dim=-1), v.float())  # (B, n_kv, g*T, hd)
    return out.view(B, H, T, hd).to(v.dtype)


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
SINGLE_QUERY = ("fused", "grouped", "native")  # how a one-token call runs under the sdpa backend
# Calls of up to this many new tokens (a token and its drafts to verify) get each row bit for bit as that
# token alone would (`attention_function`), so drafts never change a greedy token. Measured on the trained
# tiny model in bf16, 18 FIM prompts, 40 tokens each: greedy with drafts differed from greedy without on
# 5 of them (int4, int8-rounded rows), 1 (int4 tinygemm) and 1 (bf16) when a few rows went through the
# fused kernel at once; on none this way. At least rows.py's MAX_VERIFY_ROWS (tested); a prompt's many rows
# go through the backend at once.
FEW_ROWS = 8
NATIVE_SCORES = 4 << 20  # fp32 scores sc2's kernel holds for one call's rows (16 MB)


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


def native_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility, unfit: AttentionFn | None = None
) -> torch.Tensor:
    """Rows of queries through sc2's own kernel (native.py: the grouped maths in AVX512-BF16 dot products or AVX2 FMAs
    and fp32, reading the bf16 cache in place), each over the keys that token alone would get, so a row
    comes out the same alone, with drafts or in a prompt; a prompt's rows in calls of at most
    `NATIVE_SCORES` scores. Calls it does not take (several sequences, no cache layout) go to `unfit`, by
    default row by row through `grouped_attention`, so a token's path never depends on the drafts beside
    it."""
    if not native.attention_one_fits(q, k, v):
        return unfit(q, k, v, vis) if unfit else _row_by_row(grouped_attention, q, k, v, vis)
    keys = []
    for position in range(vis.q_start, vis.q_start + q.shape[2]):
        first = max(vis.k_start, first_visible_key(position, vis.window))
        keys.append((first - vis.k_start, position + 1 - first))
    step = max(1, NATIVE_SCORES // (q.shape[1] * max(count for _, count in keys)))
    if step >= len(keys):
        return native.attention_one(q, k, v, keys)
    parts = [
        native.attention_one(q[:, :, i : i + step], k, v, keys[i : i + step])
        for i in range(0, len(keys), step)
    ]
    return torch.cat(parts, dim=2)


# The CPU's paths the probes time (attention_probe.py), by name: `fused` is sdpa's kernel, the only backend with a choice.
ATTENTION_PATHS: dict[str, AttentionFn] = {
    "fused": sdpa_attention,
    "grouped": grouped_attention,
    "native": native_attention,
}


def attention_function(backend: str, single_query: str = "fused", prompt: str = "fused") -> AttentionFn:
    """The backend's function, but calls of up to `FEW_ROWS` new tokens (decode and its drafts) take each
    row as a call of its own, over the keys that token alone would be given (a kernel's rows differ with the
    number of queries and keys, the fused one's and BLAS's alike), through `grouped_attention` with
    `single_query="grouped"`, or all in one call of sc2's kernel with `"native"` (`native_attention`); and
    a prompt's rows through sc2's kernel with `prompt="native"` (the backend's where it does not fit).
    flash-attn is left as it is."""
    attend = _FUNCTIONS[backend]
    if backend == "flash":
        return attend
    one = {"grouped": grouped_attention, "native": native_attention}.get(single_query, attend)  # a lone token
    few = native_attention if single_query == "native" else functools.partial(_row_by_row, one)
    many = functools.partial(native_attention, unfit=attend) if prompt == "native" else attend

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
        T = q.shape[2]
        if T == 1:
            return one(q, k, v, vis)
        return (few if T <= FEW_ROWS else many)(q, k, v, vis)

    return run


def _row_by_row(
    attend: AttentionFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility
) -> torch.Tensor:
    """Each query row through `attend` alone, over exactly the keys a one-token call at its position gets
    (for `grouped_attention`, K and V converted to fp32 once for all rows: the same values it converts)."""
    dtype = v.dtype
    if attend is grouped_attention:
        k, v = k.float(), v.float()
    rows = []
    for i in range(q.shape[2]):
        position = vis.q_start + i
        first = max(vis.k_start, first_visible_key(position, vis.window))
        keys = slice(first - vis.k_start, position + 1 - vis.k_start)
        alone = Visibility(position, first, vis.window, causal=False, mask=None)
        rows.append(attend(q[:, :, i : i + 1], k[:, :, keys], v[:, :, keys], alone))
    return torch.cat(rows, dim=2).to(dtype)  # (B, H, T, hd)
