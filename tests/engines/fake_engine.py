"""A serving engine on 127.0.0.1 that speaks both protocols sc2's engine client uses, as vLLM and llama.cpp
document them: `POST /v1/completions` (OpenAI: token-id prompts, `logprobs` with vLLM's
`return_tokens_as_token_ids`, SSE chunks, `data: [DONE]`), `POST /completion` (llama.cpp: `n_probs`,
`completion_probabilities`, the last chunk `stop: true`, no chunk for a token that ends inside a UTF-8
character), `GET /v1/models`, `POST /tokenize`, errors as `{"error": {"code", "message", "type"}}`.

What generates the tokens is a backend: `Script` (a fixed list, for the failure cases) or `ModelBackend`
(sc2's own model run in this process, so "through the engine" and "in-process" can be compared for real).
Failures on demand: an HTTP error, a bearer token to require, a stream cut or an error event after N
tokens, a stall longer than the client's token timeout.
"""

from __future__ import annotations

import codecs
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = tuple[int, float, list[tuple[int, float]]]  # token, its logprob, the top (token, logprob) pairs


@dataclass
class Script:
    """Generates `tokens` whatever the prompt; the top candidates at each step are `tops[i]` if given."""

    tokens: Sequence[int]
    tops: dict[int, list[tuple[int, float]]] = field(default_factory=dict)

    def run(self, ids: list[int], max_tokens: int, top: int, eos: int) -> Iterator[Step]:
        for i, token in enumerate(list(self.tokens)[:max_tokens]):
            yield token, -0.5, self.tops.get(i, [(token, -0.5)])[: max(top, 1)]


