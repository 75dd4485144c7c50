"""Speculative decoding from the prompt: guess the next tokens by finding the last few tokens of the text
so far earlier in it, and the rule that keeps or rejects a guess without changing what the model samples.

Code completion repeats its surroundings: the suffix often holds the line being written, edits copy
neighbouring code, and context files define what the completion calls. `Drafter` indexes the prompt once
per request (every n-gram, mapped to where it was last followed) and each accepted token after it, so a
draft costs a dictionary lookup. A warm server also remembers its recent completions (`Recall`): an editor
asks again after a few typed characters, or for the same cursor, and the answer repeats what the model
said before, which no prompt holds. generate.py verifies a draft in the forward pass that decodes the next
token anyway: while decode is bound by reading the weights, k+1 positions cost about as much as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..model.rows import MAX_VERIFY_ROWS

NGRAM_SIZES = (3, 2, 1)  # the longest match is tried first: it predicts the continuation best
MAX_DRAFT = MAX_VERIFY_ROWS - 1  # tokens per draft at most; the cost curve usually stops it sooner
# A first guess at how often a drafted token is kept, as pseudo-counts (kept, drafts cut short): 60%, worth
# two drafts' evidence; each request then learns its own rate for each length of match.
PRIOR = (1.2, 0.8)
# A draft must promise this many times a plain step's tokens per unit of cost: the cost curve leaves out
# what a verification adds outside the matrices (measured: with drafts that barely paid on paper, int4
# decoding ran 5% slower where nothing repeats).
MARGIN = 1.1
# How many tokens before a match's position are compared with the text's end when the prompt and the
# recalled completions both hold the match: the source agreeing longer drafts.
AGREEMENT = 16
RECALL_TOKENS = 8192  # remembered per Recall at most (a completion and its prompt's last AGREEMENT tokens)
SEPARATOR = -1  # between recalled sequences: no token's id, so no match spans two of them


@dataclass
class Speculation:
    """How to draft (`max_draft` tokens at most, matching the last `sizes` tokens) and, after a run, how it
    went: `drafted` tokens verified, `accepted` of them kept."""

    max_draft: int = MAX_DRAFT
    sizes: tuple[int, ...] = NGRAM_SIZES
    drafted: int = 0
    accepted: int = 0


def draft_length(rate: float, costs: tuple[float, ...] | None, limit: int) -> int:
    """How many drafted tokens to verify (0: none) so that the tokens a pass yields per unit of its cost
    are most: k drafts kept one after another with probability `rate` each yield (1 - rate^(k+1)) /
    (1 - rate) tokens (the model's own next token included) for `costs[k]` (a plain step: 1 token for 1,
    which a draft must beat by `MARGIN`)."""
    best, best_value = 0, MARGIN
    for k in range(1, limit + 1):
        if costs is not None and k >= len(costs):
            break  # not measured
        cost = 1.0 if costs is None else costs[k]
        tokens = k + 1 if rate >= 1 else (1 - rate ** (k + 1)) / (1 - rate)
        if tokens / cost > best_value:
            best, best_value = k, tokens / cost
    return best


class Recall:
    """Token sequences from earlier requests (each a completion after its prompt's last tokens), apart,
    indexed as a Drafter indexes its own text: an n-gram maps to the position after its latest occurrence.
    Past `budget` tokens the older half is forgotten."""

    def __init__(self, sizes: tuple[int, ...] = NGRAM_SIZES, budget: int = RECALL_TOKENS) -> None:
        self.sizes = sizes
        self.budget = budget
        self.ids: list[int] = []  # the sequences, oldest first, each followed by SEPARATOR
        self.follows: dict[tuple[int, ...], int] = {}
        self._held: list[list[int]] = []

    def add(self, tokens: Sequence[int]) -> None:
        tokens = list(tokens)[-(self.budget - 1) :]
        if len(tokens) < 2:
            return
        if len(self.ids) + len(tokens) + 1 > self.budget:
            self._forget(max(len(self.ids) + len(tokens) + 1 - self.budget, len(self.ids) // 2))
        self._held.append(tokens)
        begin = len(self.ids)
        self.ids += [*tokens, SEPARATOR]
        for end in range(begin + 1, len(self.ids) - 1):
            for n in self.sizes:
                if end - n >= begin:
                    self.follows[tuple(self.ids[end - n : end])] = end

    def remember(self, prompt: Sequence[int], answer: Sequence[int]) -> None:
        """A request's answer, after its prompt's last AGREEMENT tokens (what `Drafter` compares)."""
        self.add([*prompt[-AGREEMENT:], *answer])

    def _forget(self, tokens: int) -> None:
        """Drop the oldest sequences, `tokens` at least, and index the rest again (at least half of what
        was held goes, so forgetting costs O(1) a token over time)."""
        held, self._held, self.ids, self.follows = self._held, [], [], {}
        while held and tokens > 0:
            tokens -= len(held.pop(0)) + 1
        for sequence in held:
            self.add(sequence)


class Drafter:
    """The sequence so far (prompt, then generated tokens) and, for every n-gram of it, the position right
    after its latest occurrence that has a known continuation. `costs[i]`: what the model's forward over i+1
    rows costs against one (model/rows.py; None: as cheap as one), which sizes each draft. `recall`: earlier
    requests' completions to draft from as well (read only)."""

    def __init__(
        self,
        ids: Sequence[int],
        speculation: Speculation,
        costs: tuple[float, ...] | None = None,
        recall: Recall | None = None,
    ) -> None:
        self.ids = list(ids)
        self.recall = recall
        self.speculation = speculation
        self.sizes = speculation.sizes
        self.max_draft = speculation.max_draft
        self.costs = costs
        # this request's evidence on drafted tokens (see `rate`), per length of the match that drafted them:
        # a 3-token match predicts far better than a single token seen before
        self.evidence = {n: list(PRIOR) for n in self.sizes}
        self.last_size = self.sizes[0]  # the match length of the latest draft
        # a match not worth drafting from still predicts the next token: (match length, its guess), checked
        # when that token comes, so a rate that fell too low to draft can rise again (drafts alone would
        # never test it). Measured on the tiny model's completions of 68 deleted lines: 1.16 -> 1.23 tokens
        # per unit of cost.
        self.guess: tuple[int, int] | None = None
        self.follows: dict[tuple[int, ...], int] = {}
        for end in range(1, len(self.ids)):
            self._index(end)

    def _index(self, end: int) -> None:
        """Record that the n-grams ending just before `end` are followed by ids[end]."""
        for n in self.sizes:
            if end >= n:
                self.follows[tuple(self.ids[end - n : end])] = end

    def push(self, tokens: Sequence[int]) -> None:
        if self.guess is not None and tokens:
            size, guessed = self.guess
            self.evidence[size][tokens[0] != guessed] += 1  # as a one-token draft kept or cut
        self.guess = None
        for token in tokens:
            self.ids.append(token)
            self._index(len(self.ids) - 1)

    def accept(self, drafts: Sequence[int], kept: int) -> None:
        """The model verified `drafts` and kept the first `kept`: count them, and go on after those."""
        self.speculation.drafted += len(drafts)
        self.speculation.accepted += kept
        evidence = self.evidence[self.last_size]
        evidence[0] += kept
        evidence[1] += kept < len(drafts)
        self.push(drafts[:kept])

    def rate(self, size: int) -> float:
        """How likely the next token drafted from a match of `size` tokens is kept, given the one before it
        was: kept tokens over kept tokens and rejections (a draft stops at its first rejection), with the
        prior's pseudo-counts."""
        kept, cut = self.evidence[size]
        return kept / (kept + cut)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` (and `max_draft`) tokens that followed the longest match of the sequence's end, as
        many as pay for their verification (`draft_length`); empty when nothing matches or none would pay
        (then the match's guess is kept as evidence). A match in the recalled completions is copied from
        there when the text before it agrees with the sequence's end for longer than before the match here
        (or there is none here)."""
        self.guess = None
        for n in self.sizes:
            if len(self.ids) < n:
                continue
            key = tuple(self.ids[-n:])
            source, start = self.ids, self.follows.get(key)
            recalled = self.recall.follows.get(key) if self.recall is not None else None
            if recalled is not None and (
                start is None or self._agreement(self.recall.ids, recalled) > self._agreement(self.ids, start)
            ):
                source, start = self.recall.ids, recalled
            if start is not None:
                length = draft_length(self.rate(n), self.costs, min(limit, self.max_draft))
                self.last_size = n
                if not length:
                    self.guess = (n, source[start])
                return self._copy(source, start, length) if length else []
        return []

    def _agreement(self, source: list[int], start: int) -> int:
        """How many tokens before `start` in `source` equal the sequence's last ones (AGREEMENT at most)."""
        m, most = 0, min(AGREEMENT, start, len(self.ids))
        while m < most and source[start - 1 - m] == self.ids[-1 - m]:
            m += 1
        return m

    def _copy(self, source: list[int], start: int, limit: int) -> list[int]:
        """`limit` tokens from `start` on in `source`, up to a recalled sequence's end; where they run past
        the sequence's own end, the copy goes on copying itself, so a repeating pattern drafts whole periods
        (LZ77's overlapping copy)."""
        out = source[start : start + limit]
        if SEPARATOR in out:
            return out[: out.index(SEPARATOR)]
        while len(out) < limit:
            out.append(out[len(out) - (len(source) - start)])
        return out


def accept_or_resample(probs: torch.Tensor, draft: int, generator: torch.Generator | None) -> int | None:
    """Speculative sampling's rule for a draft that is one token for sure (a point mass): keep `draft` with
    probability p(draft) (None), else return a token drawn from p without it, renormalised. Either way the
    token that comes out is distributed exactly as `probs` (V,): p(draft) + 0 for the draft, and
    (1 - p(draft)) * p(x) / (1 - p(draft)) for any other x."""
    p = float(probs[draft])
    if float(torch.rand((), generator=generator, device=probs.device)) < p:
        return None
    residual = probs.clone()
    residual[draft] = 0
    if float(residual.sum()) <= 0:  # p(draft) rounded below 1 with nothing else left: keep it
        return None
    return int(torch.multinomial(residual, 1, generator=generator))
