"""`sc2 bench`: how fast a model runs here (the measuring is sc2cli/bench/)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import InputError
from ..settings import parse_options
from . import completers
from .app import app
from .options import AttnOpt, DeviceOpt, DtypeOpt, given_settings
from .output import note, write


@app.command(
    short_help="Measure speed: prefill, decode, load, memory.",
    rich_help_panel="Server",
    epilog="Examples:  sc2 bench --shape 3b --quantize int8  ·  sc2 bench -m 3b --quantize int4 --llama-cpp ~/llama.cpp",
)
def bench(
    model: Annotated[str | None, typer.Option("--model", "-m", help="A checkpoint (folder, repo id or alias).", autocompletion=completers.model_names)] = None,
    shape: Annotated[str | None, typer.Option(help="Random weights of a real shape instead: 3b, 7b, 15b or tiny.")] = None,
    layers: Annotated[int | None, typer.Option(help="With --shape: only this many layers.")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    attn: AttnOpt = None,
    quantize: Annotated[str, typer.Option(help="none, int8 or int4 (also reports greedy agreement with unquantized).", autocompletion=completers.values_of("quantize"))] = "none",
    vs: Annotated[str | None, typer.Option("--vs", help="Compare with another engine on the same weights: transformers.")] = None,
    llama_cpp: Annotated[str | None, typer.Option("--llama-cpp", metavar="PATH", help="Run llama.cpp's llama-bench on the same weights too (BF16, Q8_0 or Q4_K_M as --quantize none, int8, int4): its bin folder, source tree or llama-bench. Default: $SC2_LLAMA_CPP, else llama-bench on PATH; 'none' skips it.")] = None,
    prompt_lengths: Annotated[str, typer.Option(help="Prefill lengths, comma-separated.")] = "128,512,2048",
    decode_tokens: Annotated[int, typer.Option(help="Tokens per decode measurement.")] = 32,
    runs: Annotated[int, typer.Option(help="Runs per figure (the median is reported).")] = 3,
    compile: Annotated[bool, typer.Option("--compile", help="Also time a torch.compile'd decode step.")] = False,
    edits: Annotated[bool, typer.Option("--edits", help="Also time a warm server: cold, repeat, after a one-line edit.")] = False,
    speculate: Annotated[bool, typer.Option("--speculate", help="Also time speculative decoding, with and without: where completions overlap the file, where not, and the first asked again of a warm server.")] = False,
    load: Annotated[bool, typer.Option("--load", help="Also time loading from disk and peak memory (fresh processes).")] = False,
    checkpoint_dtype: Annotated[str, typer.Option(help="With --shape --load: the file's dtype (the 3B repo is fp32).")] = "fp32",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:  # fmt: skip
    """Measure load time, prefill and decode speed, time to first token and memory bandwidth."""
    from ..bench import REFERENCES, BenchOptions, run_bench  # torch: the benchmark runs models

    # the settings-like options are checked before anything is measured, naming the option typed
    parse_options(given_settings(device=device, dtype=dtype, attn=attn, quantize=quantize))
    if vs not in (None, "transformers"):
        raise InputError(f"--vs {vs}: only transformers can be compared")
    if vs and vs not in REFERENCES:
        raise InputError(
            f"--vs {vs}: transformers is the test-only reference, which sc2 never imports; from a checkout "
            f'with `pip install -e ".[test]"` run `python -m tests.vs_transformers bench ... --vs {vs}`'
        )
    try:
        lengths = tuple(int(n) for n in prompt_lengths.split(",") if n.strip())
    except ValueError:
        raise InputError(f"--prompt-lengths {prompt_lengths!r}: give numbers separated by commas") from None
    options = BenchOptions(
        model=model, shape=shape, layers=layers, device=device, dtype=dtype, attn=attn or "auto", quantize=quantize,
        prompt_lengths=lengths, decode_tokens=max(decode_tokens, 3), runs=max(runs, 1),
        vs_transformers=vs == "transformers", compile=compile, edits=edits, speculate=speculate,
        llama_cpp=llama_cpp, look_for_llama_cpp=True,
    )  # fmt: skip
    log = (lambda message: None) if as_json else (lambda message: note(message, True))
    report = run_bench(options, log)
    if load:
        _bench_load(report, options, checkpoint_dtype, log)
    if as_json:
        write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print_report(report)


def _bench_load(report, options, checkpoint_dtype: str, log) -> None:
    """Load time and peak RSS from disk, ours and (with --vs) transformers', in fresh processes; with
    --quantize, sc2's quantized loads too (the first may quantize, the second reads the packed weights)."""
    from ..bench import measure_load, random_checkpoint
    from ..checkpoint.layout import read_config
    from ..checkpoint.open import resolve_model

    if options.model:
        folder = resolve_model(options.model)
    else:
        folder = random_checkpoint(options.shape, options.layers, checkpoint_dtype, log)
    engines = ["sc2"] + (["transformers"] if options.vs_transformers else [])
    dtype = options.dtype if options.dtype not in (None, "auto") else "bf16"
    for engine, figures in measure_load(folder, engines, dtype).items():
        report.add("load_s", engine, round(figures["load_s"], 2))
        report.add("load_peak_rss_growth_gb", engine, round(figures["peak_rss_growth_gb"], 2))
    if options.quantize != "none":  # the first load quantizes and writes the packed-weight cache, if absent
        for when in ("first", "second"):
            figures = measure_load(folder, ["sc2"], dtype, quantize=options.quantize)["sc2"]
            report.add(f"load_{options.quantize}_{when}_s", "sc2", round(figures["load_s"], 2))
            peak = round(figures["peak_rss_growth_gb"], 2)
            report.add(f"load_{options.quantize}_{when}_peak_rss_growth_gb", "sc2", peak)
    report.setup["bf16_weight_gb"] = round(read_config(folder).weight_bytes(2) / 1e9, 2)
    log("load: " + ", ".join(f"{k} {v}" for k, v in report.results["load_s"].items()) + " s")


def _print_report(report) -> None:
    from rich.console import Console  # rich's table: ~0.1 s of imports, only for this command
    from rich.table import Table

    setup = ", ".join(f"{k}={v}" for k, v in report.setup.items())
    machine = ", ".join(f"{k}={v}" for k, v in report.machine.items())
    engines = sorted({e for values in report.results.values() for e in values}, key=lambda e: (e != "sc2", e))
    ratios = report.ratios()
    compared = sorted({name for values in ratios.values() for name in values})
    table = Table(title=f"sc2 bench: {setup}", caption=f"memory: {machine}")
    table.add_column("metric")
    for column in engines + compared:
        table.add_column(column, justify="right")
    for metric, values in report.results.items():
        row = [metric] + [str(values.get(e, "")) for e in engines]
        row += [f"{ratios[metric][c]:.2f}x" if c in ratios.get(metric, {}) else "" for c in compared]
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in report.notes:
        console.print(f"note: {line}", markup=False, highlight=False)
