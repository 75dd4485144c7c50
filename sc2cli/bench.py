"""`sc2 bench`: how fast a model runs here, measured the same way for sc2 and (optionally) transformers.

Every figure is the median of several runs after a warm-up; rival engines run on the same weights in the
same process, interleaved, so their ratio is fair on a noisy machine. A random-weight model of a real
shape (`--shape 3b`) shows the speed before downloading anything; its runs never stop early on EOS.
Measurements only: nothing here asserts a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .config import SHAPES, ModelConfig
from .device import resolve_device, resolve_dtype
from .errors import InputError
from .generate import PromptCache, generate, prefill
from .linear import DynamicInt8Linear, UpcastLinear, WeightOnlyInt8Linear, prepare
from .model import Starcoder2
from .tokenizer import Tokenizer

TINY_DIR = Path(__file__).parent / "tiny"


@dataclass
class BenchOptions:
    model: str | None = None  # a checkpoint folder; or
    shape: str | None = None  # 3b, 7b, 15b, tiny: random weights of that shape
    layers: int | None = None
    device: str | None = None
    dtype: str | None = None
    attn: str = "auto"
    quantize: str = "none"
    prompt_lengths: tuple[int, ...] = (128, 512, 2048)
    decode_tokens: int = 32
    runs: int = 3
    vs_transformers: bool = False
    compile: bool = False
    edits: bool = False  # time to first token: cold, identical repeat, after a one-line edit (warm server)
    seed: int = 0


@dataclass
class Report:
    setup: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, float] = field(default_factory=dict)
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {engine: value}
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, engine: str, value: float) -> None:
        self.results.setdefault(metric, {})[engine] = value

    def to_json(self) -> dict[str, Any]:
        return {"setup": self.setup, "machine": self.machine, "results": self.results, "notes": self.notes}


def median_time(fn: Callable[[], Any], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ machine


def memory_bandwidth(size_mb: int = 512) -> dict[str, float]:
    """Copy (read + write) and read bandwidth of main memory, in GB/s, on buffers far larger than caches."""
    a = torch.ones(size_mb << 18, dtype=torch.float32)  # size_mb MiB
    b = torch.empty_like(a)
    copy = median_time(lambda: b.copy_(a), 5)
    read = median_time(lambda: a.sum(), 5)
    return {"copy_gbps": round(2 * a.nbytes / copy / 1e9, 1), "read_gbps": round(a.nbytes / read / 1e9, 1)}


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


# ------------------------------------------------------------------------------------------------ models


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
    """Bytes of weights one decode step reads: every matrix product (the embedding row aside)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | UpcastLinear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, DynamicInt8Linear | WeightOnlyInt8Linear):
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
    from .request import prompt_for

    return prompt_for(request, tokenizer, model.config.max_position_embeddings, model.config).ids


# ------------------------------------------------------------------------------------------------ timing


def _ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 1, (n,), generator=g).tolist()


def ours_prefill(model: Starcoder2, ids: list[int]) -> Callable[[], Any]:
    def run() -> None:
        prefill(model, ids, PromptCache(model, len(ids) + 1))

    return run


def theirs_prefill(twin, ids: list[int]) -> Callable[[], Any]:
    tensor = torch.tensor([ids])

    def run() -> None:
        with torch.inference_mode():
            twin(tensor, logits_to_keep=1)

    return run


def ours_generate(model: Starcoder2, ids: list[int], n: int) -> Callable[[], list[float]]:
    """A run of `n` new tokens; returns when each arrived."""

    def run() -> list[float]:  # no stop ids: random weights run to n
        return [time.perf_counter() for _ in generate(model, ids, max_new_tokens=n)]

    return run


