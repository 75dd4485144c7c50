"""`sc2 bench`: how fast a model runs here, measured the same way for sc2 and (optionally) transformers and
llama.cpp.

Every figure is the median of several runs after a warm-up; rival engines run on the same weights in the
same run, interleaved (transformers in this process, llama.cpp's llama-bench as a subprocess on the
checkpoint converted to GGUF), so their ratio is fair on a noisy machine. A random-weight model of a real
shape (`--shape 3b`) shows the speed before downloading anything; its runs never stop early on EOS.
Measurements only: nothing here asserts a time.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.load import choose_run_paths, load_checkpoint
from ..checkpoint.names import TINY_DIR
from ..checkpoint.open import resolve_model
from ..completion.engine import Engine
from ..completion.events import Done
from ..completion.request import CompletionRequest
from ..completion.tokenizer import Tokenizer
from ..errors import InputError
from ..model.attention import select_backend
from ..model.device import default_budget, resolve_device, resolve_dtype
from ..model.linear import prepare
from ..model.model import Starcoder2
from .llama_cpp import (
    FILE_TYPES,
    LlamaBench,
    LlamaCpp,
    LlamaCppError,
    find_llama_cpp,
    gguf_for,
    llama_cpp_off,
)
from .measure import (
    decode_rate,
    interleaved,
    median_time,
    memory_bandwidth,
    ours_generate,
    ours_prefill,
    paired_ratio,
    peak_rss_bytes,
    random_ids,
    theirs_generate,
    theirs_prefill,
    waiter,
)
from .models import (
    REFERENCES,
    bench_tokenizer,
    fim_request,
    greedy_agreement,
    prompt_ids,
    random_checkpoint,
    random_model,
    sample_document,
    shape_config,
    unquantized_twin,
    weight_bytes_per_token,
)
from .speculate import bench_speculation


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
    speculate: bool = False  # decode with and without drafts from the prompt (speculate.py's workloads)
    llama_cpp: str | None = None  # llama.cpp beside sc2: a path or "none" (else $SC2_LLAMA_CPP, then PATH)
    look_for_llama_cpp: bool = False  # whether to look for it at all when llama_cpp is None
    seed: int = 0


RIVALS = ("transformers", "llama.cpp")  # the engines sc2's figures are divided by


@dataclass
class Report:
    setup: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, float] = field(default_factory=dict)
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {engine: value}
    notes: list[str] = field(default_factory=list)
    paired: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {rival: rounds' ratio}

    def add(self, metric: str, engine: str, value: float) -> None:
        self.results.setdefault(metric, {})[engine] = value

    def add_rounds(self, metric: str, rates: dict[str, list[float]]) -> None:
        """Each engine's median rate, and sc2's ratio to each rival engine measured in the same rounds as
        the median of the rounds' ratios (measure.paired_ratio)."""
        for engine, samples in rates.items():
            self.add(metric, engine, round(statistics.median(samples), 2))
            if engine.startswith(RIVALS) and "sc2" in rates:
                self.paired.setdefault(metric, {})[engine] = paired_ratio(rates["sc2"], samples)

    def ratios(self) -> dict[str, dict[str, float]]:
        """sc2's figure over each rival engine's, for every metric both have (from the rounds where both were
        measured in them): above 1 is sc2 faster for tokens per second, slower for seconds."""
        out: dict[str, dict[str, float]] = {}
        for metric, values in self.results.items():
            ours = values.get("sc2")
            for engine, theirs in values.items():
                if engine.startswith(RIVALS) and ours and theirs:
                    ratio = self.paired.get(metric, {}).get(engine, ours / theirs)
                    out.setdefault(metric, {})[f"sc2 / {engine}"] = round(ratio, 3)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "setup": self.setup,
            "machine": self.machine,
            "results": self.results,
            "ratios": self.ratios(),
            "notes": self.notes,
        }