class ModelBackend:
    """sc2's model, greedy, stopping at the engine's EOS only (as vLLM and llama.cpp do by default)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lock = threading.Lock()

    def run(self, ids: list[int], max_tokens: int, top: int, eos: int) -> Iterator[Step]:
        import torch

        from sc2cli.completion.generate import PromptCache, decode, prefill

        with self.lock:
            cache = PromptCache(self.model, len(ids) + max_tokens)
            logits = prefill(self.model, ids, cache)
            for i in range(max_tokens):
                logprobs = torch.log_softmax(logits, dim=-1)
                best = torch.topk(logprobs, min(max(top, 1), logprobs.shape[-1]))
                tops = [(int(t), float(v)) for v, t in zip(best.values, best.indices, strict=True)]
                token = int(torch.argmax(logits))
                yield token, float(logprobs[token]), tops
                if token == eos:
                    return
                if i + 1 < max_tokens:
                    logits = decode(self.model, [token], cache)[0]


@dataclass
class Behaviour:
    token: str | None = None  # bearer token to require
    status: int | None = None  # answer completions with this HTTP error
    message: str = "model overloaded"
    cut_after: int | None = None  # close the stream after this many tokens, without its end
    error_after: int | None = None  # send an error event after this many tokens
    stall_after: int | None = None  # stop sending (but keep the connection) after this many tokens
    stall_s: float = 5.0
    n_vocab: int | None = None  # what /v1/models says (None: the tokenizer's)
    tokenize_shift: int = 0  # /tokenize answers ids + shift (another vocabulary)
    tokenize: bool = True  # /tokenize exists
    n_ctx: int | None = None


class FakeEngine:
    """`with FakeEngine(backend, tokenizer) as engine:` serves on `engine.port`."""

    def __init__(self, backend: Any, tokenizer: Any, behaviour: Behaviour | None = None, delay: float = 0.0):
        self.backend, self.tokenizer = backend, tokenizer
        self.behaviour = behaviour or Behaviour()
        self.delay = delay  # seconds between tokens: lets a client's early close be seen
        self.requests: list[tuple[str, dict, dict]] = []  # (path, headers, body)
        self.generated: list[int] = []  # tokens generated per completion request
        self.hung_up = threading.Event()  # a client closed a stream before its end
        handler = type("Handler", (_Handler,), {"engine": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client hanging up is expected here
        self.port = self.server.server_address[1]

    def url(self, protocol: str, query: str = "") -> str:
        base = f"{protocol}+http://127.0.0.1:{self.port}" + ("/v1" if protocol == "openai" else "")
        return base + (f"?{query}" if query else "")

    def __enter__(self) -> FakeEngine:
        threading.Thread(
            target=self.server.serve_forever, args=(0.02,), daemon=True
        ).start()  # quick shutdown
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _error(status: int, message: str) -> dict:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    return {"error": {"code": status, "message": message, "type": kinds.get(status, "server_error")}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine: FakeEngine

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        wanted = self.engine.behaviour.token
        if wanted and self.headers.get("Authorization") != f"Bearer {wanted}":
            self._json(401, _error(401, "Invalid API Key"))
            return False
        return True

    def do_GET(self) -> None:
        self.engine.requests.append((self.path, dict(self.headers), {}))
        if not self._authorized():
            return
        if self.path != "/v1/models":
            return self._json(404, _error(404, f"no route {self.path}"))
        b = self.engine.behaviour
        meta = {"vocab_type": 2, "n_vocab": b.n_vocab or self.engine.tokenizer.vocab_size, "n_ctx": b.n_ctx}
        model = {"id": "fake-sc2", "object": "model", "owned_by": "llamacpp", "meta": meta}
        self._json(200, {"object": "list", "data": [model]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        self.engine.requests.append((self.path, dict(self.headers), body))
        if not self._authorized():
            return
        if self.path == "/tokenize" and self.engine.behaviour.tokenize:
            text = body.get("content") or body.get("prompt") or ""
            ids = [i + self.engine.behaviour.tokenize_shift for i in self.engine.tokenizer.encode(text)]
            return self._json(200, {"tokens": ids})
        if self.path not in ("/v1/completions", "/completion"):
            return self._json(404, _error(404, f"File Not Found: {self.path}"))
        b = self.engine.behaviour
        if b.status:
            return self._json(b.status, _error(b.status, b.message))
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not all(isinstance(i, int) for i in prompt):
            return self._json(400, _error(400, "this fake takes token-id prompts only"))
        openai = self.path == "/v1/completions"
        limit = body.get("max_tokens" if openai else "n_predict", 16)
        top = int(body.get("logprobs" if openai else "n_probs") or 0)
        steps = self.engine.backend.run(prompt, limit, top, self.engine.tokenizer.eos_id)
        if body.get("stream"):
            (self._openai_stream if openai else self._llama_stream)(steps, top, limit)
        else:
            self._whole(steps, top, limit, openai)

    # --- replies

    def _whole(self, steps: Iterator[Step], top: int, limit: int, openai: bool) -> None:
        taken = list(steps)
        self.engine.generated.append(len(taken))
        text = self.engine.tokenizer.decode([t for t, _, _ in taken if t != self.engine.tokenizer.eos_id])
        if openai:
            logprobs = {
                "tokens": [f"token_id:{t}" for t, _, _ in taken],
                "token_logprobs": [lp for _, lp, _ in taken],
                "top_logprobs": [{f"token_id:{i}": v for i, v in tops} for _, _, tops in taken],
                "text_offset": [0] * len(taken),
            }
            choice = {
                "index": 0,
                "text": text,
                "logprobs": logprobs if top else None,
                "finish_reason": "length",
            }
            return self._json(200, {"id": "cmpl-1", "object": "text_completion", "choices": [choice]})
        probs = [_llama_prob(self.engine.tokenizer, t, lp, tops) for t, lp, tops in taken]
        self._json(
            200,
            {
                "content": text,
                "tokens": [],
                "stop": True,
                "stop_type": "limit",
                "completion_probabilities": probs,
            },
        )

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _send(self, payload: Any) -> bool:
        """One event; False once the client has hung up."""
        try:
            data = "[DONE]" if payload is None else json.dumps(payload, separators=(",", ":"))
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            self.engine.hung_up.set()
            return False

    def _interrupt(self, n: int) -> bool:
        """Apply the configured failure after `n` tokens; True when the stream must end here."""
        b = self.engine.behaviour
        if b.cut_after == n:
            self.connection.shutdown(2)
            return True
        if b.error_after == n:
            self._send(_error(500, "CUDA out of memory"))
            return True
        if b.stall_after == n:
            time.sleep(b.stall_s)
            return True
        return False

    def _tokens(self, steps: Iterator[Step]) -> Iterator[tuple[int, Step]]:
        """The steps, counted in `engine.generated[-1]` as they are made; `self.ended`: all were made."""
        self.engine.generated.append(0)
        self.ended = False
        for n, step in enumerate(steps, 1):
            if self._interrupt(n - 1):
                return
            time.sleep(self.engine.delay)
            self.engine.generated[-1] = n
            yield n, step
        self.ended = True

    def _openai_stream(self, steps: Iterator[Step], top: int, limit: int) -> None:
        self._start_stream()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tok, n, last = self.engine.tokenizer, 0, None
        for n, (token, lp, tops) in self._tokens(steps):
            last = token
            text = "" if token == tok.eos_id else decoder.decode(tok.token_bytes[token])
            logprobs = {
                "tokens": [f"token_id:{token}"], "token_logprobs": [lp],
                "top_logprobs": [{f"token_id:{i}": v for i, v in tops}], "text_offset": [0],
            }  # fmt: skip
            finish = "stop" if token == tok.eos_id else "length" if n == limit else None
            choice = {
                "index": 0,
                "text": text,
                "logprobs": logprobs if top else None,
                "finish_reason": finish,
            }
            if not self._send(
                {"id": "cmpl-1", "object": "text_completion", "model": "fake-sc2", "choices": [choice]}
            ):
                return
        if self.ended and (n == limit or last == tok.eos_id):
            self._send(None)

    def _llama_stream(self, steps: Iterator[Step], top: int, limit: int) -> None:
        self._start_stream()
        tok, n, last = self.engine.tokenizer, 0, None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for n, (token, lp, tops) in self._tokens(steps):
            last = token
            text = decoder.decode(
                b"" if token in tok.stop_ids else tok.token_bytes[token]
            )  # control: no text
            if decoder.getstate()[0]:
                continue  # as llama.cpp: no chunk while a character is incomplete (this token's id is lost)
            chunk = {
                "index": 0,
                "content": text,
                "tokens": [token],
                "stop": False,
                "id_slot": 0,
                "tokens_predicted": n,
            }
            if top:
                chunk["completion_probabilities"] = [_llama_prob(tok, token, lp, tops)]
            if not self._send(chunk):
                return
        if self.ended and (n == limit or last == tok.eos_id):
            stop_type = "eos" if last == tok.eos_id else "limit"
            self._send(
                {"content": "", "tokens": [], "stop": True, "stop_type": stop_type, "timings": {"cache_n": 3}}
            )


def _llama_prob(tokenizer: Any, token: int, logprob: float, tops: list[tuple[int, float]]) -> dict:
    def entry(t: int, v: float) -> dict:
        raw = tokenizer.token_bytes[t]
        return {"id": t, "token": raw.decode("utf-8", "replace"), "bytes": list(raw), "logprob": v}

    return {**entry(token, logprob), "top_logprobs": [entry(t, v) for t, v in tops]}
