"""OpenAI's legacy `POST /v1/completions` with `prompt` + `suffix` (fill-in-the-middle); server-sent
events ending in `data: [DONE]` when `stream` is true. Temperature defaults to 0 (greedy), `max_tokens`
to 16 (as OpenAI's and vLLM's).

Of the fields that change the reply's shape: `echo` puts the prompt before the text; `logprobs: 0` gives
each generated token with its log-probability (`top_logprobs` holds just that token: the engine keeps no
alternatives, so `logprobs` above 0 is refused, as are `echo` with `logprobs` and `logprobs` when
streaming); `n` and `best_of` above 1 are refused (one completion per request). Nothing is ignored
silently; unknown fields are (as OpenAI's own clients add their own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...completion.events import Done, Token
from ...completion.request import CompletionRequest
from ...errors import InputError
from .fields import flag, number, sampling_fields, stops, text

DEFAULT_MAX_TOKENS = 16
TOKEN_LOGPROB_FLOOR = -9999.0  # what vLLM writes for -inf


@dataclass(frozen=True)
class Options:
    echo: bool = False
    logprobs: int | None = None
    stream: bool = False


def prompt_of(body: dict) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InputError("field 'prompt' must be a string (one prompt per request)")
    return prompt


def options(body: dict) -> Options:
    for name in ("n", "best_of"):
        count = number(body, name, int, 1)
        if count != 1:
            raise InputError(f"field {name!r}: this server makes one completion per request, got {count}")
    logprobs = number(body, "logprobs", int, None)
    opts = Options(flag(body, "echo"), logprobs, flag(body, "stream"))
    if logprobs is not None and logprobs != 0:
        raise InputError(
            f"field 'logprobs': only 0 (the chosen tokens' log-probabilities) is supported, got {logprobs}"
        )
    if logprobs is not None and (opts.echo or opts.stream):
        raise InputError("field 'logprobs' is supported without 'echo' and 'stream' only")
    return opts


def parse(body: dict) -> CompletionRequest:
    max_tokens = number(body, "max_tokens", int, DEFAULT_MAX_TOKENS)
    if max_tokens < 1:
        raise InputError(f"field 'max_tokens' must be at least 1, got {max_tokens}")
    return CompletionRequest(
        prefix=prompt_of(body),
        suffix=text(body, "suffix"),
        max_tokens=max_tokens,
        sampling=sampling_fields(body),
        stop=stops(body.get("stop")),
        raw=flag(body, "raw"),
    )


def client_id(body: dict) -> Any:
    return body.get("user")


def token_reply(token: Token, echo: str = "") -> dict[str, Any]:
    """A streamed chunk; `echo` (the prompt) goes before the first one's text."""
    return {"choices": [{"text": echo + token.text, "index": 0, "logprobs": None, "finish_reason": None}]}


def reply(
    done: Done,
    streamed: bool,
    opts: Options | None = None,
    prompt: str = "",
    token_text: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """The final record; when streaming it carries no text (that was sent already). `token_text` spells
    one token (for `logprobs`)."""
    opts = opts or Options()
    usage = done.usage
    logprobs = None
    if opts.logprobs is not None and token_text is not None:
        logprobs = _logprobs(done, token_text)
    return {
        "choices": [
            {
                "text": "" if streamed else (prompt if opts.echo else "") + done.text,
                "index": 0,
                "logprobs": logprobs,
                "finish_reason": "length" if done.stop_reason == "max_tokens" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


def _logprobs(done: Done, token_text: Callable[[int], str]) -> dict[str, list]:
    """OpenAI's record: each generated token, its log-probability and its offset in the text."""
    tokens = [token_text(t) for t in done.tokens]
    values = [max(lp, TOKEN_LOGPROB_FLOOR) for lp in done.logprobs]
    offsets, at = [], 0
    for piece in tokens:
        offsets.append(at)
        at += len(piece)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": [{t: v} for t, v in zip(tokens, values, strict=True)],
        "text_offset": offsets,
    }
