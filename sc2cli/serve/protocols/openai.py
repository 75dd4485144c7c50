"""OpenAI's legacy `POST /v1/completions` with `prompt` + `suffix` (fill-in-the-middle); server-sent
events ending in `data: [DONE]` when `stream` is true. Temperature defaults to 0 (greedy)."""

from __future__ import annotations

from typing import Any

from ...completion.events import Done, Token
from ...completion.request import CompletionRequest
from ...completion.sampling import Sampling
from ...errors import InputError
from .fields import number, stops, text


def parse(body: dict) -> CompletionRequest:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InputError("field 'prompt' must be a string (one prompt per request)")
    return CompletionRequest(
        prefix=prompt,
        suffix=text(body, "suffix"),
        max_tokens=number(body, "max_tokens", int, 16),
        sampling=Sampling(
            number(body, "temperature", float, 0.0),
            None,
            number(body, "top_p", float, None),
            number(body, "seed", int, None),
        ),
        stop=stops(body.get("stop")),
        raw=bool(body.get("raw", False)),
    )


def client_id(body: dict) -> Any:
    return body.get("user")


def token_reply(token: Token) -> dict[str, Any]:
    return {"choices": [{"text": token.text, "index": 0, "logprobs": None, "finish_reason": None}]}


def reply(done: Done, streamed: bool) -> dict[str, Any]:
    usage = done.usage
    return {
        "choices": [
            {
                "text": "" if streamed else done.text,
                "index": 0,
                "logprobs": None,
                "finish_reason": "length" if done.stop_reason == "max_tokens" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }
