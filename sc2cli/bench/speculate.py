"""Speculative decoding's workloads for `sc2 bench --speculate`: completions whose answer overlaps the code
around them, and completions with nothing to copy, each decoded with and without drafts, interleaved.

Greedy decoding makes both runs produce the same tokens, so the ratio of their decode rates is the speed-up
(or, with nothing to copy, the cost) of drafting alone. Measurements only: nothing here asserts a time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from ..completion.engine import Engine
from ..completion.events import Done
from ..completion.request import CompletionRequest

WORKLOADS = ("overlap", "no_overlap")


def deleted_lines(document: str, count: int, max_tokens: int) -> list[CompletionRequest]:
    """A line deleted from `document` and completed back, at `count` evenly spaced code lines."""
    lines = document.splitlines(keepends=True)
    candidates = [i for i, line in enumerate(lines) if len(line.strip()) >= 24]
    chosen = candidates[len(candidates) // (2 * count) :: max(len(candidates) // count, 1)][:count]
    requests = []
    for i in chosen:
        prefix, suffix = "".join(lines[:i]), "".join(lines[i + 1 :])
        requests.append(
            CompletionRequest(prefix, suffix, path="bench.py", repo="sc2", max_tokens=max_tokens, raw=True)
        )
    return requests


def repeated_pattern(max_tokens: int) -> CompletionRequest:
    """The cursor in the middle of a table of lines that differ only in a number."""
    rows = [f'    "option_{i}": Setting(name="option_{i}", default={i}, kind=int),\n' for i in range(40)]
    head = "SETTINGS = {\n" + "".join(rows[:20]) + '    "option_20": Setting('
    tail = "".join(rows[21:]) + "}\n"
    return CompletionRequest(head, tail, path="settings.py", repo="sc2", max_tokens=max_tokens, raw=True)


def nothing_to_copy(count: int, max_tokens: int, seed: int) -> list[CompletionRequest]:
    """Prose of random words with no suffix: little that the completion could copy."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    requests = []
    for _ in range(count):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(120)]
        requests.append(
            CompletionRequest(
                f"# {' '.join(words)}\n# ", "", path="notes.py", max_tokens=max_tokens, raw=True
            )
        )
    return requests


def workloads(document: str, max_tokens: int, seed: int) -> dict[str, list[CompletionRequest]]:
    return {
        "overlap": [*deleted_lines(document, 3, max_tokens), repeated_pattern(max_tokens)],
        "no_overlap": nothing_to_copy(4, max_tokens, seed),
    }


def _run(engine: Engine, requests: list[CompletionRequest], speculate: bool) -> list[Done]:
    out = []
    for request in requests:
        done = list(engine.stream(dataclasses.replace(request, speculate=speculate)))[-1]
        assert isinstance(done, Done)
        out.append(done)
    return out


def measure(engine: Engine, requests: list[CompletionRequest], runs: int) -> dict[str, float]:
    """Decode rate with and without drafts (all tokens after each completion's first over all decode time,
    interleaved runs after one warm-up of each), their ratio, and the drafts' acceptance."""
    seconds = {True: 0.0, False: 0.0}
    tokens = {True: 0, False: 0}
    drafted = accepted = 0
    for speculate in (True, False):
        _run(engine, requests, speculate)
    for _ in range(runs):
        for speculate in (True, False):
            for done in _run(engine, requests, speculate):
                seconds[speculate] += done.timings.decode_s
                tokens[speculate] += max(done.usage.completion_tokens - 1, 0)
                drafted += done.timings.drafted_tokens
                accepted += done.timings.accepted_tokens
    rate = {s: tokens[s] / seconds[s] if seconds[s] > 0 else 0.0 for s in seconds}
    return {
        "speculate_tok_s": rate[True],
        "plain_tok_s": rate[False],
        "speedup": rate[True] / rate[False] if rate[False] else 0.0,
        "drafted": drafted / runs,
        "accepted": accepted / runs,
        "acceptance": accepted / drafted if drafted else 0.0,
    }


def bench_speculation(
    engine: Engine,
    document: str,
    max_tokens: int,
    runs: int,
    seed: int,
    add: Callable[[str, str, float], None],
) -> dict[str, dict[str, float]]:
    """Every workload measured; `add(metric, engine, value)` records the figures in a report."""
    results = {}
    for name, requests in workloads(document, max_tokens, seed).items():
        figures = measure(engine, requests, runs)
        add(f"decode_{name}_tok_s", "sc2", round(figures["speculate_tok_s"], 2))
        add(f"decode_{name}_tok_s", "sc2-no-speculate", round(figures["plain_tok_s"], 2))
        add(f"speculate_{name}_speedup", "sc2", round(figures["speedup"], 3))
        add(f"speculate_{name}_acceptance", "sc2", round(figures["acceptance"], 3))
        add(f"speculate_{name}_drafted_per_run", "sc2", figures["drafted"])
        results[name] = figures
    return results
