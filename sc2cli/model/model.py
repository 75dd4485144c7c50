"""StarCoder2, top to bottom.

Pre-norm decoder blocks (LayerNorm with bias), grouped-query attention with biases and NeoX rotary
embeddings over the whole head, a tanh-GELU MLP, a final LayerNorm and an lm_head tied to the embedding
unless the checkpoint says otherwise. Parameter names are the Hugging Face ones, so checkpoints load as
they are. Sliding-window attention follows the reference's rule (see attention.py).

Shapes: B batch, T new tokens, S keys, H query heads, n_kv key/value heads, hd head size, D hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from . import native_attention
from .attention import (
    FEW_ROWS,
    AttentionFn,
    Visibility,
    attention_function,
    first_visible_key,
    rotate,
    visibility,
)
from .config import ModelConfig
from .native_table import Activation, gelu_tanh


class KVCache:
    """Keys and values of every layer, preallocated for `max_length` positions (the full 16,384 by
    default, not only the window), owned by the caller. Positions `[0, length)` are filled; `truncate`
    forgets a tail so a shared prefix can be reused and only what changed recomputed."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        max_length: int | None = None,
        batch_size: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.max_length = max_length or config.max_position_embeddings
        shape = (
            config.num_hidden_layers,
            batch_size,
            config.num_key_value_heads,
            self.max_length,
            config.head_dim,
        )
        self.keys = torch.empty(shape, device=device, dtype=dtype)  # (L, B, n_kv, max_length, hd)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        # each layer's (keys, values) as views made once, not indexed out of the 5-D tensors on every call
        self.layers = list(zip(self.keys.unbind(0), self.values.unbind(0), strict=True))
        self.length = 0

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length

    def store(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor, k_start: int):
        """Write the new keys/values at `[start, start+T)`; return this layer's keys `[k_start, start+T)`."""
        end = start + k.shape[2]
        keys, values = self.layers[layer]  # (B, n_kv, max_length, hd)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, k_start:end], values[:, :, k_start:end]


class Rotary(nn.Module):
    """NeoX rotary embedding over the full head: cos/sin are computed in fp32 for every position once
    per device and dtype, then rounded to the activations' dtype as the reference does. The table keeps
    sin with its first half negated, the sign `rotate` needs (negating is exact, so the products are the
    reference's bit for bit)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.max_positions = config.max_position_embeddings
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def table(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._tables:
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
            inv_freq = 1.0 / (self.theta**exponents)  # (hd/2,)
            positions = torch.arange(self.max_positions, dtype=torch.float32, device=device)
            freqs = positions[:, None] * inv_freq[None, :]  # (P, hd/2)
            angles = torch.cat((freqs, freqs), dim=-1)  # (P, hd)
            sin = angles.sin().to(dtype)
            sin[:, : self.head_dim // 2] *= -1
            self._tables[key] = (angles.cos().to(dtype), sin)
        return self._tables[key]

    def forward(self, start: int, length: int, device: torch.device, dtype: torch.dtype):
        cos, sin = self.table(device, dtype)
        return cos[start : start + length, None, :], sin[start : start + length, None, :]  # (T, 1, hd)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, attend: AttentionFn) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        d, bias = config.hidden_size, config.use_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)
        self.attend = attend
        self.one_call = False  # a token and its drafts in one native call (set_attention)

    def forward(self, x, cos, sin, vis: Visibility, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, D)
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        if self.one_call and cache is not None and T <= FEW_ROWS:
            # rotated, stored and attended in one native call: the same bits as the operations below
            out = native_attention.rotate_attend(
                q, k, v, cos, sin, *cache.layers[self.layer], vis.q_start, vis.window
            )
            if out is not None:
                return self.o_proj(out)  # (B, T, D)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:
            k, v = cache.store(self.layer, vis.q_start, k, v, vis.k_start)  # (B, n_kv, S, hd)
        out = self.attend(q, k, v, vis)  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.act: Activation = gelu_tanh  # F.gelu's tanh form, or its bits by table (`set_activation`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, attend: AttentionFn) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_epsilon)
        self.self_attn = Attention(config, layer, attend)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, vis: Visibility, cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, vis, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Embedding(nn.Embedding):
    """`nn.Embedding` that skips its random init on the meta device, where there are no values to fill:
    `normal_` on a meta tensor runs torch's Python reference, whose first call imports torch._dynamo
    (over a second). Off the meta device it initialises exactly as `nn.Embedding` does."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Decoder(nn.Module):
    """The `model.` part of the Hugging Face names: embedding, blocks, final norm."""

    def __init__(self, config: ModelConfig, attend: AttentionFn) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i, attend) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_epsilon)


class Starcoder2(nn.Module):
    """`model(input_ids)` -> logits (B, T, vocab). With a `KVCache`, the tokens continue the cached ones
    at position `cache.length`, and the cache grows by T."""

    def __init__(self, config: ModelConfig, attn: str = "sdpa", single_query: str = "fused") -> None:
        super().__init__()
        self.config = config
        self.attn_backend, self.single_query, self.prompt_attention = attn, single_query, "fused"
        self.model = Decoder(config, attention_function(attn, single_query))
        self.rotary = Rotary(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        self.row_costs: tuple[float, ...] | None = None  # a forward over 1, 2, ... rows against one (rows.py)

    def set_attention(self, attn: str, single_query: str = "fused", prompt: str = "fused") -> None:
        """Switch every layer to another backend (already chosen by `attention.select_backend`), one-token
        calls to `single_query`'s path (`attention_probe.plan_single_query`), prompts to `prompt`'s
        (`attention_probe.plan_prompt_attention`)."""
        self.attn_backend, self.single_query, self.prompt_attention = attn, single_query, prompt
        one_call = (
            single_query == "native"
            and self.dtype == torch.bfloat16
            and native_attention.rotate_attend_works()
        )
        for block in self.model.layers:
            block.self_attn.attend = attention_function(attn, single_query, prompt)
            block.self_attn.one_call = one_call

    def set_activation(self, act: Activation) -> None:
        """Every MLP's activation: `gelu_tanh`, or a function giving its bits (native_table.py)."""
        for block in self.model.layers:
            block.mlp.act = act

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def new_cache(self, max_length: int | None = None, batch_size: int = 1) -> KVCache:
        return KVCache(
            self.config, max_length=max_length, batch_size=batch_size, device=self.device, dtype=self.dtype
        )

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False
    ) -> torch.Tensor:
        T = input_ids.shape[1]  # input_ids (B, T)
        start = cache.length if cache is not None else 0
        limit = cache.max_length if cache is not None else self.config.max_position_embeddings
        if start + T > limit:
            raise ValueError(f"{start + T} positions exceed the {limit} this model/cache holds")
        window = self.config.sliding_window
        k_start = first_visible_key(start, window) if cache is not None else 0
        vis = visibility(start, T, k_start, window, input_ids.device)  # once per call, for all layers
        x = self.model.embed_tokens(input_ids)  # (B, T, D)
        cos, sin = self.rotary(start, T, x.device, x.dtype)
        for block in self.model.layers:
            x = block(x, cos, sin, vis, cache)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x))  # (B, T or 1, vocab)
