"""Running an evaluation: every configuration over every span, through the real request and prompt path
(automatic context, token healing, the budget), greedy, timed as a user waits for it (from choosing the
context to the first token, and to the end). Results come one at a time, so an interrupted run still has
everything finished so far."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .. import session
from ..completion.events import Done, Event, Token
from ..completion.request import CompletionRequest
from ..completion.sampling import Sampling
from ..repo import CONTEXT_SHARE
from ..repo.context import choose_context
from ..settings import Settings
from .score import Score, Summary, score, summarize
from .spans import Span
from .vary import Variant


class Completer(Protocol):
    """What completes a request: an in-process `Engine`, or a warm server's client."""

    default_budget: int

    def stream(self, request: CompletionRequest) -> Iterator[Event]: ...


@dataclass(frozen=True)
class EvalSettings:
    """The command's own choices, which a variant may change: the model's settings and the prompt's."""

    settings: Settings
    auto_context: bool = True
    heal: bool = True
    context_budget: float = CONTEXT_SHARE


@dataclass(frozen=True)
class Sample:
    """One span completed under one configuration."""

    span: Span
    completion: str
    score: Score
    ttft_ms: float
    total_ms: float
    context: tuple[str, ...]  # the paths of the documents chosen automatically

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.span.path, "line": self.span.line, "commit": self.span.commit,
            "expected": self.span.expected, "completion": self.completion,
            "exact": self.score.exact, "first_line": self.score.first_line,
            "edit_similarity": round(self.score.edit_similarity, 4),
            "context": list(self.context), "ttft_ms": round(self.ttft_ms, 1), "total_ms": round(self.total_ms, 1),
        }  # fmt: skip


@dataclass
class Outcome:
    """A configuration and the samples finished under it."""

    variant: Variant
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> Summary:
        return summarize(
            [s.score for s in self.samples],
            [s.ttft_ms for s in self.samples],
            [s.total_ms for s in self.samples],
        )


def settings_for(variant: Variant, base: EvalSettings) -> Settings:
    """The model settings of a variant: its model and quantization, else the command's."""
    changes = {"model": variant.model, "quantize": variant.quantize, "prompt_budget": variant.budget}
    return dataclasses.replace(base.settings, **{k: v for k, v in changes.items() if v is not None})


def request_for(
    span: Span, variant: Variant, base: EvalSettings, root: Path, budget: int
) -> CompletionRequest:
    """The request `sc2 complete` would build at the span's cursor, with the variant's changes."""
    settings = settings_for(variant, base)
    share = base.context_budget if variant.context_budget is None else variant.context_budget
    auto = base.auto_context if variant.auto_context is None else variant.auto_context
    documents: tuple = ()
    if auto and share:  # the index made whole first: scores must not depend on the machine's speed
        chosen = choose_context(
            root / span.path,
            span.prefix,
            span.suffix,
            session.context_reach(settings, None, budget),
            settings.max_tokens,
            share,
            index_budget_s=None,
        )
        documents = chosen.documents
    return CompletionRequest(
        prefix=span.prefix,
        suffix=span.suffix,
        path=span.path,
        repo=root.name,
        context=documents,
        context_share=share if documents else 0.0,
        max_tokens=settings.max_tokens,
        sampling=Sampling(),
        heal=base.heal if variant.heal is None else variant.heal,
        budget=settings.prompt_budget,
    )


def complete_span(
    span: Span, variant: Variant, base: EvalSettings, root: Path, completer: Completer
) -> Sample:
    """Complete one span and score it; the clock starts before the context is chosen."""
    started = time.perf_counter()
    budget = settings_for(variant, base).prompt_budget or completer.default_budget
    request = request_for(span, variant, base, root, budget)
    first = None
    done: Done | None = None
    for event in completer.stream(request):
        if isinstance(event, Token) and first is None and event.text:
            first = time.perf_counter()
        elif isinstance(event, Done):
            done = event
    ended = time.perf_counter()
    assert done is not None, "a completion's events end with Done"
    return Sample(
        span=span,
        completion=done.text,
        score=score(span.expected, done.text),
        ttft_ms=((first or ended) - started) * 1000,
        total_ms=(ended - started) * 1000,
        context=tuple(d.path for d in request.context),
    )


def evaluate(
    root: Path,
    spans: Sequence[Span],
    variants: Sequence[Variant],
    base: EvalSettings,
    open_completer: Callable[[Settings], Completer],
) -> Iterator[tuple[int, Sample]]:
    """(variant index, sample) for every variant over every span, one variant after another. A completer
    is opened once per model and quantization, and the previous one dropped before the next is opened."""
    key: tuple[str, str] | None = None
    completer: Completer | None = None
    for i, variant in enumerate(variants):
        settings = settings_for(variant, base)
        if (settings.model, settings.quantize) != key:
            completer = None  # free the previous model first
            completer = open_completer(settings)
            key = (settings.model, settings.quantize)
        assert completer is not None
        for span in spans:
            yield i, complete_span(span, variant, base, root, completer)
