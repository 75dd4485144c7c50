"""The two protocols an engine can speak, as request bodies and parsed stream chunks.

- OpenAI-compatible `POST /v1/completions` (vLLM, TGI, llama.cpp's server): the prompt as a list of token
  ids; `logprobs` (vLLM returns ids with `return_tokens_as_token_ids`; llama.cpp lists `{id, logprob,
  top_logprobs}` under `content`); `finish_reason` set on the last chunk; `data: [DONE]` at the end.
- llama.cpp's native `POST /completion`: `prompt` as ids, `n_predict`, `n_probs`; each chunk carries
  `content`, `tokens` and `completion_probabilities`; the last has `stop: true`.

llama.cpp sends no chunk for a token that ends inside a UTF-8 character (its id arrives with no chunk of its
own), so its text is taken as sent; vLLM's ids are complete and are decoded by sc2's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..completion.sampling import Sampling
from .address import EngineAddress
from .transport import error_message

FLOOR = -9999.0  # vLLM's floor for a -inf logprob; also stands in for a missing one
PROBE = "def add(a, b):\n    return a + b  # sum\n"  # tokenized by both sides to compare vocabularies


@dataclass(frozen=True)
class Candidate:
    """One of the most likely tokens at a position: its id when the engine says it, its text otherwise."""

    token: int | None
    text: str
    logprob: float


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    ids_complete: bool = False  # every generated token's id is here: decode them rather than take `text`
    candidates: tuple[Candidate, ...] = ()  # the most likely tokens at the chunk's first position
    final: bool = False
    limit: bool = False  # the engine stopped at the token limit
    cached: int | None = None  # prompt tokens the engine found in its cache (the last chunk)
    error: str | None = None


class OpenAI:
    """`POST {base}/completions`, streamed."""

    def __init__(self, address: EngineAddress) -> None:
        self.address = address
        self.model: str | None = None  # the served model's id (vLLM wants it in every request)

    @property
    def completions_path(self) -> str:
        return self.address.path + "/completions"

    @property
    def models_path(self) -> str:
        return self.address.path + "/models"

    def body(
        self,
        ids: Sequence[int],
        max_tokens: int,
        sampling: Sampling,
        stop_ids: Sequence[int],
        top: int = 0,
        stream: bool = True,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": list(ids), "max_tokens": max_tokens, "stream": stream,
            "temperature": sampling.temperature, "top_p": sampling.top_p or 1.0, "min_p": 0.0,
            "logprobs": max(top, 1), "return_tokens_as_token_ids": True,
            "stop_token_ids": sorted(stop_ids), "skip_special_tokens": True,
        }  # fmt: skip
        if self.model:
            body["model"] = self.model
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def chunk(self, data: Any) -> Chunk:
        if not isinstance(data, dict):
            return Chunk(error=f"unexpected event {str(data)[:80]!r}")
        if data.get("error"):
            return Chunk(error=error_message(data))
        choices = data.get("choices") or []
        cached = ((data.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if not choices:
            return Chunk(cached=cached)
        choice = choices[0]
        parsed = _openai_logprobs(choice.get("logprobs"))
        return Chunk(
            text=choice.get("text") or "",
            **parsed,
            final=choice.get("finish_reason") is not None,
            limit=choice.get("finish_reason") == "length",
            cached=cached,
        )


def _openai_logprobs(logprobs: Any) -> dict[str, Any]:
    if not isinstance(logprobs, dict):
        return {}
    if isinstance(logprobs.get("content"), list):  # llama.cpp: a list of {id, logprob, top_logprobs}
        return _llama_probs(logprobs["content"])
    tokens = logprobs.get("tokens") or []
    ids = [_token_id(t) for t in tokens]
    values = [v if isinstance(v, (int, float)) else FLOOR for v in logprobs.get("token_logprobs") or []]
    tops = logprobs.get("top_logprobs") or []
    first = tops[0] if tops and isinstance(tops[0], dict) else {}
    candidates = tuple(
        Candidate(_token_id(k), "" if _token_id(k) is not None else str(k), float(v))
        for k, v in first.items()
    )
    complete = bool(ids) and all(i is not None for i in ids)
    return {
        "ids": tuple(ids) if complete else (),
        "logprobs": tuple(values) if complete else (),
        "ids_complete": complete,
        "candidates": candidates,
    }


def _token_id(token: Any) -> int | None:
    """vLLM's `token_id:123` spelling of a token (return_tokens_as_token_ids)."""
    if isinstance(token, str) and token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return None


