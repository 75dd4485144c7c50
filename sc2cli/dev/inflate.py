"""A checkpoint of a real StarCoder2 shape that computes exactly what a smaller trained model computes.

    python -m sc2cli.dev.inflate --shape 3b --out ~/sc2-3b-like-tiny

Speed depends on a model's shape, not on its values, but speculative decoding's speed also depends on
what the model says: random weights do not copy their context the way a trained model does. With no
trained 3B at hand (the hub is out of reach), this builds a 3B-shaped model whose next-token choices
are the trained tiny model's, so `sc2 bench --speculate` can time drafts at a 3B's cost with a trained
model's acceptance. The tiny model is weak (its completions through the FIM prompt rarely fit the
cursor), so the acceptance measured on it is a lower bound on a real 3B's, not its figure.

How the small model sits inside the large one (D hidden size, hd head size; small t, large b). Every
weight that cannot change the result is left random (std 0.02, as `sc2 bench --shape` makes them), so
the weights read per token look like a real model's rather than mostly zeros:

- The residual stream holds r = D_b / D_t copies of the small one, side by side. LayerNorm sees the
  same mean and variance over r copies as over one, so every norm keeps its weights, repeated.
- A matrix reading the stream reads each copy with its weights divided by r (exact in bf16 for r a
  power of two); one writing the stream writes every copy.
- Each small head's dimension i sits at the large dimension whose rotary frequency equals its own: with
  hd_b = s * hd_t (and the same rope_theta), i in the first half goes to s * i and i in the second half
  to s * (i - hd_t/2) + hd_b/2, so rotation pairs stay pairs. Queries are multiplied by sqrt(s), so that
  1/sqrt(hd_b) scales scores as 1/sqrt(hd_t) did. Keys and values are zero at the other dimensions, so
  the rest of each query head scores nothing and the attention writes zeros there (o_proj reads them
  with random weights). Each large key/value group holds its small group's query heads as many whole
  times as fit, and o_proj divides their sum by that count; query heads left over write nothing.
- MLP units the small model lacks have a bias of -30: tanh-GELU is exactly 0 there, so c_proj's random
  weights read zeros. Extra layers have zero values and biases written: the stream passes unchanged.
- The embedding rows of the small vocabulary are repeated r times (the large vocabulary's other rows
  are random: a decoder restricted to the tokenizer's ids never picks them). The final norm's weights
  are divided by r, so the tied head sums r copies back into the small model's logits.

Every layer multiplies full-size matrices: a decode step costs what the real shape's does.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from ..bench.models import random_model
from ..checkpoint.layout import checkpoint_files, read_config
from ..checkpoint.load import load_weights, save_checkpoint
from ..checkpoint.names import TINY_DIR
from ..model.config import SHAPES, ModelConfig
from ..model.model import Starcoder2

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
# The bias of MLP units the small model lacks: tanh-GELU is exactly 0 this far below zero, whatever the
# random weights (std 0.02) add to it from a normed input
DEAD_BIAS = -30.0


def inflated_config(small: ModelConfig, shape: dict) -> ModelConfig:
    """`shape`'s sizes with the small model's rotary base and window (both change what it computes, not
    what a step costs; a window keeps attention to the last W keys)."""
    raw = {**shape, "rope_theta": small.rope_theta, "sliding_window": small.sliding_window}
    return ModelConfig.from_dict(raw)


def head_dim_map(small: int, large: int) -> torch.Tensor:
    """Where each of the small head's dimensions goes in the large head: same rotary frequency, pairs kept."""
    s, half_t, half_b = large // small, small // 2, large // 2
    i = torch.arange(small)
    return torch.where(i < half_t, s * i, s * (i - half_t) + half_b)


def check_fits(small: ModelConfig, large: ModelConfig) -> None:
    """Raise ValueError unless `small` can sit inside `large` as described above."""
    problems = []
    if large.hidden_size % small.hidden_size:
        problems.append("hidden_size must be a multiple of the small one")
    if large.head_dim % small.head_dim or small.head_dim % 2:
        problems.append("head_dim must be a multiple of the small one")
    group_t = small.num_attention_heads // small.num_key_value_heads
    group_b = large.num_attention_heads // large.num_key_value_heads
    if large.num_key_value_heads < small.num_key_value_heads or group_b < group_t:
        problems.append("needs as many key/value heads and query heads per group")
    for name in ("intermediate_size", "num_hidden_layers", "vocab_size"):
        if getattr(large, name) < getattr(small, name):
            problems.append(f"{name} must be at least the small one")
    if not (small.use_bias and large.use_bias and small.tie_word_embeddings and large.tie_word_embeddings):
        problems.append("both need biases and tied embeddings")
    if problems:
        raise ValueError("cannot inflate: " + "; ".join(problems))


