"""A completion run by an external engine, with sc2's exact prompt: the object the CLI and `sc2 serve`
use like the in-process `Engine` (`stream(request, cancelled)`, `describe()`, `name`, `default_budget`).

sc2 builds and budgets the prompt, sends it as token ids, heals its last token (engines/healing.py), and
applies its own stop rules to the stream (completion/assembly.py, as the in-process engine does), closing
the connection as soon as they fire so the engine stops too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

from ..completion.assembly import Assembly, timings
from ..completion.events import Done, Event, Usage
from ..completion.prompt import Prompt
from ..completion.request import CompletionRequest, prompt_for
from ..completion.tokenizer import Tokenizer
from ..errors import InputError
from ..model.config import ModelConfig
from .address import EngineAddress
from .dialects import Chunk, dialect_for, served_model, tokenize_body
from .healing import Choice, choose_first
from .transport import Broken, EngineError, Link, StreamCut


class RemoteEngine:
    """An engine at `address` serving the model whose tokenizer and config are given."""

    def __init__(
        self,
        address: EngineAddress,
        tokenizer: Tokenizer,
        config: ModelConfig,
        *,
        name: str,
        default_budget: int,
        token: str | None = None,
    ) -> None:
        self.address = address
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.default_budget = default_budget
        self.link = Link(address, token)
        self.dialect = dialect_for(address)
        self.limit = config.max_position_embeddings

    def check(self) -> list[str]:
        """Ask the engine what it serves; refuse (EngineError) a vocabulary other than the tokenizer's.
        Returns notes for the user (what could not be checked)."""
        status, models = self.link.call("GET", self.dialect.models_path)
        if status >= 400:
            raise self.link.refusal(status, models)
        served = served_model(models)
        self.dialect.model = served.model
        if served.n_ctx:
            self.limit = min(self.limit, served.n_ctx)
        sizes = {self.tokenizer.vocab_size, self.config.vocab_size}
        if served.n_vocab is not None and served.n_vocab not in sizes:
            raise EngineError(
                f"the engine at {self.address} serves {served.model or 'a model'} with {served.n_vocab} "
                f"tokens; {self.name}'s tokenizer has {self.tokenizer.vocab_size}: not the same model"
            )
        status, answer = self.link.call("POST", self.address.root + "/tokenize", tokenize_body(served.model))
        theirs = answer.get("tokens") if status == 200 and isinstance(answer, dict) else None
        if not isinstance(theirs, list):
            return [] if served.n_vocab else [f"the engine at {self.address} did not say its vocabulary"]
        ours = self.tokenizer.encode(tokenize_body(None)["content"])
        if theirs != ours:
            raise EngineError(
                f"the engine at {self.address} tokenizes differently from {self.name}'s tokenizer "
                f"(serves {served.model or 'another model'}); use --model for the model it serves"
            )
        return []

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name, "engine": str(self.address), "device": "engine", "dtype": "engine",
            "attn": "engine", "default_budget": self.default_budget, "max_position_embeddings": self.limit,
            "sliding_window": self.config.sliding_window, "vocab_size": self.config.vocab_size,
            "cache_slots": 0, "load_s": 0.0,
        }  # fmt: skip

    def prompt(self, request: CompletionRequest) -> Prompt:
        config = dataclasses.replace(self.config, max_position_embeddings=self.limit)
        return prompt_for(request, self.tokenizer, self.default_budget, config)

    @cached_property
    def _by_bytes(self) -> dict[bytes, int]:
        table = self.tokenizer.token_bytes
        return {b: i for i, b in reversed(list(enumerate(table))) if b}

    def stream(
        self, request: CompletionRequest, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[Event]:
        """Events for one completion, as `Engine.stream` makes them. A stream the engine breaks after
        some text raises StreamCut carrying what arrived (its text was already sent as events)."""
        started = time.perf_counter()
        prompt = self.prompt(request)
        first = self._first_token(prompt, request) if prompt.heal else None
        if prompt.heal and first is None:  # no likely token fits the healed text: this request goes unhealed
            prompt = self.prompt(dataclasses.replace(request, heal=False))
        run = _Run(request, prompt, Assembly(request, self.tokenizer, skip=len(prompt.heal)), started)
        if first is not None:
            yield from run.take(first.token, first.logprob)
        room = min(request.max_tokens, self.limit - len(prompt.ids))
        if room < 1:
            raise InputError(f"the prompt has {len(prompt.ids)} tokens; the engine holds {self.limit}")
        if room - run.generated > 0 and not run.assembly.done:
            ids = [*prompt.ids, *([first.token] if first else [])]
            yield from self._continue(run, ids, room - run.generated, cancelled)
        yield from run.end(self.name)

    def _first_token(self, prompt: Prompt, request: CompletionRequest) -> Choice | None:
        body = self.dialect.body(
            prompt.ids, 1, request.sampling, sorted(self.tokenizer.stop_ids), self.address.heal_top, False
        )
        status, answer = self.link.call("POST", self.dialect.completions_path, body)
        if status >= 400:
            raise self.link.refusal(status, answer)
        chunk = self.dialect.chunk(answer)
        if chunk.error:
            raise EngineError(f"the engine at {self.address} failed: {chunk.error}")
        return choose_first(
            chunk.candidates, prompt.heal, self.tokenizer.token_bytes, self.tokenizer.stop_ids,
            self._by_bytes, request.sampling,
        )  # fmt: skip

    def _continue(
        self, run: _Run, ids: list[int], budget: int, cancelled: Callable[[], bool] | None
    ) -> Iterator[Event]:
        body = self.dialect.body(ids, budget, run.request.sampling, sorted(self.tokenizer.stop_ids))
        chunks = self.link.stream(self.dialect.completions_path, body)
        try:
            for data in chunks:
                if data is None:  # [DONE]
                    return
                chunk = self.dialect.chunk(data)
                if chunk.error:
                    if not run.generated:
                        raise EngineError(f"the engine at {self.address} failed: {chunk.error}")
                    run.cut = chunk.error
                    return
                yield from run.feed(chunk, self.tokenizer)
                if run.ended or (cancelled is not None and cancelled()):
                    run.stopped = not run.ended
                    return
            if not run.ended:
                run.cut = "the engine closed the stream before the completion ended"
        except Broken as e:
            run.cut = str(e)
        finally:
            chunks.close()  # closing the connection stops the engine


class _Run:
    """One completion's state while it streams."""

    def __init__(
        self, request: CompletionRequest, prompt: Prompt, assembly: Assembly, started: float
    ) -> None:
        self.request, self.prompt, self.assembly, self.started = request, prompt, assembly, started
        self.generated = 0
        self.first_at: float | None = None
        self.final = self.limit = self.stopped = False
        self.cut: str | None = None
        self.cached = 0

    @property
    def ended(self) -> bool:
        return self.final or self.assembly.done

    def take(self, token: int, logprob: float) -> Iterator[Event]:
        self.first_at = self.first_at or time.perf_counter()
        self.generated += 1
        event = self.assembly.push(token, logprob)
        if event:
            yield event

    def feed(self, chunk: Chunk, tokenizer: Tokenizer) -> Iterator[Event]:
        self.cached = chunk.cached if chunk.cached is not None else self.cached
        self.limit = self.limit or chunk.limit
        self.final = chunk.final
        ids = chunk.ids
        stop_at = next((i for i, t in enumerate(ids) if t in tokenizer.stop_ids), None)
        text = chunk.text
        if stop_at is not None:  # a stop token: the completion ends before it, whatever follows
            ids, self.final, self.limit = ids[:stop_at], True, False
            text = tokenizer.decode(ids) if ids else ""
        if chunk.ids_complete:
            for token, logprob in zip(ids, chunk.logprobs, strict=False):
                yield from self.take(token, logprob)
            return
        if ids or text:
            self.first_at = self.first_at or time.perf_counter()
            self.generated += max(len(ids), 1 if text else 0)
            logprobs = chunk.logprobs[: len(ids)] if len(chunk.logprobs) >= len(ids) else ()
            event = self.assembly.push_text(text, ids, logprobs)
            if event:
                yield event

    def end(self, model: str) -> Iterator[Event]:
        event = self.assembly.close(self.stopped)
        if event:
            yield event
        ended = time.perf_counter()
        usage = Usage(len(self.prompt.ids), self.generated, self.cached)
        generated = self.request.max_tokens if self.limit else self.generated
        done = self.assembly.finished(
            self.prompt,
            reason="cut" if self.cut else self.assembly.reason(generated, self.stopped),
            usage=usage,
            timings=timings(0.0, self.started, self.first_at or ended, ended, usage),
            model=model,
            healed=self.prompt.heal,
        )
        if self.cut:
            raise StreamCut(_cut_message(self.cut, done), done)
        yield done


def _cut_message(why: str, done: Done) -> str:
    return f"the engine's stream was cut after {done.usage.completion_tokens} tokens ({why}); the completion is partial"
