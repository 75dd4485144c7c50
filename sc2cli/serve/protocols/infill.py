"""llama.cpp's `POST /infill`, as llama.vim and llama.vscode send and read it (llama.cpp's server README
and the plugins' sources): `input_prefix`, `input_suffix`, `input_extra` (other files: `{text, filename}`,
other keys such as llama.vim's `time` ignored), `prompt` (the start of the cursor's line), `n_predict`
(-1 or absent: no limit but the context's; 0: only compute the prompt into the cache), `stop`,
`temperature`, `top_k`, `top_p`, `seed`, `t_max_predict_ms` (stop once that long has passed since the
first token and a newline was generated), `response_fields` (flat `"timings/prompt_n"` keys); server-sent
events when `stream` is true. Other fields (`id_slot`, `samplers`, `cache_prompt`, `n_indent`,
`t_max_prompt_ms`, `n_cmpl`, `model`, ...) are accepted and ignored: one completion, always cached.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from ...completion.events import Done, Event, Token
from ...completion.prompt import Document
from ...completion.request import CompletionRequest
from ...errors import InputError
from ...repo import CONTEXT_SHARE
from ...repo.context import context_tokens, editor_chunks
from .fields import flag, number, sampling_fields, stops, text

STOP_TYPES = {"max_tokens": "limit", "stop": "word", "cancelled": "cancelled"}  # else: eos
UNLIMITED = -1


@dataclass(frozen=True)
class Options:
    """What the request asks of the reply rather than of the completion."""

    n_predict: int = UNLIMITED  # as sent: -1 no limit, 0 warm the cache only
    response_fields: tuple[str, ...] = ()
    t_max_predict_ms: int = 0  # 0: no time limit
    stream: bool = False

    @property
    def warm_only(self) -> bool:
        return self.n_predict == 0


def options(body: dict) -> Options:
    n_predict = number(body, "n_predict", int, UNLIMITED)
    if n_predict < UNLIMITED:
        raise InputError(f"field 'n_predict' must be -1 (no limit), 0 (prompt only) or more, got {n_predict}")
    fields = body.get("response_fields") or []
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise InputError("field 'response_fields' must be a list of strings")
    t_max = number(body, "t_max_predict_ms", int, 0)
    return Options(n_predict, tuple(fields), max(t_max, 0), flag(body, "stream"))


def parse(body: dict, max_tokens: int) -> CompletionRequest:
    """The completion; `prompt` continues the prefix. `max_tokens` is what `n_predict` came to."""
    extra = body.get("input_extra") or []
    if not isinstance(extra, list) or not all(_chunk(e) for e in extra):
        raise InputError('field \'input_extra\' must be a list of {"text": string, "filename": string}')
    return CompletionRequest(
        prefix=text(body, "input_prefix") + text(body, "prompt"),
        suffix=text(body, "input_suffix"),
        path=body.get("filename") if isinstance(body.get("filename"), str) else None,
        context=tuple(Document(e.get("filename") or "", e["text"]) for e in extra),
        max_tokens=max_tokens,
        sampling=sampling_fields(body),
        stop=stops(body.get("stop")),
        raw=flag(body, "raw"),
    )


def with_recent(request: CompletionRequest, n_ctx: int) -> CompletionRequest:
    """The request with chunks that earlier requests sent (`input_extra`) and that look like the lines
    around its cursor, after its own, in the room the default context share leaves them; its own chunks
    are remembered for the requests after it (repo/recent.py)."""
    tokens = context_tokens(n_ctx, request.max_tokens, CONTEXT_SHARE, request.context)
    recalled = editor_chunks(request.path, request.prefix, request.suffix, request.context, tokens)
    return dataclasses.replace(request, context=request.context + recalled) if recalled else request


def _chunk(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("text"), str)
        and isinstance(item.get("filename", ""), (str, type(None)))
    )


def is_empty(request: CompletionRequest) -> bool:
    """Nothing to compute: a cache-warming request with no text and no other files."""
    return not (request.prefix or request.suffix or any(d.text for d in request.context))


def client_id(body: dict) -> Any:
    return body.get("client_id")


class PredictDeadline:
    """llama.cpp's `t_max_predict_ms`: true (stop) once `ms` have passed since the first token and a
    newline has been generated; `see` each event as it goes out."""

    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.first: float | None = None
        self.newline = False
        self.fired = False

    def see(self, event: Event) -> None:
        if not isinstance(event, Token) or not self.ms:
            return
        now = time.monotonic()
        self.first = self.first if self.first is not None else now
        self.newline = self.newline or "\n" in event.text
        self.fired = self.newline and (now - self.first) * 1000 >= self.ms

    def __call__(self) -> bool:
        return self.fired


def token_reply(token: Token) -> dict[str, Any]:
    return {"index": 0, "content": token.text, "tokens": list(token.ids), "stop": False}


@dataclass(frozen=True)
class Asked:
    """What a reply reports besides the completion: the request, its options, the context size."""

    request: CompletionRequest
    options: Options
    n_ctx: int


def reply(done: Done, streamed: bool, asked: Asked | None = None, timed_out: bool = False) -> dict[str, Any]:
    """The final record, in llama.cpp's keys and order; when streaming it carries no text (that was sent
    already). `timed_out`: `t_max_predict_ms` stopped it (a limit, not a cancellation)."""
    opts = asked.options if asked else Options()
    warm = opts.warm_only
    usage = done.usage
    predicted = 0 if warm else usage.completion_tokens
    stop_type = "limit" if warm or timed_out else STOP_TYPES.get(done.stop_reason, "eos")
    out_of_room = opts.n_predict == UNLIMITED and done.stop_reason == "max_tokens"
    return {
        "index": 0,
        "content": "" if streamed or warm else done.text,
        "tokens": [],
        "id_slot": 0,
        "stop": True,
        "model": done.model,
        "tokens_predicted": predicted,
        "tokens_evaluated": usage.prompt_tokens,
        "generation_settings": _settings(asked, done.model),
        "has_new_line": "\n" in done.text and not warm,
        "truncated": done.truncated.any() or out_of_room,
        "stop_type": stop_type,
        "stopping_word": _stopping_word(done, asked) if stop_type == "word" else "",
        "tokens_cached": usage.cached_tokens,
        "timings": timings(done, predicted),
    }


def _settings(asked: Asked | None, model: str) -> dict[str, Any]:
    if asked is None:
        return {"n_ctx": 0, "n_predict": UNLIMITED, "model": model}
    s = asked.request.sampling
    return {
        "n_ctx": asked.n_ctx,
        "n_predict": asked.options.n_predict,
        "model": model,
        "temperature": s.temperature,
        "top_k": s.top_k or 0,
        "top_p": 1.0 if s.top_p is None else s.top_p,
        "seed": -1 if s.seed is None else s.seed,
        "stop": list(asked.request.stop),
        "stream": asked.options.stream,
        "t_max_predict_ms": asked.options.t_max_predict_ms,
    }


def _stopping_word(done: Done, asked: Asked | None) -> str:
    """The stop string that ended it: the engine cuts the text before it, so the first one that the
    full text would have continued with is not known; report the first listed."""
    return asked.request.stop[0] if asked and asked.request.stop else ""


def timings(done: Done, predicted: int) -> dict[str, int | float]:
    """llama.cpp's timings: counts as integers (llama.vim prints them with %d), times in ms and rates as
    finite numbers (0 where nothing was timed); `draft_n` and `draft_n_accepted` where tokens were drafted,
    as llama.cpp's server adds them for its speculative decoding."""
    prompt_n = done.usage.computed_tokens
    prompt_ms = done.timings.prefill_s * 1000
    predicted_ms = done.timings.decode_s * 1000 if predicted else 0.0
    drafts = {}
    if done.timings.drafted_tokens:
        drafts = {"draft_n": done.timings.drafted_tokens, "draft_n_accepted": done.timings.accepted_tokens}
    return {
        "cache_n": done.usage.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": round(prompt_ms, 3),
        "prompt_per_token_ms": _ratio(prompt_ms, prompt_n),
        "prompt_per_second": _ratio(prompt_n * 1000, prompt_ms),
        "predicted_n": predicted,
        "predicted_ms": round(predicted_ms, 3),
        "predicted_per_token_ms": _ratio(predicted_ms, predicted),
        "predicted_per_second": _ratio(predicted * 1000, predicted_ms),
        **drafts,
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else 0.0


def select(reply_: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """llama.cpp's `response_fields`: a flat object keyed by each path (`"timings/prompt_n"`) whose every
    step exists; missing paths are left out; no fields: the whole reply."""
    if not fields:
        return reply_
    out = {}
    for path in fields:
        value: Any = reply_
        for step in path.split("/"):
            if not isinstance(value, dict) or step not in value:
                break
            value = value[step]
        else:
            out[path] = value
    return out