def inflate(small: Starcoder2, config: ModelConfig, seed: int = 0) -> Starcoder2:
    """A model of `config` (on the CPU, in the small model's dtype) computing `small`'s logits on the small
    vocabulary."""
    check_fits(small.config, config)
    t = small.config
    large = random_model(config, torch.device("cpu"), small.dtype, "sdpa", seed)
    r = config.hidden_size // t.hidden_size

    def stream(v: torch.Tensor) -> torch.Tensor:  # a vector along the hidden size, in every copy
        return v.repeat(r)

    def reads(w: torch.Tensor) -> torch.Tensor:  # (out, D_t) -> (out, D_b)
        return w.repeat(1, r) / r

    def writes(w: torch.Tensor) -> torch.Tensor:  # (D_t, in) -> (D_b, in)
        return w.repeat(r, 1)

    heads = _head_rows(t, config)
    with torch.no_grad():
        large.model.embed_tokens.weight[: t.vocab_size] = small.model.embed_tokens.weight.repeat(1, r)
        large.model.norm.weight.copy_(stream(small.model.norm.weight) / r)
        large.model.norm.bias.copy_(stream(small.model.norm.bias) / r)
        for i, block_b in enumerate(large.model.layers):
            ab, mb = block_b.self_attn, block_b.mlp
            # keys and values only where a small head's dimensions sit: the rest of each query head then
            # scores nothing, and what the attention writes is zero there
            for proj in (ab.k_proj, ab.v_proj):
                proj.weight.zero_()
                proj.bias.zero_()
            mb.c_fc.bias.fill_(DEAD_BIAS)
            if i >= t.num_hidden_layers:  # passes the stream on: no values, no biases written
                ab.o_proj.bias.zero_()
                mb.c_proj.bias.zero_()
                for norm in (block_b.input_layernorm, block_b.post_attention_layernorm):
                    norm.weight.fill_(1.0)
                    norm.bias.zero_()
                continue
            block_t = small.model.layers[i]
            for norm in ("input_layernorm", "post_attention_layernorm"):
                for attr in ("weight", "bias"):
                    getattr(getattr(block_b, norm), attr).copy_(stream(getattr(getattr(block_t, norm), attr)))
            at, mt = block_t.self_attn, block_t.mlp
            for proj, (rows, sources), scale in (("q_proj", heads.q, heads.q_scale), ("k_proj", heads.kv, 1.0),
                                                 ("v_proj", heads.kv, 1.0)):  # fmt: skip
                getattr(ab, proj).weight[rows] = reads(getattr(at, proj).weight[sources]) * scale
                getattr(ab, proj).bias[rows] = getattr(at, proj).bias[sources] * scale
            rows, sources = heads.q
            ab.o_proj.weight[:, rows] = writes(at.o_proj.weight[:, sources]) / heads.copies
            ab.o_proj.weight[:, heads.idle] = 0.0  # heads that copy none read real values
            ab.o_proj.bias.copy_(stream(at.o_proj.bias))
            mb.c_fc.weight[: t.intermediate_size] = reads(mt.c_fc.weight)
            mb.c_fc.bias[: t.intermediate_size] = mt.c_fc.bias
            mb.c_proj.weight[:, : t.intermediate_size] = writes(mt.c_proj.weight)
            mb.c_proj.bias.copy_(stream(mt.c_proj.bias))
    large.tie_weights()
    return large.eval()


class HeadRows(NamedTuple):
    """Rows of the large projections and the small ones' rows they take: `q` and `kv` as (large rows,
    small rows); `idle`: the placed dimensions of query heads that copy no small head; `copies` of each
    small query head (o_proj divides by it)."""

    q: tuple[torch.Tensor, torch.Tensor]
    kv: tuple[torch.Tensor, torch.Tensor]
    idle: torch.Tensor
    copies: int
    q_scale: float


def _head_rows(t: ModelConfig, config: ModelConfig) -> HeadRows:
    """Each large key/value group holds the small group's query heads as many whole times as fit (the same
    attention, so o_proj divides their sum), its other heads idle."""
    dims = head_dim_map(t.head_dim, config.head_dim)
    group_t = t.num_attention_heads // t.num_key_value_heads
    group_b = config.num_attention_heads // config.num_key_value_heads
    copies = group_b // group_t
    placed, source, idle = [], [], []
    for h in range(config.num_attention_heads):
        group, k = divmod(h, group_b)
        rows = h * config.head_dim + dims
        if group < t.num_key_value_heads and k < copies * group_t:
            placed.append(rows)
            source.append((group * group_t + k % group_t) * t.head_dim + torch.arange(t.head_dim))
        else:
            idle.append(rows)
    kv = [c * config.head_dim + dims for c in range(t.num_key_value_heads)]
    kv_source = torch.arange(t.num_key_value_heads * t.head_dim)
    return HeadRows(
        q=(torch.cat(placed), torch.cat(source)),
        kv=(torch.cat(kv), kv_source),
        idle=torch.cat(idle) if idle else torch.empty(0, dtype=torch.long),
        copies=copies,
        q_scale=math.sqrt(config.head_dim / t.head_dim),
    )


def load_plain(folder: Path, dtype: torch.dtype = torch.bfloat16) -> Starcoder2:
    """A checkpoint's model with plain nn.Linear layers (no kernels chosen: only its values are read)."""
    with torch.device("meta"):
        model = Starcoder2(read_config(folder))
    load_weights(model, checkpoint_files(folder), device=torch.device("cpu"), dtype=dtype)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="3b", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="only this many layers")
    parser.add_argument("--source", type=Path, default=TINY_DIR, help="the trained model (default: tiny)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    small = load_plain(args.source)
    shape = {**SHAPES[args.shape], **({"num_hidden_layers": args.layers} if args.layers else {})}
    large = inflate(small, inflated_config(small.config, shape))
    save_checkpoint(large, args.out)
    for name in TOKENIZER_FILES:
        if (args.source / name).is_file():
            shutil.copyfile(args.source / name, args.out / name)
    print(f"{args.out}: {args.shape} shape, {large.config.num_hidden_layers} layers, {args.source}'s logits")


if __name__ == "__main__":
    main()
