"""How a completion compares with the text that was hidden: exact match, first-line exact match and edit
similarity (1 - Levenshtein distance / the longer length), and the medians of a configuration's latencies.
Pure functions: the scorer is tested on known pairs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    """One completion against its expected text."""

    exact: bool
    first_line: bool
    edit_similarity: float


@dataclass(frozen=True)
class Summary:
    """A configuration's scores over its spans: shares and means in [0, 1], latencies in milliseconds."""

    exact: float
    first_line: float
    edit_similarity: float
    ttft_p50_ms: float
    total_p50_ms: float
    n: int


def levenshtein(a: str, b: str) -> int:
    """The fewest single-character insertions, deletions and substitutions that turn `a` into `b`."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 for equal texts, 0 for texts with nothing in common; two empty texts are equal."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def score(expected: str, completion: str) -> Score:
    """Compare after trailing whitespace is dropped (per line and at the end): an editor trims it too."""
    want, got = _normal(expected), _normal(completion)
    return Score(
        exact=want == got,
        first_line=_first_line(want) == _first_line(got),
        edit_similarity=edit_similarity(want, got),
    )


def summarize(scores: Sequence[Score], ttft_ms: Sequence[float], total_ms: Sequence[float]) -> Summary:
    """Shares of exact and first-line matches, mean edit similarity, median latencies."""
    n = len(scores)
    if n == 0:
        return Summary(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    return Summary(
        exact=sum(s.exact for s in scores) / n,
        first_line=sum(s.first_line for s in scores) / n,
        edit_similarity=sum(s.edit_similarity for s in scores) / n,
        ttft_p50_ms=statistics.median(ttft_ms),
        total_p50_ms=statistics.median(total_ms),
        n=n,
    )


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).rstrip()


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]
