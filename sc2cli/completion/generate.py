"""Token generation: sampling as pure functions, and a generator of token ids over a KV cache.

`generate` yields one `Step` (token id and its log-probability) per new token and returns when the model
emits a stop token (never yielded) or the token limit is reached. Decoding text, deciding where a
completion ends, timing and printing are layered on top by the caller, which may simply stop iterating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from ..errors import InputError, Sc2Error
from ..model.model import KVCache, Starcoder2
from .sampling import Sampling
from .speculate import Drafter, Recall, Speculation, accept_or_resample

PREFILL_CHUNK = 512  # prompt tokens per forward call: bounds the attention scores' memory


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits (V,): everything below the k-th largest becomes -inf."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """logits (V,): keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= p  # mass before this token already ≥ p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def probabilities(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """What sampling draws from: fp32 logits (V,) after temperature, top-k and top-p, as probabilities."""
    logits = logits / sampling.temperature
    if sampling.top_k:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p is not None:
        logits = top_p_filter(logits, sampling.top_p)
    return torch.softmax(logits, dim=-1)


def choose(
    logits: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> int:
    """Pick the next token from fp32 logits (V,), among the `allowed` ones (bool (V,)) if given."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if sampling.greedy:
        return int(torch.argmax(logits))
    return int(torch.multinomial(probabilities(logits, sampling), 1, generator=generator))


def verify(
    rows: torch.Tensor, drafts: Sequence[int], sampling: Sampling, generator: torch.Generator | None
) -> tuple[int, int | None]:
    """How many `drafts` the model keeps, given its fp32 logits `rows` (m+1, V) at each draft's position
    and after the last; and the token it picks instead of the first one it rejects (None: none rejected).
    Greedy keeps a draft that is the argmax; sampling uses the accept/reject rule (speculate.py)."""
    for i, draft in enumerate(drafts):
        if sampling.greedy:
            pick = int(torch.argmax(rows[i]))
            instead = None if pick == draft else pick
        else:
            instead = accept_or_resample(probabilities(rows[i], sampling), draft, generator)
        if instead is not None:
            return i, instead
    return len(drafts), None


def healing_mask(
    token_bytes: Sequence[bytes], healed: bytes, stop_ids: frozenset[int], size: int
) -> torch.Tensor:
    """The tokens a healed prompt may go on with: those that start with the `healed` bytes (the token taken
    out of the prompt among them). bool (V,)."""
    allowed = torch.zeros(size, dtype=torch.bool)
    allowed[[i for i, b in enumerate(token_bytes[:size]) if b.startswith(healed) and i not in stop_ids]] = (
        True
    )
    return allowed


class NonFiniteLogits(Sc2Error):
    """The model's logits hold NaN or Inf (damaged weights, or an overflow in half precision)."""

    def __init__(self, position: int) -> None:
        super().__init__(f"non-finite logits (NaN or Inf) at completion token {position}")
        self.position = position


class Step(NamedTuple):
    token: int
    logprob: float  # under the model's raw distribution (temperature 1), in fp32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest shared start of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PromptCache:
    """A KV cache and the token ids it holds, so a new prompt recomputes only what follows the longest
    common prefix with the previous one."""

    def __init__(self, model: Starcoder2, max_length: int | None = None) -> None:
        self.kv: KVCache = model.new_cache(max_length)
        self.tokens: list[int] = []
        self.reused = 0  # tokens the last prompt found already computed

    @property
    def max_length(self) -> int:
        return self.kv.max_length

    def reuse(self, ids: Sequence[int]) -> int:
        """Keep the cached prefix shared with `ids` (all but the last token at most); return its length."""
        n = min(common_prefix(self.tokens, ids), len(ids) - 1)
        self.kv.truncate(n)
        del self.tokens[n:]
        self.reused = n
        return n


@torch.inference_mode()
def prefill(
    model: Starcoder2,
    ids: Sequence[int],
    cache: PromptCache,
    chunk: int = PREFILL_CHUNK,
    cancelled: Callable[[], bool] | None = None,
) -> torch.Tensor | None:
    """Run `ids` through the model after what the cache holds; return the last position's logits (V,),
    or None if `cancelled()` turned true between chunks (what was computed stays cached for reuse)."""
    logits = None
    for i in range(0, len(ids), chunk):
        if cancelled is not None and cancelled():
            return None
        part = torch.tensor([list(ids[i : i + chunk])], device=model.device)
        logits = model(part, cache.kv, last_only=True)
        cache.tokens += ids[i : i + chunk]
    assert logits is not None, "prefill needs at least one token"
    return logits[0, -1].float()


@torch.inference_mode()
def decode(model: Starcoder2, tokens: Sequence[int], cache: PromptCache) -> torch.Tensor:
    """Run a few tokens after the cached ones; fp32 logits at each of them (T, V)."""
    logits = model(torch.tensor([list(tokens)], device=model.device), cache.kv)
    cache.tokens += tokens
    return logits[0].float()


def rollback(cache: PromptCache, length: int) -> None:
    """Forget the cached tokens from `length` on (rejected drafts): the KV cache and its ids alike."""
    cache.kv.truncate(length)
    del cache.tokens[length:]


def log_probability(logits: torch.Tensor, token: int, position: int) -> float:
    """The chosen token's log-probability; NaN or Inf here (an argmax picks NaN or +Inf, and NaN spreads to
    every log-probability) means the logits are not finite: NonFiniteLogits, at no extra cost."""
    logprob = float(torch.log_softmax(logits, dim=-1)[token])
    if not math.isfinite(logprob):
        raise NonFiniteLogits(position)
    return logprob


def generate(
    model: Starcoder2,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    stop_ids: frozenset[int] = frozenset(),
    cache: PromptCache | None = None,
    cancelled: Callable[[], bool] | None = None,
    forced: bytes = b"",
    token_bytes: Sequence[bytes] = (),
    speculation: Speculation | None = None,
    recall: Recall | None = None,
) -> Iterator[Step]:
    """Yield up to `max_new_tokens` new tokens after `prompt`, stopping before any of `stop_ids`, or as
    soon as `cancelled()` turns true (checked between prefill chunks and between forward passes). The first
    token starts with the bytes `forced` (a healed prompt's last token; `token_bytes` maps ids to bytes).
    Given `token_bytes`, only ids it holds are ever chosen: a checkpoint's vocab_size may exceed its
    tokenizer's (embeddings padded to a round number), and an id past the tokenizer has no text.

    With `speculation`, each forward pass also verifies a draft copied from earlier in the text
    (speculate.py) and yields every draft token the model keeps; the tokens are the same as without it
    (greedy), or drawn from the same distribution (sampling). `speculation` counts the drafted and
    accepted tokens; `recall` adds earlier requests' completions to draft from. The cache ends holding
    the prompt and the tokens yielded (the last one possibly not).
    Logits with NaN or Inf raise NonFiniteLogits: greedy checks the chosen token's logprob (free), sampling
    checks the whole step (~0.3 ms on CPU at 49,152 tokens, less than its own softmax and sort)."""
    if not prompt:
        raise InputError("empty prompt")
    room = (cache.max_length if cache else model.config.max_position_embeddings) - len(prompt)
    if room < 1:
        raise InputError(f"the prompt has {len(prompt)} tokens; the model holds {len(prompt) + room}")
    max_new_tokens = min(max_new_tokens, room)
    if cache is None:
        cache = PromptCache(model, len(prompt) + max_new_tokens)
    reused = cache.reuse(prompt)
    sampling = sampling or Sampling()
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(sampling.seed)
    known = len(token_bytes) or None  # logits past the tokenizer's ids are left out: [..., :known]
    logits = prefill(model, prompt[reused:], cache, cancelled=cancelled)
    logits = None if logits is None else logits[:known]
    drafter = Drafter(prompt, speculation, model.row_costs, recall) if speculation is not None else None
    token = None  # the next token when a rejected draft's verification already picked it
    produced = 0
    while produced < max_new_tokens:
        if logits is None or (cancelled is not None and cancelled()):
            return
        if token is None:
            allowed = None
            if forced and produced == 0:  # drafting starts after this token: the constraint holds
                allowed = healing_mask(token_bytes, forced, stop_ids, logits.shape[-1]).to(logits.device)
            if not sampling.greedy and not bool(
                torch.isfinite(logits).all()
            ):  # before sampling trips on them
                raise NonFiniteLogits(produced + 1)
            token = choose(logits, sampling, generator, allowed)
        if token in stop_ids:
            return
        yield Step(token, log_probability(logits, token, produced + 1))
        produced += 1
        if produced == max_new_tokens:
            return
        drafts = []
        if drafter is not None:
            drafter.push([token])
            drafts = drafter.draft(max_new_tokens - produced)
        if not drafts:
            logits, token = decode(model, [token], cache)[0, :known], None
            continue
        start = len(cache.tokens)
        rows = decode(model, [token, *drafts], cache)[:, :known]  # (1 + len(drafts), V)
        if not sampling.greedy and not bool(torch.isfinite(rows).all()):  # before the acceptance rule trips
            raise NonFiniteLogits(produced + 1)
        kept, token = verify(rows, drafts, sampling, generator)
        drafter.accept(drafts, kept)
        steps = list(_kept_steps(rows, drafts[:kept], stop_ids, max_new_tokens - produced, produced + 1))
        rollback(cache, start + 1 + len(steps))  # the cache holds exactly the tokens to yield
        for step in steps:
            if cancelled is not None and cancelled():
                return
            yield step
            produced += 1
        if len(steps) < kept:  # a stop token, or the limit
            return
        logits = rows[kept]


def _kept_steps(
    rows: torch.Tensor, kept: Sequence[int], stop_ids: frozenset[int], limit: int, position: int
) -> Iterator[Step]:
    """The steps of the drafts the model kept, up to the first stop token and at most `limit`; `position`
    is the first one's place in the completion."""
    for i, draft in enumerate(kept[:limit]):
        if draft in stop_ids:
            return
        yield Step(draft, log_probability(rows[i], draft, position + i))
