"""Token healing through an engine, portably. These APIs cannot hold the first token to a text prefix, so
the client asks for one token with the most likely alternatives, keeps the best one that starts with the
healed bytes (as the in-process engine's mask does), and continues from it. With none among them the
request goes on unhealed."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..completion.sampling import Sampling
from .dialects import Candidate


@dataclass(frozen=True)
class Choice:
    token: int
    logprob: float


def candidate_id(candidate: Candidate, by_bytes: Mapping[bytes, int]) -> int | None:
    """The candidate's token id: as the engine gave it, else looked up by its text."""
    if candidate.token is not None:
        return candidate.token
    return by_bytes.get(candidate.text.encode("utf-8"))


def choose_first(
    candidates: Sequence[Candidate],
    healed: bytes,
    token_bytes: Sequence[bytes],
    stop_ids: frozenset[int],
    by_bytes: Mapping[bytes, int],
    sampling: Sampling,
) -> Choice | None:
    """The first token of a healed completion among the engine's candidates: the most likely one that
    starts with `healed` (greedy), or one drawn among those by their probability at the request's
    temperature (seeded when the request is); None when no candidate fits."""
    fitting = []
    for candidate in candidates:
        token = candidate_id(candidate, by_bytes)
        if token is not None and _fits(token, healed, token_bytes, stop_ids):
            fitting.append(Choice(token, candidate.logprob))
    if not fitting:
        return None
    if sampling.greedy:
        return max(fitting, key=lambda c: (c.logprob, -c.token))
    top = max(c.logprob for c in fitting)
    weights = [math.exp((c.logprob - top) / sampling.temperature) for c in fitting]
    return random.Random(sampling.seed).choices(fitting, weights=weights)[0]


def _fits(token: int, healed: bytes, token_bytes: Sequence[bytes], stop_ids: frozenset[int]) -> bool:
    return token < len(token_bytes) and token not in stop_ids and token_bytes[token].startswith(healed)
