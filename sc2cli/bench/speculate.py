"""Speculative decoding's workloads for `sc2 bench --speculate`: completions whose answer overlaps the code
around them, completions with nothing to copy, and the overlap's completions asked again of a warm server
(which remembers what it answered: speculate.Recall), each decoded with and without drafts, interleaved.

Greedy decoding makes both runs produce the same tokens, so the ratio of their decode rates is the speed-up
(or, with nothing to copy, the cost) of drafting alone. Measurements only: nothing here asserts a time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from ..completion.engine import Engine
from ..completion.generate import PromptCache, generate
from ..completion.request import CompletionRequest
from ..completion.speculate import Recall, Speculation
from ..model.model import Starcoder2

WORKLOADS = ("overlap", "no_overlap", "asked_again")


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
    overlap = [*deleted_lines(document, 3, max_tokens), repeated_pattern(max_tokens)]
    return {"overlap": overlap, "no_overlap": nothing_to_copy(4, max_tokens, seed), "asked_again": overlap}


def _decode(
    model: Starcoder2,
    ids: tuple[int, ...],
    n: int,
    speculation: Speculation | None,
    token_bytes: Sequence[bytes],
    warm: tuple[PromptCache, Recall] | None = None,
) -> tuple[float, int]:
    """Seconds from the first new token to the last, and the tokens after the first (no stop tokens: random
    weights run to `n`). As in the CLI, only the tokenizer's ids are picked (a checkpoint's vocabulary can
    be larger). `warm`: a server's cache holding the prompt and what it remembers of earlier answers."""
    cache, recall = warm or (None, None)
    steps = generate(
        model,
        ids,
        max_new_tokens=n,
        speculation=speculation,
        token_bytes=token_bytes,
        cache=cache,
        recall=recall,
    )
    times = [time.perf_counter() for _ in steps]
    return times[-1] - times[0], len(times) - 1


def asked_before(
    model: Starcoder2, ids: tuple[int, ...], n: int, token_bytes: Sequence[bytes]
) -> tuple[PromptCache, Recall]:
    """A warm server's state after answering `ids` once: the prompt in its cache, the answer recalled."""
    cache = PromptCache(model, len(ids) + n)
    answer = [
        step.token for step in generate(model, ids, max_new_tokens=n, token_bytes=token_bytes, cache=cache)
    ]
    recall = Recall()
    recall.remember(ids, answer)
    return cache, recall


def measure(
    engine: Engine, requests: list[CompletionRequest], runs: int, again: bool = False
) -> dict[str, float]:
    """Decode rate with and without drafts (all tokens after each completion's first over all decode time,
    interleaved runs after one warm-up of each), their ratio, and the drafts' acceptance. `again`: each
    request answered once before, as a warm server answers it again (its prompt cached, both ways)."""
    prompts = [(engine.prompt(r).ids, r.max_tokens) for r in requests]
    token_bytes = engine.tokenizer.token_bytes
    warm = [asked_before(engine.model, ids, n, token_bytes) if again else None for ids, n in prompts]
    seconds = {True: 0.0, False: 0.0}
    tokens = {True: 0, False: 0}
    counts = Speculation()
    for i in range(runs + 1):  # the first round warms up
        for speculate in (True, False):
            for (ids, n), state in zip(prompts, warm, strict=True):
                speculation = Speculation() if speculate else None
                elapsed, decoded = _decode(engine.model, ids, n, speculation, token_bytes, state)
                if i and speculation is not None:
                    counts.drafted += speculation.drafted
                    counts.accepted += speculation.accepted
                seconds[speculate] += elapsed if i else 0.0
                tokens[speculate] += decoded if i else 0
    rate = {s: tokens[s] / seconds[s] if seconds[s] > 0 else 0.0 for s in seconds}
    return {
        "speculate_tok_s": rate[True],
        "plain_tok_s": rate[False],
        "speedup": rate[True] / rate[False] if rate[False] else 0.0,
        "drafted": counts.drafted / runs,
        "accepted": counts.accepted / runs,
        "acceptance": counts.accepted / counts.drafted if counts.drafted else 0.0,
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
        figures = measure(engine, requests, runs, again=name == "asked_again")
        add(f"decode_{name}_tok_s", "sc2", round(figures["speculate_tok_s"], 2))
        add(f"decode_{name}_tok_s", "sc2-no-speculate", round(figures["plain_tok_s"], 2))
        add(f"speculate_{name}_speedup", "sc2", round(figures["speedup"], 3))
        add(f"speculate_{name}_acceptance", "sc2", round(figures["acceptance"], 3))
        add(f"speculate_{name}_drafted_per_run", "sc2", figures["drafted"])
        results[name] = figures
    return results
