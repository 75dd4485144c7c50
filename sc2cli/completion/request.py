"""What a completion asks for, independent of any model: the request the CLI builds and the server
receives, and the prompt it turns into. No torch here: the client side of the warm server and
`--show-prompt` use this module without loading it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..model.config import ModelConfig
from .prompt import Document, FimTask, Prompt, build_prompt, heal
from .sampling import Sampling
from .tokenizer import Tokenizer

MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class CompletionRequest:
    """Everything a completion depends on besides the model. Text uses "\\n" newlines; `eol` is the
    newline the completion is written back with (the file's own)."""

    prefix: str
    suffix: str = ""
    path: str | None = None
    repo: str | None = None
    context: tuple[Document, ...] = ()
    metadata: bool = True
    max_tokens: int = 128
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    raw: bool = False
    heal: bool = True  # token healing of the prefix's last token (prompt.heal)
    speculate: bool = True  # draft tokens from the prompt, verified by the model (speculate.py)
    budget: int | None = None  # prompt + completion tokens; None: the engine's default for its device
    context_share: float = 0.0  # the share of the prompt's room the prefix leaves to context documents
    eol: str = "\n"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InputError(f"--max-tokens must be ≥ 1, got {self.max_tokens}")
        if not 0.0 <= self.context_share < 1.0:
            raise InputError(f"the context share must be in [0, 1), got {self.context_share}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InputError(f"at most {MAX_STOP_STRINGS} stop strings")

    @property
    def task(self) -> FimTask:
        return FimTask(self.prefix, self.suffix, self.path, self.repo, self.context, self.metadata)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["context"] = [dataclasses.asdict(d) for d in self.context]
        out["stop"] = list(self.stop)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CompletionRequest:
        """Build from JSON (the server's input); wrong types become `InputError`s naming the field."""
        if not isinstance(raw, dict):
            raise InputError("the request must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise InputError(f"unknown field {unknown[0]!r}")
        if not isinstance(raw.get("prefix"), str):
            raise InputError("field 'prefix' (a string) is required")
        values = dict(raw)
        try:
            values["context"] = tuple(
                Document(str(d["path"]), str(d["text"])) for d in raw.get("context") or ()
            )
            values["sampling"] = Sampling(**(raw.get("sampling") or {}))
            values["stop"] = tuple(str(s) for s in raw.get("stop") or ())
        except (TypeError, KeyError):
            raise InputError(
                "fields 'context' (list of {path, text}), 'sampling' or 'stop' are malformed"
            ) from None
        _check_types(values)
        return cls(**values)


def _check_types(values: dict[str, Any]) -> None:
    expected = {
        "prefix": str, "suffix": str, "path": (str, type(None)), "repo": (str, type(None)), "metadata": bool,
        "max_tokens": int, "raw": bool, "heal": bool, "speculate": bool, "budget": (int, type(None)), "eol": str,
        "context_share": (float, int),
    }  # fmt: skip
    for name, kind in expected.items():
        if name in values and (
            not isinstance(values[name], kind) or (isinstance(values[name], bool) and kind is int)
        ):
            raise InputError(f"field {name!r} has the wrong type")
    if values.get("eol", "\n") not in ("\n", "\r\n"):
        raise InputError("field 'eol' must be \\n or \\r\\n")


WINDOW_SHARE = 4  # the suffix takes at most this share of a sliding window: the first middle token must
# see the end of the prefix across it (the tiny model's 256-token window binds; the 4,096 of the real ones don't)


def prompt_for(
    request: CompletionRequest, tokenizer: Tokenizer, default_budget: int, config: ModelConfig
) -> Prompt:
    """The prompt, trimmed to the budget (never above the model's positions) minus max_tokens."""
    budget = min(request.budget or default_budget, config.max_position_embeddings)
    room = budget - request.max_tokens
    if room < 1:
        raise InputError(
            f"--max-tokens {request.max_tokens} leaves no room for the prompt in a budget of {budget} tokens"
        )
    window = config.sliding_window
    prompt = build_prompt(
        request.task,
        tokenizer,
        room,
        max_suffix=window // WINDOW_SHARE if window else None,
        context_room=int(room * request.context_share),
    )
    return heal(prompt, tokenizer) if request.heal else prompt
