"""The models a benchmark runs: random weights of a real shape, a reference engine to compare with (registered
by whoever has it installed), sample prompts, load measurements in fresh processes, greedy agreement."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..checkpoint.load import save_checkpoint
from ..checkpoint.names import TINY_DIR
from ..completion.generate import generate
from ..completion.request import CompletionRequest, prompt_for
from ..completion.tokenizer import Tokenizer
from ..errors import InputError
from ..model.config import SHAPES, ModelConfig
from ..model.device import resolve_dtype
from ..model.linear import UpcastLinear
from ..model.model import Starcoder2
from ..model.quant import QuantizedLinear
from ..settings import config_path


def shape_config(shape: str, layers: int | None) -> ModelConfig:
    if shape == "tiny":
        config = ModelConfig.from_file(TINY_DIR / "config.json")
    elif shape in SHAPES:
        config = ModelConfig.from_dict(SHAPES[shape])
    else:
        raise InputError(f"unknown --shape {shape!r}; use {', '.join([*SHAPES, 'tiny'])}")
    if layers is not None:
        if layers < 1:
            raise InputError("--layers must be ≥ 1")
        config = ModelConfig.from_dict({**config.to_dict(), "num_hidden_layers": layers})
    return config


def random_model(
    config: ModelConfig, device: torch.device, dtype: torch.dtype, attn: str, seed: int
) -> Starcoder2:
    """Random weights of a real shape (normal, std 0.02; norms at 1), built in place without an fp32 copy."""
    with torch.device("meta"):
        model = Starcoder2(config, attn=attn)
    model = model.to_empty(device=device).to(dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
            p.requires_grad_(False)
    model.tie_weights()
    return model.eval()


def bench_tokenizer(folder: Path | None) -> Tokenizer:
    """The model's own tokenizer, else the tiny model's (random-weight shapes have none)."""
    for candidate in (folder, TINY_DIR):
        if candidate is not None and (candidate / "tokenizer.json").is_file():
            return Tokenizer.from_folder(candidate)
    raise InputError("no tokenizer to build the benchmark's prompts (the built-in tiny model is missing)")


def weight_bytes_per_token(model: Starcoder2) -> int:
    """Bytes of weights one decode step reads: every matrix product's weight and bias as its kernel stores
    them (int8/int4: the packed weight and its scales, not the bf16 original), the embedding row aside."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | UpcastLinear):
            total += sum(t.numel() * t.element_size() for t in (module.weight, module.bias) if t is not None)
        elif isinstance(module, QuantizedLinear):
            total += module.weight_bytes
    return total


class Reference(NamedTuple):
    """Another engine to compare with, registered by whoever has it installed (tests/vs_transformers.py
    for transformers, which sc2cli never imports): `twin(model)` shares our weights and speaks
    transformers' API (`__call__(ids, logits_to_keep=1)`, `generate`); `load` is the body of a script
    that loads `folder` in `dtype` from disk (see LOAD_SCRIPT)."""

    twin: Callable[[Starcoder2], Any]
    load: str


REFERENCES: dict[str, Reference] = {}


def unquantized_twin(model: Starcoder2) -> Starcoder2:
    """Our model again, sharing the same (unquantized) weight tensors: the reference for agreement."""
    with torch.device("meta"):
        twin = Starcoder2(model.config, attn=model.attn_backend)
    state = dict(model.named_parameters())
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    twin.load_state_dict(state, strict=True, assign=True)
    twin.tie_weights()
    return twin.eval()


def prompt_ids(request, tokenizer: Tokenizer, model: Starcoder2) -> tuple[int, ...]:
    return prompt_for(request, tokenizer, model.config.max_position_embeddings, model.config).ids


def sample_document(target_tokens: int, tokenizer: Tokenizer) -> str:
    """Real Python of about `target_tokens` tokens: this package's own sources, repeated if short."""
    sources = sorted(Path(__file__).parents[1].rglob("*.py"))
    text = ""
    while len(tokenizer.encode(text)) < target_tokens:
        for path in sources:
            text += path.read_text(encoding="utf-8")
            if len(tokenizer.encode(text)) >= target_tokens:
                break
    lines = text.splitlines(keepends=True)
    while len(lines) > 1 and len(tokenizer.encode("".join(lines))) > target_tokens:
        lines = lines[: int(len(lines) * 0.97)]
    return "".join(lines)