def run_bench(options: BenchOptions, log: Callable[[str], None] = lambda m: None) -> Report:
    device = resolve_device(options.device)
    report = Report()
    label = options.model or f"random {options.shape}"
    options, llama = _find_llama(options, report, log)  # before anything runs: a wrong path fails at once
    report.machine = {**memory_bandwidth(device), "threads": torch.get_num_threads()}
    where = "memory" if device.type == "cpu" else f"{device} memory"  # the weights' own memory
    log(f"{where}: {report.machine['copy_gbps']} GB/s copy, {report.machine['read_gbps']} GB/s read")
    model, folder, load_s = _build(options, device, report, log)
    if (
        options.model is not None
    ):  # loaded and quantized as the CLI does: its unquantized twin is loaded apart
        reference = _unquantized(folder, device, options) if options.quantize != "none" else None
        twin = REFERENCES["transformers"].twin(reference or model) if options.vs_transformers else None
        kernels = model.kernels
    else:
        twin = REFERENCES["transformers"].twin(model) if options.vs_transformers else None
        reference = unquantized_twin(model) if options.quantize != "none" else None
        kernels = prepare(model, options.quantize) + choose_run_paths(model, model.attn_backend)
    report.setup.update(
        {
            "model": label,
            "layers": model.config.num_hidden_layers,
            "device": str(device),
            "dtype": str(resolve_dtype(options.dtype, device)).removeprefix("torch."),
            "kernels": kernels,
            "attn": model.attn_backend,
            "one_token_attention": model.single_query,
            "prompt_attention": model.prompt_attention,
            "row_costs": model.row_costs,
            "torch": torch.__version__,
            "parameters_b": round(model.config.num_parameters() / 1e9, 3),
        }
    )
    if load_s is not None:
        report.add("load_s", "sc2", round(load_s, 2))
    rival = _llama_bench(options, folder, llama, device, report, log, FILE_TYPES[options.quantize])
    # a quantized mode's prompts are held to llama.cpp's BF16 too (its quantized prompts run slower there)
    quantized = options.quantize != "none"
    baseline = _llama_bench(options, folder, llama, device, report, log, "BF16") if quantized else None
    rivals = [r for r in (rival, baseline) if r is not None]
    _bench_prefill(options, model, twin, rivals, report, log)
    _bench_decode(options, model, twin, rival, report, log)
    report.notes += [f"{r.name}: {r.failure}" for r in rivals if r.failure is not None]
    if options.compile:
        _bench_compile(options, model, report, log)
    tokenizer = bench_tokenizer(folder)
    if reference is not None:
        prompt = fim_request(sample_document(400, tokenizer), 0.7, 1)
        ids = list(prompt_ids(prompt, tokenizer, model))
        share = greedy_agreement(reference, model, ids, 64)
        report.add("greedy_agreement_with_unquantized", "sc2", round(share, 3))
        log(f"greedy agreement with the unquantized model over 64 FIM tokens: {share:.0%}")
        del reference
    _bench_ttft(options, model, twin, tokenizer, report, log)
    if options.edits:
        _bench_edits(options, model, tokenizer, report, log)
    if options.speculate:
        _bench_speculate(options, model, tokenizer, report, log)
    return report


def _build(
    options: BenchOptions, device: torch.device, report: Report, log
) -> tuple[Starcoder2, Path | None, float | None]:
    if (options.model is None) == (options.shape is None):
        raise InputError("give a model (-m FOLDER or repo) or a --shape, not both")
    if options.model is not None:
        folder = resolve_model(options.model)
        start = time.perf_counter()
        model = load_checkpoint(
            folder, device=device, dtype=options.dtype, attn=options.attn, quantize=options.quantize
        )
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


def _find_llama(options: BenchOptions, report: Report, log) -> tuple[BenchOptions, LlamaCpp | None]:
    """The llama.cpp build to run beside sc2, if any; the options to run with. llama.cpp reads weights from
    files: a random shape is written to disk first (once) when llama.cpp was given by path; found on PATH,
    it is left out rather than writing gigabytes unasked."""
    if options.llama_cpp is None and not options.look_for_llama_cpp:
        return options, None
    llama = find_llama_cpp(options.llama_cpp)
    if llama is None:
        if not llama_cpp_off(options.llama_cpp):
            report.notes.append(
                "llama.cpp: not found (give --llama-cpp PATH or set SC2_LLAMA_CPP to compare)"
            )
        return options, None
    if options.shape is None:
        return options, llama
    if llama.source == "PATH":
        report.notes.append(
            "llama.cpp: not run on random --shape weights unless given with --llama-cpp PATH or "
            "SC2_LLAMA_CPP (which writes them to disk first), or on a checkpoint (-m)"
        )
        return options, None
    folder = random_checkpoint(options.shape, options.layers, "bf16", log)
    return dataclasses.replace(options, model=str(folder), shape=None), llama