class TokenClock:
    """When each new token arrived, as a transformers streamer (`put` gets the prompt first, then each
    new token; `end` at the finish)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def theirs_generate(twin, ids: list[int], n: int) -> Callable[[], list[float]]:
    tensor = torch.tensor([ids])

    def run() -> list[float]:
        clock = TokenClock()
        with torch.inference_mode():
            twin.generate(tensor, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
        return clock.times

    return run


def decode_rate(run: Callable[[], list[float]], runs: int, warmup: int = 1) -> float:
    """Tokens per second of decode alone: from the first new token to the last of a run (the prompt's
    prefill comes before the first), median over `runs` after `warmup` runs."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(runs):
        times = run()
        rates.append((len(times) - 1) / max(times[-1] - times[0], 1e-9))
    return statistics.median(rates)


# ------------------------------------------------------------------------------------------------ running


def run_bench(options: BenchOptions, log: Callable[[str], None] = lambda m: None) -> Report:
    device = resolve_device(options.device)
    report = Report()
    report.machine = {**memory_bandwidth(), "threads": torch.get_num_threads()}
    log(f"memory: {report.machine['copy_gbps']} GB/s copy, {report.machine['read_gbps']} GB/s read")
    model, folder, load_s = _build(options, device, report, log)
    twin = REFERENCES["transformers"].twin(model) if options.vs_transformers else None
    reference = unquantized_twin(model) if options.quantize != "none" else None
    kernels = prepare(model, options.quantize)
    report.setup.update(
        {
            "model": options.model or f"random {options.shape}",
            "layers": model.config.num_hidden_layers,
            "device": str(device),
            "dtype": str(resolve_dtype(options.dtype, device)).removeprefix("torch."),
            "kernels": kernels,
            "attn": model.attn_backend,
            "torch": torch.__version__,
            "parameters_b": round(model.config.num_parameters() / 1e9, 3),
        }
    )
    if load_s is not None:
        report.add("load_s", "sc2", round(load_s, 2))
    _bench_prefill(options, model, twin, report, log)
    _bench_decode(options, model, twin, report, log)
    if options.compile:
        _bench_compile(options, model, report, log)
    tokenizer = bench_tokenizer(folder)
    if reference is not None:
        prompt = _fim_request(sample_document(400, tokenizer), 0.7, 1)
        ids = list(prompt_ids(prompt, tokenizer, model))
        share = greedy_agreement(reference, model, ids, 64)
        report.add("greedy_agreement_with_unquantized", "sc2", round(share, 3))
        log(f"greedy agreement with the unquantized model over 64 FIM tokens: {share:.0%}")
        del reference
    _bench_ttft(options, model, twin, tokenizer, report, log)
    if options.edits:
        _bench_edits(options, model, tokenizer, report, log)
    return report


def _build(
    options: BenchOptions, device: torch.device, report: Report, log
) -> tuple[Starcoder2, Path | None, float | None]:
    from .attention import select_backend
    from .weights import load_checkpoint

    if (options.model is None) == (options.shape is None):
        raise InputError("give a model (-m FOLDER or repo) or a --shape, not both")
    if options.model is not None:
        from .hub import resolve_model

        folder = resolve_model(options.model)
        start = time.perf_counter()
        model = load_checkpoint(folder, device=device, dtype=options.dtype, attn=options.attn)
        load_s = time.perf_counter() - start
        report.setup["peak_rss_gb"] = round(peak_rss_bytes() / 1e9, 2)
        log(f"loaded {options.model} in {load_s:.1f}s")
        return model, folder, load_s
    config = shape_config(options.shape, options.layers)
    dtype = resolve_dtype(options.dtype, device)
    if options.quantize == "int8" and options.dtype in (None, "auto") and device.type == "cpu":
        dtype = torch.bfloat16
    model = random_model(config, device, dtype, select_backend(options.attn, device, dtype), options.seed)
    log(f"built a random {options.shape} ({config.num_hidden_layers} layers, {dtype})")
    return model, TINY_DIR if options.shape == "tiny" else None, None