def fim_request(document: str, at: float, max_tokens: int):
    lines = document.splitlines(keepends=True)
    cut = sum(len(line) for line in lines[: int(len(lines) * at)])
    return CompletionRequest(
        document[:cut], document[cut:], path="bench.py", repo="sc2", max_tokens=max_tokens, raw=True
    )


# ------------------------------------------------------------------------------------------------ loading


# A fresh process's load time and peak memory growth; `load` is an engine's loading, which sets `before`
# (the RSS once its code is imported) and `start`.
LOAD_SCRIPT = """
import json, sys, time, torch
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
folder, dtype, quantize = sys.argv[1:4]
{load}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_growth": hwm() - before}}))
"""
SC2_LOAD = """import sc2cli
from sc2cli.model.config import ModelConfig
from sc2cli.model.model import Starcoder2
with torch.device("meta"):
    Starcoder2(ModelConfig(num_hidden_layers=1))
before = rss(); start = time.perf_counter()
sc2cli.load_model(folder, dtype=dtype, device="cpu", quantize=quantize)
"""


def measure_load(
    folder: Path, engines: list[str], dtype: str, runs: int = 1, quantize: str = "none"
) -> dict[str, dict[str, float]]:
    """Load time and peak memory growth, each engine in fresh processes (page cache warmed first); sc2's
    with `quantize` (from the packed-weight cache, when an earlier load wrote it)."""
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as handle:
            while handle.read(64 << 20):
                pass
    out: dict[str, dict[str, float]] = {}
    for engine in engines:
        samples = []
        for _ in range(runs):
            result = subprocess.run(
                [sys.executable, "-c", LOAD_SCRIPT.format(load=_load_body(engine)), str(folder), dtype, quantize],
                capture_output=True, text=True, check=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
            )  # fmt: skip
            samples.append(json.loads(result.stdout.strip().splitlines()[-1]))
        out[engine] = {
            "load_s": statistics.median(s["seconds"] for s in samples),
            "peak_rss_growth_gb": statistics.median(s["peak_growth"] for s in samples) / 1e9,
        }
    return out


def _load_body(engine: str) -> str:
    return SC2_LOAD if engine == "sc2" else REFERENCES[engine].load


def write_random_checkpoint(
    shape: str, layers: int | None, folder: Path, file_dtype: str, seed: int = 0
) -> Path:
    """A random checkpoint of a real shape on disk (fp32 like the 3B repo, or bf16), to measure loading."""
    config = shape_config(shape, layers)
    model = random_model(config, torch.device("cpu"), torch.bfloat16, "sdpa", seed)
    return save_checkpoint(model, folder, resolve_dtype(file_dtype, torch.device("cpu")))


def random_checkpoint(shape: str, layers: int | None, file_dtype: str, log: Callable[[str], None]) -> Path:
    """The random checkpoint of a shape that `--load` and llama.cpp read, written once to the bench folder
    beside the config file, with the tiny model's tokenizer (a GGUF file needs one)."""
    folder = config_path().parent / "bench" / f"{shape}-{layers or 'all'}-{file_dtype}"
    if not (folder / "model.safetensors").is_file():
        log(f"writing a random {shape} checkpoint ({file_dtype}) to {folder}")
        write_random_checkpoint(shape, layers, folder, file_dtype)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            shutil.copyfile(TINY_DIR / name, folder / name)
    return folder


@torch.inference_mode()
def greedy_agreement(reference: Starcoder2, other: Starcoder2, ids: list[int], n: int) -> float:
    """Share of the reference's `n` greedy tokens that `other` also picks, fed the same text (teacher
    forcing, so one early difference does not make every later position differ)."""
    tokens = [s.token for s in generate(reference, ids, max_new_tokens=n)]
    logits = other(torch.tensor([ids + tokens], device=other.device))[0, len(ids) - 1 : -1]  # (n, V)
    picks = logits.float().argmax(-1).tolist()
    return sum(a == b for a, b in zip(picks, tokens, strict=False)) / max(len(tokens), 1)
