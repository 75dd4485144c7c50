"""JSON as the server writes and reads it.

Replies are compact, single-line UTF-8 JSON, as llama.cpp writes them: llama.vim checks a reply with the
pattern `"content"\\s*:"` before parsing it, so `"content": "` (a space after the colon) is thrown away.
Bodies are parsed strictly: `NaN`/`Infinity` and `1e999` (which Python's json turns into floats), nesting too deep to walk,
and strings with lone surrogates (which cannot be encoded again) are client errors, not server faults.
Errors are shaped `{"error": {"message", "type", "param", "code"}}` (llama.cpp, OpenAI, vLLM alike).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import InputError

MAX_DEPTH = 64  # a request body is a few levels deep; deeper nesting is refused before anything walks it

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "unavailable_error",
}


def dumps(payload: Any) -> str:
    """Compact JSON on one line, UTF-8 left as is (only quotes, backslashes and controls escaped)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error record every endpoint answers with; `code` is the HTTP status."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def loads(raw: bytes) -> Any:
    """A request body, or an `InputError` saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise InputError(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:
        raise InputError(f"the body is not valid JSON ({e})") from None
    _check(value)
    return value


def _refuse_constant(name: str) -> Any:
    raise InputError(f"the body holds {name}, which is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"the body holds {text}, a number too large for a float")
    return value


def _check(value: Any) -> None:
    """Walk the body once (iteratively): bounded depth, strings that encode as UTF-8."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _check_text(key, where)
                stack.append((inner, key if not where else f"{where}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{i}]", depth + 1) for i, inner in enumerate(item))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        field = f"field {where!r}" if where else "the body"
        raise InputError(f"{field} holds a lone surrogate ({text[e.start]!r}), which is not text") from None
