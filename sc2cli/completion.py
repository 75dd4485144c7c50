"""One completion, end to end: request -> prompt -> tokens -> text, as a stream of small event records.

The same `CompletionRequest` and the same events serve the in-process CLI and the warm server, so both
print exactly the same thing. Events are plain dicts, ready for JSON:
`{"type": "token", "text": ...}` for each piece of text, then one `{"type": "done", ...}`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

from .generate import PromptCache, common_prefix, generate
from .model import Starcoder2
from .postprocess import Finisher, rules_for
from .prompt import Prompt
from .request import CompletionRequest, prompt_for
from .tokenizer import Detokenizer, Tokenizer


class Engine:
    """A loaded model and its tokenizer, serving completion requests one at a time."""

    def __init__(
        self,
        model: Starcoder2,
        tokenizer: Tokenizer,
        *,
        name: str,
        default_budget: int,
        load_seconds: float = 0.0,
        cache_slots: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.default_budget = default_budget
        self.load_seconds = load_seconds
        self.limit = model.config.max_position_embeddings
        self.cache_slots = cache_slots  # prompt caches kept between requests (a warm server); 0: none
        self._caches: list[PromptCache] = []  # most recently used first

    def _cache_for(self, ids: tuple[int, ...], max_tokens: int) -> PromptCache:
        """The kept cache sharing the longest prefix with `ids` (a fresh one if none shares any and a slot
        is free, else the least recently used); without slots, a cache just big enough."""
        if not self.cache_slots:
            return PromptCache(self.model, len(ids) + max_tokens)
        shared = [common_prefix(c.tokens, ids) for c in self._caches]
        best = max(range(len(shared)), key=shared.__getitem__, default=None)
        if best is None or (shared[best] == 0 and len(self._caches) < self.cache_slots):
            cache = PromptCache(self.model, self.limit)  # positions are only touched as they are used
        else:
            cache = self._caches.pop(best if shared[best] else -1)
        self._caches = [cache, *self._caches][: self.cache_slots]
        return cache

    def prompt(self, request: CompletionRequest) -> Prompt:
        return prompt_for(request, self.tokenizer, self.default_budget, self.model.config)

    def stream(
        self, request: CompletionRequest, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Events for one completion; stopping the iteration early stops the model, and so does
        `cancelled()` turning true (checked at every token)."""
        prompt = self.prompt(request)
        finisher = Finisher(rules_for(request.prefix, request.suffix, request.stop, request.raw))
        detokenizer = Detokenizer(self.tokenizer, skip=len(prompt.heal))
        cache = self._cache_for(prompt.ids, request.max_tokens)
        tokens: list[int] = []
        logprobs: list[float] = []
        started = time.perf_counter()
        first_token_at = None
        steps = generate(
            self.model, prompt.ids, max_new_tokens=request.max_tokens, sampling=request.sampling,
            stop_ids=self.tokenizer.stop_ids, cache=cache, cancelled=cancelled, forced=prompt.heal,
            token_bytes=self.tokenizer.token_bytes,
        )  # fmt: skip
        try:
            for step in steps:
                first_token_at = first_token_at or time.perf_counter()
                tokens.append(step.token)
                logprobs.append(step.logprob)
                piece = finisher.feed(detokenizer.push(step.token))
                if piece:
                    yield {"type": "token", "text": piece.replace("\n", request.eol)}
                if finisher.done:
                    break
        finally:
            steps.close()
        stopped_by_caller = cancelled is not None and not finisher.done and cancelled()
        ended = time.perf_counter()
        piece = (
            ""
            if finisher.done or stopped_by_caller
            else finisher.feed(detokenizer.flush()) + finisher.finish()
        )
        if piece:
            yield {"type": "token", "text": piece.replace("\n", request.eol)}
        reason = finisher.reason or ("max_tokens" if len(tokens) >= request.max_tokens else "eos")
        reason = "cancelled" if stopped_by_caller else reason
        first_token_at = first_token_at or ended
        yield {
            "type": "done",
            "text": finisher.final.replace("\n", request.eol),
            "tokens": tokens,
            "logprobs": logprobs,
            "stop_reason": reason,
            "prompt_tokens": len(prompt.ids),
            "healed": prompt.heal.decode("utf-8", "replace"),
            "completion_tokens": len(tokens),
            "cached_tokens": cache.reused,
            "truncated": dataclasses.asdict(prompt.truncated),
            "model": self.name,
            "timings": _timings(
                self.load_seconds, started, first_token_at, ended, len(prompt.ids) - cache.reused, len(tokens)
            ),
        }


def _timings(
    load: float, started: float, first: float, ended: float, computed: int, generated: int
) -> dict[str, float]:
    prefill, decode = first - started, ended - first
    return {
        "load_s": round(load, 4),
        "prefill_s": round(prefill, 4),
        "prefill_tokens_per_s": round(computed / prefill, 2) if prefill > 0 else 0.0,
        "decode_s": round(decode, 4),
        "decode_tokens_per_s": round((generated - 1) / decode, 2) if decode > 0 and generated > 1 else 0.0,
    }
