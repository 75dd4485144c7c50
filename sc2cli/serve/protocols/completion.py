"""llama.cpp's `POST /completion`: a plain prompt continued, with /infill's fields and replies.

The prompt is text, a list of token ids, or a list mixing both (as llama.cpp accepts); ids are decoded to
their text, so a control token's id can never enter the prompt as control (sc2 builds its own FIM prompt:
the text becomes the prefix, with an empty suffix). llama.cpp applies no post-processing here, so neither
does sc2 unless `raw: false` is sent: the completion stops at EOS, `stop` strings or `n_predict`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import InputError

MAX_PROMPT_PARTS = 1 << 16


def as_infill(body: dict, spell: Callable[[int], bytes]) -> dict[str, Any]:
    """The /infill body that asks for the same completion: `prompt` as the prefix, no suffix."""
    if "input_prefix" in body or "input_suffix" in body:
        raise InputError("/completion takes 'prompt'; send input_prefix/input_suffix to /infill")
    return {
        **body,
        "input_prefix": _prompt_text(body.get("prompt", ""), spell),
        "prompt": "",
        "input_suffix": "",
        "raw": body.get("raw", True),
    }


def _prompt_text(prompt: Any, spell: Callable[[int], bytes]) -> str:
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or len(prompt) > MAX_PROMPT_PARTS:
        raise InputError("field 'prompt' must be a string, or a list of token ids and strings")
    text, run = [], b""  # ids are joined as bytes first: a character may span two tokens
    for part in [*prompt, ""]:
        if isinstance(part, int) and not isinstance(part, bool):
            run += spell(part)
        elif isinstance(part, str):
            text += [run.decode("utf-8", "replace"), part]
            run = b""
        else:
            raise InputError("field 'prompt' must be a string, or a list of token ids and strings")
    return "".join(text)
