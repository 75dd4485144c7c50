"""What a completion stream carries: `Token` for each piece of text, then one `Done`. Torch-free, so the
warm server's client turns the server's JSON back into the very events an in-process engine makes, and
the CLI, the server and the benchmark read one typed record instead of each interpreting a dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .prompt import Truncation


@dataclass(frozen=True)
class Token:
    """Text the completion gained (post-processed, with the file's newlines), and the tokens generated since
    the previous event with their log-probabilities (text can lag tokens: the stop rules hold some back)."""

    text: str
    ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"type": "token", "text": self.text}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens found already computed (a warm server's KV cache)

    @property
    def computed_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True)
class Timings:
    load_s: float = 0.0
    prefill_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    drafted_tokens: int = 0  # speculative decoding: tokens copied from the prompt and verified
    accepted_tokens: int = 0  # ... of which the model kept
    acceptance_rate: float = 0.0


@dataclass(frozen=True)
class Done:
    """The whole completion and how it went. `stop_reason`: eos, max_tokens, stop (a stop string),
    postprocess (the stop rules) or cancelled."""

    text: str
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    stop_reason: str
    usage: Usage
    timings: Timings
    truncated: Truncation = field(default_factory=Truncation)
    healed: str = ""  # the prefix's last token, taken out of the prompt (token healing)
    model: str = ""
    context: tuple[dict[str, Any], ...] = ()  # other files in the prompt: {path, origin, tokens} each

    def to_json(self) -> dict[str, Any]:
        """The record `--format json` prints and the server's native protocol sends."""
        out = {
            "type": "done",
            "text": self.text,
            "tokens": list(self.tokens),
            "logprobs": list(self.logprobs),
            "stop_reason": self.stop_reason,
            "prompt_tokens": self.usage.prompt_tokens,
            "healed": self.healed,
            "completion_tokens": self.usage.completion_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "truncated": dataclasses.asdict(self.truncated),
            "model": self.model,
            "timings": dataclasses.asdict(self.timings),
        }
        if self.context:
            out["context"] = list(self.context)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Done:
        return cls(
            text=raw["text"],
            tokens=tuple(raw["tokens"]),
            logprobs=tuple(raw["logprobs"]),
            stop_reason=raw["stop_reason"],
            usage=Usage(raw["prompt_tokens"], raw["completion_tokens"], raw["cached_tokens"]),
            timings=Timings(**raw["timings"]),
            truncated=Truncation(**raw["truncated"]),
            healed=raw.get("healed", ""),
            model=raw.get("model", ""),
            context=tuple(raw.get("context") or ()),
        )


Event = Token | Done


def event_from_json(raw: dict[str, Any]) -> Event:
    """An event as `to_json` wrote it (the native protocol's stream)."""
    if raw.get("type") == "token":
        return Token(raw["text"])
    return Done.from_json(raw)