def _interleaved(runs: int, engines: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Median of `runs` alternating measurements per engine."""
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, measure in engines.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


def _bench_prefill(options: BenchOptions, model, twin, report: Report, log) -> None:
    limit = model.config.max_position_embeddings
    for length in options.prompt_lengths:
        if length >= limit:
            continue
        ids = _ids(length, model.config.vocab_size, options.seed + length)
        engines = {"sc2": ours_prefill(model, ids)} | (
            {"transformers": theirs_prefill(twin, ids)} if twin else {}
        )
        for run in engines.values():
            run()  # warm-up
        timed = _interleaved(
            options.runs, {n: (lambda r=r: median_time(r, 1, 0)) for n, r in engines.items()}
        )
        for name, seconds in timed.items():
            report.add(f"prefill_{length}_tok_s", name, round(length / seconds, 2))
        log(f"prefill {length}: " + ", ".join(f"{n} {length / s:.1f} tok/s" for n, s in timed.items()))


def _bench_decode(options: BenchOptions, model, twin, report: Report, log) -> None:
    ids = _ids(64, model.config.vocab_size, options.seed)
    n = options.decode_tokens
    engines = {"sc2": ours_generate(model, ids, n)}
    if twin is not None:
        engines["transformers"] = theirs_generate(twin, ids, n)
    for run in engines.values():
        run()  # warm-up, once: the interleaved samples below are one run each
    rates = _interleaved(
        options.runs, {name: (lambda r=run: decode_rate(r, 1, 0)) for name, run in engines.items()}
    )
    for name, rate in rates.items():
        report.add("decode_tok_s", name, round(rate, 2))
    weights = weight_bytes_per_token(model)
    report.setup["weight_bytes_per_token_gb"] = round(weights / 1e9, 3)
    report.add("decode_bandwidth_gbps", "sc2", round(weights * rates["sc2"] / 1e9, 3))
    log("decode: " + ", ".join(f"{n} {r:.2f} tok/s" for n, r in rates.items()))


def _bench_compile(options: BenchOptions, model, report: Report, log) -> None:
    """torch.compile of the decode step, against eager, on the same cache."""
    ids = _ids(64, model.config.vocab_size, options.seed)
    compiled = torch.compile(model, dynamic=True)
    start = time.perf_counter()
    cache = model.new_cache(len(ids) + options.decode_tokens + 8)
    with torch.inference_mode():
        model(torch.tensor([ids]), cache)
        compiled(torch.tensor([[ids[-1]]]), cache)
    report.add("compile_s", "sc2-compiled", round(time.perf_counter() - start, 1))

    def steps(forward) -> Callable[[], None]:
        def run() -> None:
            cache.truncate(len(ids))
            with torch.inference_mode():
                for t in range(options.decode_tokens):
                    forward(torch.tensor([[ids[t % len(ids)]]]), cache)

        return run

    eager, comp = median_time(steps(model), options.runs), median_time(steps(compiled), options.runs)
    report.add("decode_tok_s", "sc2-compiled", round(options.decode_tokens / comp, 2))
    report.add("decode_step_tok_s", "sc2-eager", round(options.decode_tokens / eager, 2))
    log(
        f"compiled decode {options.decode_tokens / comp:.2f} tok/s vs eager {options.decode_tokens / eager:.2f}"
    )


def sample_document(target_tokens: int, tokenizer: Tokenizer) -> str:
    """Real Python of about `target_tokens` tokens: this package's own sources, repeated if short."""
    sources = sorted(Path(__file__).parent.glob("*.py"))
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


def _fim_request(document: str, at: float, max_tokens: int):
    from .request import CompletionRequest

    lines = document.splitlines(keepends=True)
    cut = sum(len(line) for line in lines[: int(len(lines) * at)])
    return CompletionRequest(
        document[:cut], document[cut:], path="bench.py", repo="sc2", max_tokens=max_tokens, raw=True
    )


def _first_token_seconds(engine, request) -> tuple[float, dict]:
    """Request to first token: prompt building, prefill (after what is cached) and one sampled token."""
    start = time.perf_counter()
    done: dict = {}
    for event in engine.stream(request):
        done = event
    return time.perf_counter() - start, done


def _bench_ttft(options: BenchOptions, model, twin, tokenizer: Tokenizer, report: Report, log) -> None:
    from .completion import Engine

    document = sample_document(500, tokenizer)
    engine = Engine(model, tokenizer, name="bench", default_budget=model.config.max_position_embeddings)
    request = _fim_request(document, 0.7, 1)  # one token: the time to the first
    seconds = statistics.median(_first_token_seconds(engine, request)[0] for _ in range(options.runs))
    report.add("fim_ttft_s", "sc2", round(seconds, 3))
    if twin is not None:
        ids = list(engine.prompt(request).ids)
        report.add(
            "fim_ttft_s", "transformers", round(median_time(theirs_generate(twin, ids, 1), options.runs), 3)
        )
    log(f"time to first token (FIM, {len(engine.prompt(request).ids)} prompt tokens): {seconds:.2f}s")


def _bench_edits(options: BenchOptions, model, tokenizer: Tokenizer, report: Report, log) -> None:
    """A warm server's engine: cold, identical repeat, and a one-line edit near the cursor of a 2,000-token file."""
    from .completion import Engine
    from .device import default_budget

    engine = Engine(
        model, tokenizer, name="bench", default_budget=default_budget(model.device.type), cache_slots=2
    )
    document = sample_document(2000, tokenizer)
    request = _fim_request(document, 0.8, 1)
    cold, _ = _first_token_seconds(engine, request)
    repeat, _ = _first_token_seconds(engine, request)
    edited = dataclasses.replace(
        request, prefix=request.prefix + "value = compute(1)\n"
    )  # a line above the cursor
    after, done = _first_token_seconds(engine, edited)
    for key, value in {"cold": cold, "repeat": repeat, "after_edit": after}.items():
        report.add(f"ttft_{key}_s", "sc2-server", round(value, 3))
    report.add("after_edit_recomputed_tokens", "sc2-server", done["prompt_tokens"] - done["cached_tokens"])
    report.add("after_edit_prompt_tokens", "sc2-server", done["prompt_tokens"])
    report.add("after_edit_over_cold", "sc2-server", round(after / cold, 3))
    log(
        f"server TTFT: cold {cold:.2f}s, repeat {repeat:.2f}s, after edit {after:.2f}s ({after / cold:.0%} of cold; "
        f"{done['prompt_tokens'] - done['cached_tokens']} of {done['prompt_tokens']} tokens recomputed)"
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
folder, dtype = sys.argv[1], sys.argv[2]
{load}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_growth": hwm() - before}}))
"""
SC2_LOAD = """import sc2cli
from sc2cli.config import ModelConfig
from sc2cli.model import Starcoder2
with torch.device("meta"):
    Starcoder2(ModelConfig(num_hidden_layers=1))
before = rss(); start = time.perf_counter()
sc2cli.load_model(folder, dtype=dtype, device="cpu")
"""


def measure_load(folder: Path, engines: list[str], dtype: str, runs: int = 1) -> dict[str, dict[str, float]]:
    """Load time and peak memory growth, each engine in fresh processes (page cache warmed first)."""
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as handle:
            while handle.read(64 << 20):
                pass
    out: dict[str, dict[str, float]] = {}
    for engine in engines:
        samples = []
        for _ in range(runs):
            result = subprocess.run(
                [sys.executable, "-c", LOAD_SCRIPT.format(load=_load_body(engine)), str(folder), dtype],
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
    from .weights import save_checkpoint

    config = shape_config(shape, layers)
    model = random_model(config, torch.device("cpu"), torch.bfloat16, "sdpa", seed)
    return save_checkpoint(model, folder, resolve_dtype(file_dtype, torch.device("cpu")))


@torch.inference_mode()
def greedy_agreement(reference: Starcoder2, other: Starcoder2, ids: list[int], n: int) -> float:
    """Share of the reference's `n` greedy tokens that `other` also picks, fed the same text (teacher
    forcing, so one early difference does not make every later position differ)."""
    tokens = [s.token for s in generate(reference, ids, max_new_tokens=n)]
    logits = other(torch.tensor([ids + tokens], device=other.device))[0, len(ids) - 1 : -1]  # (n, V)
    picks = logits.float().argmax(-1).tolist()
    return sum(a == b for a, b in zip(picks, tokens, strict=False)) / max(len(tokens), 1)
