"""llama.cpp's `POST /infill`, as llama.vim and llama.vscode send it: `input_prefix`, `input_suffix`,
`input_extra` (other files), `prompt` (the start of the cursor's line), `n_predict`; server-sent events
when `stream` is true."""

from __future__ import annotations

from typing import Any

from ...completion.events import Done, Token
from ...completion.prompt import Document
from ...completion.request import CompletionRequest
from ...completion.sampling import Sampling
from ...errors import InputError
from .fields import number, stops, text

STOP_TYPES = {"max_tokens": "limit", "stop": "word"}  # everything else: eos


def parse(body: dict) -> CompletionRequest:
    """`prompt` continues the prefix (the start of the cursor's line)."""
    extra = body.get("input_extra") or []
    if not isinstance(extra, list) or not all(isinstance(e, dict) for e in extra):
        raise InputError("field 'input_extra' must be a list of {filename, text}")
    return CompletionRequest(
        prefix=text(body, "input_prefix") + text(body, "prompt"),
        suffix=text(body, "input_suffix"),
        path=body.get("filename") if isinstance(body.get("filename"), str) else None,
        context=tuple(Document(str(e.get("filename", "")), str(e.get("text", ""))) for e in extra),
        max_tokens=number(body, "n_predict", int, 128),
        sampling=Sampling(
            number(body, "temperature", float, 0.0),
            number(body, "top_k", int, None) or None,
            number(body, "top_p", float, None),
            number(body, "seed", int, None),
        ),
        stop=stops(body.get("stop")),
        raw=bool(body.get("raw", False)),
    )


def client_id(body: dict) -> Any:
    return body.get("id_slot") or body.get("client_id")


def token_reply(token: Token) -> dict[str, Any]:
    return {"content": token.text, "stop": False}


def reply(done: Done, streamed: bool) -> dict[str, Any]:
    """The final record; when streaming it carries no text (that was sent already)."""
    usage, timings = done.usage, done.timings
    return {
        "content": "" if streamed else done.text,
        "stop": True,
        "stop_type": STOP_TYPES.get(done.stop_reason, "eos"),
        "tokens_predicted": usage.completion_tokens,
        "tokens_evaluated": usage.prompt_tokens,
        "tokens_cached": usage.cached_tokens,
        "truncated": done.truncated.any(),
        "timings": {
            "prompt_n": usage.computed_tokens,
            "prompt_ms": timings.prefill_s * 1000,
            "predicted_n": usage.completion_tokens,
            "predicted_ms": timings.decode_s * 1000,
        },
        "model": done.model,
    }
