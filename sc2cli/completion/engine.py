"""One completion, end to end: request -> prompt -> tokens -> text, as a stream of typed events.

The same `CompletionRequest` and the same events (events.py: `Token` for each piece of text, then one
`Done`) serve the in-process CLI, the warm server and the benchmark, so all print exactly the same thing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from ..errors import Sc2Error
from ..model.model import Starcoder2
from .assembly import Assembly, timings
from .events import Event, Usage
from .generate import NonFiniteLogits, PromptCache, Step, common_prefix, generate
from .prompt import Prompt
from .request import CompletionRequest, prompt_for
from .speculate import Recall, Speculation
from .tokenizer import Tokenizer

RECALLED_REPOS = 8  # repositories whose completions a warm server keeps to draft from; least recent goes


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
        # a warm server's recent completions per repository (as its editor chunks are kept), drafted from
        self._recalls: OrderedDict[str | None, Recall] = OrderedDict()

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

    def _recall_for(self, repo: str | None) -> Recall | None:
        """The completions remembered for `repo`; None without cache slots (one request per engine)."""
        if not self.cache_slots:
            return None
        recall = self._recalls.pop(repo, None) or Recall()
        self._recalls[repo] = recall
        while len(self._recalls) > RECALLED_REPOS:
            self._recalls.popitem(last=False)
        return recall

    def describe(self) -> dict[str, object]:
        """What runs here, for a server's info and its clients' choice of server."""
        config = self.model.config
        return {
            "model": self.name,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "attn": self.model.attn_backend,
            "default_budget": self.default_budget,
            "max_position_embeddings": config.max_position_embeddings,
            "sliding_window": config.sliding_window,
            "vocab_size": config.vocab_size,
            "cache_slots": self.cache_slots,
            "load_s": round(self.load_seconds, 3),
        }

    def prompt(self, request: CompletionRequest) -> Prompt:
        return prompt_for(request, self.tokenizer, self.default_budget, self.model.config)

    def stream(
        self, request: CompletionRequest, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[Event]:
        """Events for one completion; stopping the iteration early stops the model, and so does
        `cancelled()` turning true (checked at every token)."""
        prompt = self.prompt(request)
        assembly = Assembly(request, self.tokenizer, skip=len(prompt.heal))
        cache = self._cache_for(prompt.ids, request.max_tokens)
        started = time.perf_counter()
        first_token_at = None
        speculation = Speculation() if request.speculate else None
        recall = self._recall_for(request.repo)
        steps = generate(
            self.model, prompt.ids, max_new_tokens=request.max_tokens, sampling=request.sampling,
            stop_ids=self.tokenizer.stop_ids, cache=cache, cancelled=cancelled, forced=prompt.heal,
            token_bytes=self.tokenizer.token_bytes, speculation=speculation, recall=recall,
        )  # fmt: skip
        generated: list[int] = []  # every token the model chose, kept or not by the assembly
        try:
            for step in self._checked(steps):
                first_token_at = first_token_at or time.perf_counter()
                generated.append(step.token)
                event = assembly.push(step.token, step.logprob)
                if event:
                    yield event
                if assembly.done:
                    break
        finally:
            steps.close()
            if recall is not None:
                recall.remember(prompt.ids, generated)
        stopped = cancelled is not None and not assembly.done and cancelled()
        ended = time.perf_counter()
        event = assembly.close(stopped)
        if event:
            yield event
        usage = Usage(len(prompt.ids), len(assembly.tokens), cache.reused)
        yield assembly.finished(
            prompt,
            reason=assembly.reason(len(assembly.tokens), stopped),
            usage=usage,
            timings=timings(self.load_seconds, started, first_token_at or ended, ended, usage, speculation),
            model=self.name,
            healed=prompt.heal,
        )

    def _checked(self, steps: Iterator[Step]) -> Iterator[Step]:
        """`steps`, with non-finite logits turned into an error that names this model."""
        try:
            yield from steps
        except NonFiniteLogits as e:
            raise Sc2Error(
                f"{self.name}: the model computed NaN or Inf (at completion token {e.position}); its weights "
                "are damaged, or overflow in this dtype (try --dtype fp32)"
            ) from None