def _llama_bench(
    options: BenchOptions,
    folder: Path | None,
    llama: LlamaCpp | None,
    device: torch.device,
    report: Report,
    log,
    file_type: str,
) -> LlamaBench | None:
    """llama-bench on the GGUF of `file_type` (the one that pairs with sc2's mode is FILE_TYPES'; made now if
    not cached), or None with a note."""
    if llama is None:
        return None
    report.setup["llama_cpp"] = str(llama.bin)
    try:
        name = options.model.rstrip("/").rsplit("/", 1)[-1] if options.model else "random"
        gguf = gguf_for(folder, file_type, llama, name, log)
    except LlamaCppError as e:
        report.notes.append(f"llama.cpp {file_type}: {e}")
        return None
    return LlamaBench(llama, gguf, file_type, torch.get_num_threads(), cpu=device.type == "cpu")


def _unquantized(folder: Path | None, device: torch.device, options: BenchOptions) -> Starcoder2:
    return load_checkpoint(folder, device=device, dtype=options.dtype, attn=options.attn)


def _bench_prefill(options: BenchOptions, model, twin, rivals: list[LlamaBench], report: Report, log) -> None:
    limit = model.config.max_position_embeddings
    for length in options.prompt_lengths:
        if length >= limit:
            continue
        ids = random_ids(length, model.config.vocab_size, options.seed + length)
        engines = {"sc2": ours_prefill(model, ids)} | (
            {"transformers": theirs_prefill(twin, ids)} if twin else {}
        )
        for run in engines.values():
            run()  # warm-up
        timed = {n: (lambda r=r: median_time(r, 1, 0)) for n, r in engines.items()}
        for rival in rivals:
            if rival.failure is None:
                timed[rival.name] = rival.prefill_seconds(length)  # llama-bench warms up in each run
        rates = {n: [length / s for s in samples] for n, samples in interleaved(options.runs, timed).items()}
        report.add_rounds(f"prefill_{length}_tok_s", _measured(rates, *rivals))
        figures = report.results[f"prefill_{length}_tok_s"]
        log(f"prefill {length}: " + ", ".join(f"{n} {r:.1f} tok/s" for n, r in figures.items()))


def _measured(figures: dict[str, list[float]], *rivals: LlamaBench | None) -> dict[str, list[float]]:
    """The samples, less a rival's when one of its runs failed (then its failure is the report's note)."""
    failed = {r.name for r in rivals if r is not None and r.failure is not None}
    return {name: value for name, value in figures.items() if name not in failed}


def _bench_decode(options: BenchOptions, model, twin, rival: LlamaBench | None, report: Report, log) -> None:
    ids = random_ids(64, model.config.vocab_size, options.seed)
    n = options.decode_tokens
    engines = {"sc2": ours_generate(model, ids, n)}
    if twin is not None:
        engines["transformers"] = theirs_generate(twin, ids, n)
    for run in engines.values():
        run()  # warm-up, once: the interleaved samples below are one run each
    measures = {name: (lambda r=run: decode_rate(r, 1, 0)) for name, run in engines.items()}
    if rival is not None and rival.failure is None:
        measures[rival.name] = rival.decode_rate(n)
    report.add_rounds("decode_tok_s", _measured(interleaved(options.runs, measures), rival))
    rates = report.results["decode_tok_s"]
    if rival is not None and rival.build:
        report.setup["llama_cpp_build"] = rival.build
    weights = weight_bytes_per_token(model)
    report.setup["weight_bytes_per_token_gb"] = round(weights / 1e9, 3)
    report.add(
        "decode_bandwidth_gbps", "sc2", float(f"{weights * rates['sc2'] / 1e9:.3g}")
    )  # a tiny model: still > 0
    log("decode: " + ", ".join(f"{n} {r:.2f} tok/s" for n, r in rates.items()))


