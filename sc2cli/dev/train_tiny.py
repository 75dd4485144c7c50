"""Train the built-in tiny StarCoder2 model that `--model tiny` loads (sc2cli/tiny/).

    python -m sc2cli.dev.train_tiny --out sc2cli/tiny

A StarCoder2-architecture model (our `Starcoder2`, GQA, a sliding window shorter than the training
sequences) with its own byte-level BPE tokenizer, trained from scratch on the Python sources that come
with any install of the package (see tinydata.py), with StarCoder2's objective: repository-format
documents, metadata dropped in half of them, character-level FIM (PSM) on half of the files. Budgeted
in steps, not time, and seeded throughout: a rerun with the same installed versions builds the same
data and the same model (up to floating-point differences between machines).

The held-out set is tests/data/heldout/: Python files written for the purpose, in no package, so never
in the training data (files with identical text would be dropped from it anyway). Its loss is printed
during training, in the repository format and with FIM.

Recorded run (the shipped sc2cli/tiny/), with the defaults: 2 cores (no AVX-512 bf16), torch 2.13 CPU,
Python 3.11 with sc2cli's dependencies installed: 36 sources, 1,215 repositories, 35.1M characters;
8,192,000 tokens (4,000 steps of 4 x 512) in 44.9 min, ~3,100 tokens/s; 2.37M parameters, 4.7 MB in
bf16. Held-out loss per token: repository format 2.716, FIM 2.815 (uniform: ln 4096 = 8.318; the
bar, half of it, 4.159), unchanged by the bf16 rounding.

What it has not learned: to continue the prefix from behind the suffix. On held-out code its loss for
the first middle token after `<fim_middle>` is 6.1, against 2.9 for the same token read left to right,
so its completions through the FIM prompt rarely fit the cursor. Cutting half of the FIM examples at
word starts, and shorter FIM pieces, did not change that at this size and budget. Neither did a
deeper model (6 layers, MLP 512, 3 KV heads; 3,600 steps in 49 min) trained with each `<fim_suffix>`
also asked for the middle's first token (a modified script, not kept): the prediction formed at
`<fim_suffix>` (4.3 nats at held-out cursors) but did not reach `<fim_middle>` (6.24), and the
repository loss rose to 3.089.

`--late-steps N` (off by default; the shipped model was trained without it) spends the last N steps on
a FIM-heavy mix (`--late-fim-rate`, `--late-cursor-rate`) with `--late-first-weight` times the mean loss
of each middle's first token added. Measured with `--late-steps 1000` (weight 0.25), 45.5 min: the
first middle token at held-out cursors costs 4.66 nats through sc2's prompt instead of 6.35 (top-1 15%
instead of 3%; left to right 3.13), but the held-out repository loss rises to 2.908 and simple cursor
completions improve only from 1 to 3 of 16; with 1,500 steps at weight 1.0, 4.68 nats and 3.243. Not
shipped: it trades too much of the language model for too little.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model.config import ModelConfig
from ..model.model import Starcoder2
from . import tinydata
from .tinydata import Repository, SourceFile

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sc2cli.dev.train_tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for config.json, weights and tokenizer")
    p.add_argument("--heldout", type=Path, default=Path("tests/data/heldout"), help="held-out .py files")
    p.add_argument("--seed", type=int, default=1234)
    data = p.add_argument_group("data")
    data.add_argument("--vocab-size", type=int, default=4096)
    data.add_argument("--stdlib-chars", type=int, default=12_000_000, help="at most this much of the stdlib")
    data.add_argument("--package-chars", type=int, default=3_000_000, help="at most this much per package")
    data.add_argument("--repo-chars", type=int, default=32_000, help="files per repository document, by size")
    data.add_argument("--tokenizer-chars", type=int, default=12_000_000, help="text the BPE is trained on")
    data.add_argument("--fim-rate", type=float, default=0.5)
    data.add_argument("--meta-rate", type=float, default=0.5, help="documents with repo name and paths")
    data.add_argument("--fim-middle", type=int, default=150, help="longest FIM middle, in characters")
    data.add_argument("--fim-suffix", type=int, default=200, help="longest FIM suffix, in characters")
    data.add_argument("--plain-rate", type=float, default=0.1, help="documents of single files, no layout")
    data.add_argument("--cursor-rate", type=float, default=0.5, help="FIM examples cut at an editor's cursor")
    data.add_argument("--late-steps", type=int, default=0, help="the last steps, on FIM-heavy data")
    data.add_argument("--late-fim-rate", type=float, default=1.0, help="files under FIM in those steps")
    data.add_argument("--late-cursor-rate", type=float, default=1.0, help="cursor cuts in those steps")
    data.add_argument(
        "--late-first-weight", type=float, default=0.25, help="extra loss on each middle's first token then"
    )
    model = p.add_argument_group("model")
    model.add_argument("--layers", type=int, default=4)
    model.add_argument("--hidden", type=int, default=192)
    model.add_argument("--heads", type=int, default=6)
    model.add_argument("--kv-heads", type=int, default=2)
    model.add_argument("--mlp", type=int, default=0, help="intermediate size (default 4 x hidden)")
    model.add_argument("--window", type=int, default=256, help="sliding window")
    model.add_argument("--max-positions", type=int, default=16384)
    model.add_argument("--rope-theta", type=float, default=10000.0)
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, default=4000)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--seq-len", type=int, default=512)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--min-lr-ratio", type=float, default=0.1)
    train.add_argument("--warmup", type=int, default=100)
    train.add_argument("--weight-decay", type=float, default=0.1)
    train.add_argument("--clip", type=float, default=1.0)
    train.add_argument("--eval-every", type=int, default=500)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--compile", action="store_true", help="torch.compile the model (optional speed-up)")
    train.add_argument("--save-dtype", choices=sorted(DTYPES), default="bf16")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data


def heldout_files(folder: Path) -> list[SourceFile]:
    return [SourceFile(p.name, p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.py"))]


def heldout_ids(tokenizer, files: list[SourceFile], *, fim: bool, seed: int = 0) -> list[int]:
    """One repository document of the held-out files, with metadata; with FIM on every file."""
    repo = Repository("sc2-heldout", tuple(files))
    rng = random.Random(seed)
    pieces = tinydata.repository_pieces(
        repo, rng, fim_rate=float(fim), meta_rate=1.0, spans=tinydata.FimSpans()
    )
    return tinydata.encode_pieces(tokenizer, [pieces])[0]


def training_tokens(args: argparse.Namespace, exclude: frozenset[str]):
    """The tokenizer and the token stream: `steps * batch * seq_len + 1` ids, the last `late_steps`
    worth (plus the last target) from the FIM-heavy mix."""
    rng = random.Random(args.seed)
    sources = tinydata.collect_sources(exclude)
    stdlib = {"cpython": sources.pop("cpython")}
    repos = tinydata.sample_repositories(stdlib, rng, cap_chars=args.stdlib_chars, repo_chars=args.repo_chars)
    repos += tinydata.sample_repositories(
        sources, rng, cap_chars=args.package_chars, repo_chars=args.repo_chars
    )
    rng.shuffle(repos)
    chars = sum(len(f.text) for r in repos for f in r.files)
    log(f"data: {len(sources) + 1} sources, {len(repos)} repositories, {chars / 1e6:.1f}M characters")
    t0 = time.perf_counter()
    tokenizer = tinydata.train_tokenizer(_texts(repos, args.tokenizer_chars), args.vocab_size)
    log(f"tokenizer: {tokenizer.get_vocab_size()} tokens in {time.perf_counter() - t0:.0f}s")
    mixes = [(repos, args.steps - args.late_steps, args.fim_rate, args.cursor_rate)]
    if args.late_steps:  # read from the other end: the two mixes share no repository while both fit
        mixes.append((repos[::-1], args.late_steps, args.late_fim_rate, args.late_cursor_rate))
    stream = []
    for i, (part, steps, fim_rate, cursor_rate) in enumerate(mixes):
        n_tokens = steps * args.batch_size * args.seq_len + (i == len(mixes) - 1)  # +1: the last target
        spans = tinydata.FimSpans(args.fim_middle, args.fim_suffix, cursor_rate=cursor_rate)
        docs = tinydata.document_pieces(
            part,
            rng,
            fim_rate=fim_rate,
            meta_rate=args.meta_rate,
            plain_rate=args.plain_rate,
            spans=spans,
        )
        stream += tinydata.token_stream(tokenizer, docs, n_tokens)
    log(f"tokens: {len(stream):,} for {args.steps} steps of {args.batch_size} x {args.seq_len}")
    return tokenizer, torch.tensor(stream, dtype=torch.long)


def _texts(repos: list[Repository], limit: int):
    total = 0
    for repo in repos:
        for f in repo.files:
            if total >= limit:
                return
            total += len(f.text)
            yield f.text


# ------------------------------------------------------------------------------------------------ model


def model_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.mlp or 4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions,
        rope_theta=args.rope_theta,
        sliding_window=args.window,
        tie_word_embeddings=True,
    )


def init_weights(model: Starcoder2, std: float = 0.02) -> None:
    """GPT-2's scheme: N(0, 0.02) matrices, output projections scaled by 1/sqrt(2 * layers), zero biases.
    (PyTorch's defaults give the tied embedding N(0, 1), far too large for an output layer.)"""
    residual_std = std / math.sqrt(2 * model.config.num_hidden_layers)
    for name, param in model.named_parameters():
        if name.endswith(("o_proj.weight", "c_proj.weight")):
            torch.nn.init.normal_(param, std=residual_std)
        elif param.dim() == 2:
            torch.nn.init.normal_(param, std=std)
        elif "norm" in name and name.endswith("weight"):
            torch.nn.init.ones_(param)
        else:
            torch.nn.init.zeros_(param)


def optimizer(model: Starcoder2, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW, weight decay on matrices only (not on biases and norms)."""
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio * lr` at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def token_losses(model: Starcoder2, ids: list[int], chunk: int = 512) -> torch.Tensor:
    """Next-token losses over a whole document (N-1,), fed through a KV cache in chunks, as a long
    prompt is."""
    x = torch.tensor([ids])  # (1, N)
    cache = model.new_cache(max_length=len(ids))
    losses = []
    for start in range(0, len(ids) - 1, chunk):
        end = min(start + chunk, len(ids) - 1)
        logits = model(x[:, start:end], cache)  # (1, T, V)
        losses.append(F.cross_entropy(logits[0].float(), x[0, start + 1 : end + 1], reduction="none"))
    return torch.cat(losses)


def heldout_report(model: Starcoder2, held: dict[str, list[int]]) -> str:
    """Mean loss per token on each held-out document, and on the first two tokens of each FIM middle
    (the ones that need the end of the prefix, across the suffix)."""
    parts = []
    for name, ids in held.items():
        losses = token_losses(model, ids)
        parts.append(f"{name} {losses.mean():.3f}")
        starts = [i + k for i, t in enumerate(ids[:-1]) if t == tinydata.FIM_MIDDLE for k in range(2)]
        if starts:
            parts.append(f"{name}-middle-start {losses[starts].mean():.3f}")
    return "  ".join(parts)


# ------------------------------------------------------------------------------------------------ training


def training_loss(
    logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, first_weight: float = 0.0
) -> torch.Tensor:
    """Mean next-token loss, plus `first_weight` times the mean loss of each middle's first token (the
    targets at `<fim_middle>`): the one token that must be predicted from the end of the prefix, across
    the suffix, and that plain averaging weighs once in a hundred tokens."""
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    first = inputs.reshape(-1) == tinydata.FIM_MIDDLE
    if not first_weight or not first.any():
        return losses.mean()
    return losses.mean() + first_weight * losses[first].mean()


def row_order(rows: int, early: int, seed: int) -> torch.Tensor:
    """The order rows are trained in: the first `early` (the main mix) shuffled, then the rest (the
    FIM-heavy mix) shuffled among themselves."""
    generator = torch.Generator().manual_seed(seed)
    late = early + torch.randperm(rows - early, generator=generator)
    return torch.cat([torch.randperm(early, generator=generator), late])


def train(model: Starcoder2, stream: torch.Tensor, args: argparse.Namespace, evaluate) -> float:
    """The training loop; returns tokens per second."""
    T, B = args.seq_len, args.batch_size
    inputs = stream[:-1].view(-1, T)  # (N, T)
    targets = stream[1:].view(-1, T)
    late_from = args.steps - args.late_steps  # the first step on the late mix
    order = row_order(inputs.shape[0], late_from * B, args.seed)
    opt = optimizer(model, args)
    step_fn = torch.compile(model) if args.compile else model
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args)
        rows = order[step * B : (step + 1) * B]
        logits = step_fn(inputs[rows])  # (B, T, V)
        first_weight = args.late_first_weight if step >= late_from else 0.0
        loss = training_loss(logits, inputs[rows], targets[rows], first_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            rate = (step + 1) * B * T / (time.perf_counter() - t0)
            log(f"step {step:5d}  loss {loss.item():.3f}  |g| {norm:.2f}  lr {opt.param_groups[0]['lr']:.2e}  "
                f"{rate:,.0f} tok/s")  # fmt: skip
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            model.eval()
            log(f"step {step + 1:5d}  held-out {evaluate(model)}")
            model.train()
    model.eval()
    return args.steps * B * T / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ output


def save(model: Starcoder2, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """config.json (the bigcode layout), model.safetensors (tied head stored once), the tokenizer."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = {
        **model.config.to_dict(),
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": DTYPE_NAMES[dtype],
        "use_cache": True,
    }
    (out / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
    generation = {"bos_token_id": 0, "eos_token_id": 0}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tensors = {name: p.detach().to(dtype).contiguous() for name, p in model.named_parameters()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors writes it private; it ships as package data
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")


def tokenizer_config() -> dict:
    """For transformers' AutoTokenizer: use tokenizer.json as it is (the GPT-2 class would swap in its
    own pre-tokenizer), no BOS, the StarCoder2 special tokens."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": 16384,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": list(tinydata.SPECIAL_TOKENS),
    }


def rounded(model: Starcoder2, dtype: torch.dtype) -> Starcoder2:
    """The model as it will load: weights rounded to the stored dtype, computed in fp32."""
    copy = Starcoder2(model.config)
    copy.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return copy.eval()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny softmax gradients are otherwise denormals: 10x slower matmuls
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    heldout = heldout_files(args.heldout)
    exclude = frozenset(tinydata.text_hash(f.text) for f in heldout)
    tokenizer, stream = training_tokens(args, exclude)
    held = {
        "repo": heldout_ids(tokenizer, heldout, fim=False),
        "fim": heldout_ids(tokenizer, heldout, fim=True),
    }
    bar = 0.5 * math.log(tokenizer.get_vocab_size())
    chars = sum(len(f.text) for f in heldout)
    log(
        f"held-out: {chars:,} characters, {len(held['repo']):,} tokens ({chars / len(held['repo']):.2f} per token)"
    )

    def evaluate(m: Starcoder2) -> str:
        return f"{heldout_report(m, held)}  (bar {bar:.3f})"

    config = model_config(args, tokenizer.get_vocab_size())
    model = Starcoder2(config)
    init_weights(model)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {config}")
    rate = train(model, stream, args, evaluate)
    dtype = DTYPES[args.save_dtype]
    log(f"final, fp32: {evaluate(model)}")
    log(f"final, rounded to {args.save_dtype}: {evaluate(rounded(model, dtype))}")
    save(model, tokenizer, args.out, dtype)
    minutes = (time.perf_counter() - started) / 60
    log(f"done in {minutes:.1f} min, {len(stream) - 1:,} tokens, {rate:,.0f} tok/s; wrote {args.out}")


if __name__ == "__main__":
    main()
