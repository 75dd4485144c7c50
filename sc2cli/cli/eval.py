"""`sc2 eval`: completion quality on the user's own code, configurations side by side (the sampling,
completing and scoring are sc2cli/eval/)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..repo import CONTEXT_SHARE
from .app import app
from .options import DeviceOpt, DtypeOpt, ModelOpt, OfflineOpt, QuantizeOpt
from .output import ProgressBar, note, write


class SpanSource(str, Enum):
    history = "history"
    random = "random"


class EvalFormat(str, Enum):
    text = "text"
    json = "json"


@app.command(
    "eval",
    short_help="Measure completion quality on your own code.",
    rich_help_panel="Server",
    epilog="Examples:  sc2 eval -m 3b --limit 50  ·  sc2 eval src/ --vary auto-context=on,off --vary heal=on,off  ·  "
    "sc2 eval --vary model=3b,7b --vary quantize=none,int8 --format json",
)
def eval_command(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders of one git repository (default: the current folder's).", show_default=False)] = None,
    spans: Annotated[SpanSource, typer.Option("--spans", help="history: lines added in recent commits; random: random lines of tracked files.")] = SpanSource.history,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Spans to complete (per configuration).")] = 30,
    commits: Annotated[int, typer.Option(min=1, help="With --spans history: how many recent commits to sample from.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for sampling the spans (completions are greedy).")] = 0,
    vary: Annotated[list[str] | None, typer.Option("--vary", help="KEY=v1,v2 (repeatable): auto-context=on,off; heal=on,off; quantize=none,int8; budget=N,M; context-budget=0.1,0.25; model=a,b.")] = None,
    model: ModelOpt = None,
    offline: OfflineOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per completion.")] = 48,
    budget: Annotated[int | None, typer.Option(help="Most tokens of prompt + completion (default: the device's).")] = None,
    context_budget: Annotated[float, typer.Option("--context-budget", min=0.0, max=0.9, help="Share of the prompt left to other files.")] = CONTEXT_SHARE,
    no_auto_context: Annotated[bool, typer.Option("--no-auto-context", help="No imported files or similar chunks.")] = False,
    no_heal: Annotated[bool, typer.Option("--no-heal", help="No token healing.")] = False,
    server: Annotated[str | None, typer.Option(help="Complete through this warm server (http://HOST:PORT or unix:///path.sock).")] = None,
    output: Annotated[EvalFormat, typer.Option("--format", "-f", help="text: a table; json: every sample too.")] = EvalFormat.text,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Notes on stderr even when it is not a terminal.")] = False,
) -> None:  # fmt: skip
    """Hide spans of your repository's code, complete them, and score exact match, first-line exact match,
    edit similarity and latency, for each configuration --vary asks for: one row each."""
    from ..eval.completers import in_process, through_server  # the library loads only when the command runs
    from ..eval.run import EvalSettings, Outcome, evaluate
    from ..eval.spans import history_spans, random_spans
    from ..eval.vary import parse_vary
    from ..settings import load_settings

    variants = parse_vary(vary or [])
    if server and any(v.model or v.quantize for v in variants):
        raise InputError("--vary model or quantize needs models opened here: leave out --server")
    root, rel = _repository(paths or [])
    overrides = {"model": model, "offline": offline, "device": device, "dtype": dtype, "quantize": quantize,
                 "max_tokens": max_tokens, "prompt_budget": budget}  # fmt: skip
    base = EvalSettings(load_settings(overrides), not no_auto_context, not no_heal, context_budget)
    chosen = (
        history_spans(root, rel, limit, seed, commits)
        if spans is SpanSource.history
        else random_spans(root, rel, limit, seed)
    )
    if not chosen:
        raise InputError(f"no lines to complete in {root} ({spans.value} spans); try --spans random")
    say = lambda message: note(message, verbose)  # noqa: E731
    say(f"{len(chosen)} spans from {root} ({spans.value}), {len(variants)} configurations")
    opener = through_server(server) if server else in_process(ProgressBar, say)
    outcomes = [Outcome(v) for v in variants]
    interrupted = False
    with _Progress(len(chosen) * len(variants)) as advance:
        try:
            for i, sample in evaluate(root, chosen, variants, base, opener):
                outcomes[i].samples.append(sample)
                advance()
        except KeyboardInterrupt:
            interrupted = True
    report = {
        "repository": str(root),
        "spans": spans.value,
        "seed": seed,
        "limit": limit,
        "interrupted": interrupted,
    }
    if output is EvalFormat.json:
        write(
            json.dumps({**report, "configurations": [_json(o) for o in outcomes]}, ensure_ascii=False) + "\n"
        )
    else:
        _table(outcomes, report)
    if interrupted:
        note("interrupted: the results above are partial", True)
        raise SystemExit(130)


def _repository(paths: list[Path]) -> tuple[Path, list[str]]:
    """The git root holding every path, and the paths relative to it."""
    from ..repo.files import git_root

    anchors = paths or [Path.cwd()]
    for p in anchors:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
    first = anchors[0].resolve()
    root = git_root(first if first.is_dir() else first.parent)
    if root is None:
        raise InputError(f"{anchors[0]} is not in a git repository (sc2 eval samples spans from git)")
    root = root.resolve()
    rel = []
    for p in paths:
        try:
            rel.append(p.resolve().relative_to(root).as_posix())
        except ValueError:
            raise InputError(f"{p} is not in the repository {root}") from None
    return root, [r for r in rel if r != "."]


def _json(outcome) -> dict:
    s = outcome.summary()
    return {
        "configuration": outcome.variant.label,
        "exact_match": round(s.exact, 4), "first_line_exact_match": round(s.first_line, 4),
        "edit_similarity": round(s.edit_similarity, 4), "ttft_p50_ms": round(s.ttft_p50_ms, 1),
        "total_p50_ms": round(s.total_p50_ms, 1), "n": s.n,
        "samples": [sample.to_json() for sample in outcome.samples],
    }  # fmt: skip


def _table(outcomes, report: dict) -> None:
    from rich.console import Console  # rich's table: only for this command
    from rich.table import Table

    table = Table(title=f"sc2 eval: {report['repository']} ({report['spans']} spans, seed {report['seed']})")
    for name in ("configuration", "EM", "first-line EM", "edit sim", "TTFT p50", "total p50", "n"):
        table.add_column(name, justify="left" if name == "configuration" else "right", no_wrap=True)
    for outcome in outcomes:
        s = outcome.summary()
        table.add_row(
            outcome.variant.label, f"{s.exact:.3f}", f"{s.first_line:.3f}", f"{s.edit_similarity:.3f}",
            f"{s.ttft_p50_ms:.0f} ms", f"{s.total_p50_ms:.0f} ms", str(s.n),
        )  # fmt: skip
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # a pipe or file: rows never wrap


class _Progress:
    """A bar on stderr over every completion, only on a terminal; entering gives `advance()`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None

    def __enter__(self):
        if not sys.stderr.isatty():
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)  # fmt: skip
        self.bar.start()
        task = self.bar.add_task("eval", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