def _bench_compile(options: BenchOptions, model, report: Report, log) -> None:
    """torch.compile of the decode step, against eager, on the same cache."""
    ids = random_ids(64, model.config.vocab_size, options.seed)
    device, wait = model.device, waiter(model.device)  # a GPU's steps are queued: timed once done
    compiled = torch.compile(model, dynamic=True)
    start = time.perf_counter()
    cache = model.new_cache(len(ids) + options.decode_tokens + 8)
    with torch.inference_mode():
        model(torch.tensor([ids], device=device), cache)
        compiled(torch.tensor([[ids[-1]]], device=device), cache)
    wait()
    report.add("compile_s", "sc2-compiled", round(time.perf_counter() - start, 1))

    def steps(forward) -> Callable[[], None]:
        def run() -> None:
            cache.truncate(len(ids))
            with torch.inference_mode():
                for t in range(options.decode_tokens):
                    forward(torch.tensor([[ids[t % len(ids)]]], device=device), cache)
            wait()

        return run

    eager, comp = median_time(steps(model), options.runs), median_time(steps(compiled), options.runs)
    report.add("decode_tok_s", "sc2-compiled", round(options.decode_tokens / comp, 2))
    report.add("decode_step_tok_s", "sc2-eager", round(options.decode_tokens / eager, 2))
    log(
        f"compiled decode {options.decode_tokens / comp:.2f} tok/s vs eager {options.decode_tokens / eager:.2f}"
    )


def _first_token_seconds(engine: Engine, request: CompletionRequest) -> tuple[float, Done]:
    """Request to first token: prompt building, prefill (after what is cached) and one sampled token."""
    start = time.perf_counter()
    events = list(engine.stream(request))
    done = events[-1]
    assert isinstance(done, Done)
    return time.perf_counter() - start, done


def _bench_ttft(options: BenchOptions, model, twin, tokenizer: Tokenizer, report: Report, log) -> None:
    document = sample_document(500, tokenizer)
    engine = Engine(model, tokenizer, name="bench", default_budget=model.config.max_position_embeddings)
    request = fim_request(document, 0.7, 1)  # one token: the time to the first
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
    engine = Engine(
        model, tokenizer, name="bench", default_budget=default_budget(model.device.type), cache_slots=2
    )
    document = sample_document(2000, tokenizer)
    request = fim_request(document, 0.8, 1)
    cold, _ = _first_token_seconds(engine, request)
    repeat, _ = _first_token_seconds(engine, request)
    edited = dataclasses.replace(
        request, prefix=request.prefix + "value = compute(1)\n"
    )  # a line above the cursor
    after, done = _first_token_seconds(engine, edited)
    for key, value in {"cold": cold, "repeat": repeat, "after_edit": after}.items():
        report.add(f"ttft_{key}_s", "sc2-server", round(value, 3))
    report.add("after_edit_recomputed_tokens", "sc2-server", done.usage.computed_tokens)
    report.add("after_edit_prompt_tokens", "sc2-server", done.usage.prompt_tokens)
    report.add("after_edit_over_cold", "sc2-server", round(after / cold, 3))
    log(
        f"server TTFT: cold {cold:.2f}s, repeat {repeat:.2f}s, after edit {after:.2f}s ({after / cold:.0%} of cold; "
        f"{done.usage.computed_tokens} of {done.usage.prompt_tokens} tokens recomputed)"
    )


def _bench_speculate(options: BenchOptions, model, tokenizer: Tokenizer, report: Report, log) -> None:
    """Greedy completions with and without drafts from the prompt: where the answer overlaps the file,
    and where there is nothing to copy."""
    engine = Engine(model, tokenizer, name="bench", default_budget=model.config.max_position_embeddings)
    document = sample_document(600, tokenizer)
    results = bench_speculation(
        engine, document, options.decode_tokens, options.runs, options.seed, report.add
    )
    for engine, rate in report.results.get("decode_tok_s", {}).items():
        if engine.startswith("llama.cpp"):  # its plain decode: llama-bench drafts nothing from the prompt
            report.add("decode_overlap_tok_s", engine, rate)
            report.notes.append(
                f"{engine} in decode_overlap_tok_s: its plain decode (no drafts from the prompt)"
            )
    for name, f in results.items():
        log(
            f"speculative decoding, {name.replace('_', '-')}: {f['speculate_tok_s']:.2f} vs {f['plain_tok_s']:.2f} "
            f"tok/s without ({f['speedup']:.2f}x), {f['acceptance']:.0%} of {f['drafted']:.0f} drafted tokens kept"
        )