def _llama_probs(probs: Any) -> dict[str, Any]:
    if not isinstance(probs, list) or not probs:
        return {}
    ids = tuple(int(p["id"]) for p in probs if isinstance(p, dict) and "id" in p)
    values = tuple(float(p.get("logprob", FLOOR)) for p in probs if isinstance(p, dict) and "id" in p)
    tops = probs[0].get("top_logprobs") or [] if isinstance(probs[0], dict) else []
    candidates = tuple(
        Candidate(int(t["id"]), str(t.get("token", "")), float(t.get("logprob", FLOOR)))
        for t in tops
        if isinstance(t, dict) and "id" in t
    )
    return {"ids": ids, "logprobs": values, "candidates": candidates}


class Llama:
    """llama.cpp's `POST /completion`, streamed."""

    def __init__(self, address: EngineAddress) -> None:
        self.address = address
        self.model: str | None = None

    @property
    def completions_path(self) -> str:
        return self.address.path + "/completion"

    @property
    def models_path(self) -> str:
        return self.address.path + "/v1/models"

    def body(
        self,
        ids: Sequence[int],
        max_tokens: int,
        sampling: Sampling,
        stop_ids: Sequence[int],
        top: int = 0,
        stream: bool = True,
    ) -> dict[str, Any]:
        # llama.cpp's defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05) are set explicitly
        body: dict[str, Any] = {
            "prompt": list(ids), "n_predict": max_tokens, "stream": stream, "cache_prompt": True,
            "temperature": sampling.temperature, "top_k": sampling.top_k or 0, "top_p": sampling.top_p or 1.0,
            "min_p": 0.0, "n_probs": top,
        }  # fmt: skip
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def chunk(self, data: Any) -> Chunk:
        if not isinstance(data, dict):
            return Chunk(error=f"unexpected event {str(data)[:80]!r}")
        if data.get("error"):
            return Chunk(error=error_message(data))
        probs = _llama_probs(data.get("completion_probabilities"))
        tokens = data.get("tokens") or []
        ids = tuple(int(t) for t in tokens if isinstance(t, int))
        return Chunk(
            text=data.get("content") or "",
            ids=ids or probs.get("ids", ()),
            logprobs=probs.get("logprobs", ()) if len(probs.get("ids", ())) == len(ids) else (),
            candidates=probs.get("candidates", ()),
            final=data.get("stop") is True,
            limit=data.get("stop_type") == "limit",
            cached=(data.get("timings") or {}).get("cache_n"),
        )


Dialect = OpenAI | Llama


def dialect_for(address: EngineAddress) -> Dialect:
    return OpenAI(address) if address.protocol == "openai" else Llama(address)


@dataclass(frozen=True)
class Served:
    """What an engine says it serves: the model's id, its vocabulary size and context, when it says."""

    model: str | None
    n_vocab: int | None
    n_ctx: int | None


def served_model(models: Any) -> Served:
    """From `GET /v1/models`: vLLM's `max_model_len`, llama.cpp's `meta` {n_vocab, n_ctx}."""
    data = models.get("data") if isinstance(models, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    meta = first.get("meta") if isinstance(first.get("meta"), dict) else {}
    n_ctx = meta.get("n_ctx") or first.get("max_model_len")
    return Served(
        first.get("id") if isinstance(first.get("id"), str) else None,
        meta.get("n_vocab") if isinstance(meta.get("n_vocab"), int) else None,
        n_ctx if isinstance(n_ctx, int) else None,
    )


def tokenize_body(model: str | None) -> dict[str, Any]:
    """`POST /tokenize` for both: llama.cpp reads `content`, vLLM `prompt`; each ignores the other's."""
    body: dict[str, Any] = {
        "content": PROBE,
        "prompt": PROBE,
        "add_special": False,
        "add_special_tokens": False,
    }
    if model:
        body["model"] = model
    return body
