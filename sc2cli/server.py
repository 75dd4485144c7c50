"""`sc2 serve`: one loaded model answering completions over HTTP, reusing the KV cache of recent prompts.

Endpoints (JSON in, JSON out; errors are `{"error": message}` with a 4xx/5xx status):
- `POST /v1/complete`: our own; the body is a `CompletionRequest` (plus `stream`, `client_id`, `model`);
  it answers with the very events `Engine.stream` makes (NDJSON when streaming), so `sc2 complete`
  through the server prints exactly what it prints in-process.
- `POST /infill`: llama.cpp's (`input_prefix`, `input_suffix`, `input_extra`, `prompt`, `n_predict`,
  `stream` as server-sent events).
- `POST /v1/completions`: OpenAI's legacy completions with `prompt` + `suffix` (FIM), SSE streaming.
- `GET /health` (as llama.cpp's), `GET /v1/models`, `GET /v1/info`.

One generation runs at a time; others queue. A request is cancelled at the next token when its client
disconnects, or when a newer request arrives with the same `client_id` (editors fire one per keystroke).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import socketserver
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .completion import Engine
from .errors import InputError
from .prompt import Document
from .request import CompletionRequest, Sampling

DEFAULT_PORT = 8712
DEFAULT_IDLE_TIMEOUT_S = 900
MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_TOKENS_LIMIT = 2048


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    socket_path: Path | None = None
    announcement: Path | None = None
    key: str = ""
    token: str | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    max_body: int = MAX_BODY_BYTES
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    log: Callable[[str], None] = lambda message: None


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Ticket:
    """A request's place in the queue: cancelled by a newer request of the same client."""

    client_id: str | None
    cancelled: threading.Event = field(default_factory=threading.Event)


class Service:
    """The state shared by all connections: the engine, the queue, the clients, the idle clock."""

    def __init__(self, engine: Engine, options: ServerOptions) -> None:
        self.engine = engine
        self.options = options
        self._engine_lock = threading.Lock()
        self._clients_lock = threading.Lock()
        self._latest: dict[str, _Ticket] = {}
        self.active = 0
        self.last_activity = time.monotonic()
        self.started = time.time()

    def ticket(self, client_id: str | None) -> _Ticket:
        ticket = _Ticket(client_id)
        if client_id:
            with self._clients_lock:
                older = self._latest.get(client_id)
                if older is not None:
                    older.cancelled.set()
                self._latest[client_id] = ticket
        return ticket

    def run(
        self, request: CompletionRequest, ticket: _Ticket, disconnected: Callable[[], bool]
    ) -> Iterator[dict]:
        """The engine's events for `request`, once it is this request's turn."""
        self.active += 1
        try:
            with self._engine_lock:
                self.last_activity = time.monotonic()

                def cancelled() -> bool:
                    return ticket.cancelled.is_set() or disconnected()

                yield from self.engine.stream(request, cancelled=cancelled)
        finally:
            self.active -= 1
            self.last_activity = time.monotonic()

    def info(self) -> dict[str, Any]:
        engine = self.engine
        config = engine.model.config
        return {
            "model": engine.name,
            "key": self.options.key,
            "device": str(engine.model.device),
            "dtype": str(engine.model.dtype).removeprefix("torch."),
            "attn": engine.model.attn_backend,
            "default_budget": engine.default_budget,
            "max_position_embeddings": config.max_position_embeddings,
            "sliding_window": config.sliding_window,
            "vocab_size": config.vocab_size,
            "cache_slots": engine.cache_slots,
            "max_tokens_limit": self.options.max_tokens_limit,
            "load_s": round(engine.load_seconds, 3),
            "pid": os.getpid(),
            "started": self.started,
        }


# ------------------------------------------------------------------------------------------------ protocols


def _number(body: dict, name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"field {name!r} must be a {kind.__name__}")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise InputError("field 'stop' must be a string or a list of strings")


def _text(body: dict, name: str, required: bool = False) -> str:
    value = body.get(name, None if required else "")
    if not isinstance(value, str):
        raise InputError(f"field {name!r} (a string) is {'required' if value is None else 'not a string'}")
    return value


def infill_request(body: dict) -> CompletionRequest:
    """llama.cpp's /infill: `prompt` continues the prefix (the start of the cursor's line)."""
    extra = body.get("input_extra") or []
    if not isinstance(extra, list) or not all(isinstance(e, dict) for e in extra):
        raise InputError("field 'input_extra' must be a list of {filename, text}")
    return CompletionRequest(
        prefix=_text(body, "input_prefix") + _text(body, "prompt"),
        suffix=_text(body, "input_suffix"),
        path=body.get("filename") if isinstance(body.get("filename"), str) else None,
        context=tuple(Document(str(e.get("filename", "")), str(e.get("text", ""))) for e in extra),
        max_tokens=_number(body, "n_predict", int, 128),
        sampling=Sampling(
            _number(body, "temperature", float, 0.0),
            _number(body, "top_k", int, None) or None,
            _number(body, "top_p", float, None),
            _number(body, "seed", int, None),
        ),
        stop=_stops(body.get("stop")),
        raw=bool(body.get("raw", False)),
    )


def openai_request(body: dict) -> CompletionRequest:
    """OpenAI's /v1/completions with `prompt` + `suffix`. Temperature defaults to 0 (greedy)."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InputError("field 'prompt' must be a string (one prompt per request)")
    return CompletionRequest(
        prefix=prompt,
        suffix=_text(body, "suffix"),
        max_tokens=_number(body, "max_tokens", int, 16),
        sampling=Sampling(
            _number(body, "temperature", float, 0.0),
            None,
            _number(body, "top_p", float, None),
            _number(body, "seed", int, None),
        ),
        stop=_stops(body.get("stop")),
        raw=bool(body.get("raw", False)),
    )


def own_request(body: dict) -> CompletionRequest:
    return CompletionRequest.from_json(body)


# ------------------------------------------------------------------------------------------------ HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sc2"
    service: Service  # set on the subclass made for each server

    # --- routing

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _get(self) -> None:
        routes = {
            "/health": lambda: {"status": "ok"},
            "/v1/info": self.service.info,
            "/v1/models": lambda: {
                "object": "list",
                "data": [{"id": self.service.engine.name, "object": "model", "owned_by": "sc2"}],
            },
        }
        if self.path not in routes:
            raise HTTPError(
                404 if self.path not in ("/v1/complete", "/infill", "/v1/completions") else 405,
                f"no GET {self.path}",
            )
        if self.path != "/health":
            self._authorize()
        self._send_json(200, routes[self.path]())

    def _post(self) -> None:
        handlers = {"/v1/complete": self._complete, "/infill": self._infill, "/v1/completions": self._openai}
        if self.path not in handlers:
            raise HTTPError(
                404 if self.path not in ("/health", "/v1/info", "/v1/models") else 405, f"no POST {self.path}"
            )
        self._authorize()
        handlers[self.path](self._body())

    def _guard(self, handle: Callable[[], None]) -> None:
        """Every failure becomes a JSON error reply; the server itself keeps serving."""
        try:
            handle()
        except HTTPError as e:
            self._send_json(e.status, {"error": str(e)})
        except InputError as e:
            self._send_json(400, {"error": str(e)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug: answer, log, keep serving
            self.service.options.log(f"internal error on {self.command} {self.path}: {type(e).__name__}: {e}")
            self._send_json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    # --- requests

    def _authorize(self) -> None:
        token = self.service.options.token
        if token and self.headers.get("Authorization", "") != f"Bearer {token}":
            raise HTTPError(401, "missing or wrong bearer token (Authorization: Bearer ...)")

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HTTPError(411, "a Content-Length header is required") from None
        if length > self.service.options.max_body:
            self.close_connection = True
            raise HTTPError(413, f"request body over {self.service.options.max_body} bytes")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def _check(self, request: CompletionRequest) -> CompletionRequest:
        limit = self.service.options.max_tokens_limit
        if request.max_tokens > limit:
            raise InputError(f"max_tokens {request.max_tokens} is over this server's limit of {limit}")
        return request

    def _events(self, request: CompletionRequest, client_id: Any) -> Iterator[dict]:
        ticket = self.service.ticket(client_id if isinstance(client_id, str) else None)
        return self.service.run(self._check(request), ticket, self._disconnected)

    def _complete(self, body: dict) -> None:
        stream, client_id, model = (
            body.pop("stream", False),
            body.pop("client_id", None),
            body.pop("model", None),
        )
        if model is not None and model not in (self.service.options.key, self.service.engine.name):
            raise InputError(f"this server serves {self.service.engine.name}, not {model}")
        events = self._events(own_request(body), client_id)
        if stream:
            first = next(events)  # errors in the request surface before the 200
            self._start_stream("application/x-ndjson")
            for event in _chain(first, events):
                self._send_chunk(json.dumps(event, ensure_ascii=False) + "\n")
        else:
            done = _last(events)
            self._send_json(200, {k: v for k, v in done.items() if k != "type"})

    def _infill(self, body: dict) -> None:
        events = self._events(infill_request(body), body.get("id_slot") or body.get("client_id"))
        if body.get("stream"):
            first = next(events)
            self._start_stream("text/event-stream")
            for event in _chain(first, events):
                self._send_chunk(_sse(_infill_reply(event, streamed=True)))
        else:
            self._send_json(200, _infill_reply(_last(events), streamed=False))

    def _openai(self, body: dict) -> None:
        events = self._events(openai_request(body), body.get("user"))
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.service.engine.name,
        }
        if body.get("stream"):
            first = next(events)
            self._start_stream("text/event-stream")
            for event in _chain(first, events):
                self._send_chunk(_sse({**meta, **_openai_reply(event, streamed=True)}))
            self._send_chunk("data: [DONE]\n\n")
        else:
            self._send_json(200, {**meta, **_openai_reply(_last(events), streamed=False)})

    # --- responses

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        """A body delimited by closing the connection, written as events arrive."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _send_chunk(self, text: str) -> None:
        self.wfile.write(text.encode())
        self.wfile.flush()

    def _disconnected(self) -> bool:
        """The client hung up: its socket reads as closed (checked without blocking)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def log_message(self, format: str, *args: Any) -> None:
        self.service.options.log(f"{self.command} {self.path} " + (format % args if args else format))


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def _last(events: Iterator[dict]) -> dict:
    done: dict = {}
    for done in events:  # noqa: B007 - the last event is the "done" record
        pass
    return done


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _infill_reply(event: dict, streamed: bool) -> dict:
    """llama.cpp's reply shape; when streaming, the final record carries no text (it was sent already)."""
    if event["type"] == "token":
        return {"content": event["text"], "stop": False}
    timings = event["timings"]
    return {
        "content": "" if streamed else event["text"],
        "stop": True,
        "stop_type": {"max_tokens": "limit", "stop": "word"}.get(event["stop_reason"], "eos"),
        "tokens_predicted": event["completion_tokens"],
        "tokens_evaluated": event["prompt_tokens"],
        "tokens_cached": event["cached_tokens"],
        "truncated": any(event["truncated"].values()),
        "timings": {
            "prompt_n": event["prompt_tokens"] - event["cached_tokens"],
            "prompt_ms": timings["prefill_s"] * 1000,
            "predicted_n": event["completion_tokens"],
            "predicted_ms": timings["decode_s"] * 1000,
        },
        "model": event["model"],
    }


def _openai_reply(event: dict, streamed: bool) -> dict:
    if event["type"] == "token":
        return {"choices": [{"text": event["text"], "index": 0, "logprobs": None, "finish_reason": None}]}
    finish = "length" if event["stop_reason"] == "max_tokens" else "stop"
    usage = {
        "prompt_tokens": event["prompt_tokens"],
        "completion_tokens": event["completion_tokens"],
        "total_tokens": event["prompt_tokens"] + event["completion_tokens"],
    }
    text = "" if streamed else event["text"]
    return {
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


# ------------------------------------------------------------------------------------------------ running


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # BaseHTTPRequestHandler wants a (host, port)-like address for its logs
        conn, _ = super().get_request()
        return conn, ("unix", 0)


def serve(engine: Engine, options: ServerOptions, ready: Callable[[dict], None] | None = None) -> str:
    """Serve until SIGTERM/SIGINT or `idle_timeout` seconds without a request; returns why it stopped."""
    service = Service(engine, options)
    handler = type("BoundHandler", (Handler,), {"service": service})
    servers: list[socketserver.BaseServer] = [_TCPServer((options.host, options.port), handler)]
    if options.socket_path is not None:
        servers.append(_bind_unix(options.socket_path, handler))
    port = servers[0].server_address[1]
    stop = threading.Event()
    reason = ["idle"]

    def on_signal(signum: int, _frame: Any) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in servers
    ]
    for t in threads:
        t.start()
    details = {**service.info(), "port": port, "host": options.host, "socket": str(options.socket_path or "")}
    _announce(options, details)
    if ready:
        ready(details)
    try:
        while not stop.wait(0.5):
            idle = time.monotonic() - service.last_activity
            if options.idle_timeout and service.active == 0 and idle > options.idle_timeout:
                break
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        _withdraw(options)
        for s, handler_ in previous.items():
            signal.signal(s, handler_)
    return reason[0]


def _bind_unix(path: Path, handler: type) -> _UnixServer:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
        path.unlink()  # a stale socket left by a server that died; a live one was ruled out by the caller
    server = _UnixServer(str(path), handler)
    os.chmod(path, 0o600)
    return server


def _announce(options: ServerOptions, details: dict) -> None:
    """Tell clients where this server is (and its token): a private file in the runtime folder."""
    if options.announcement is None:
        return
    payload = {**details, "key": options.key, "token": options.token}
    tmp = options.announcement.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    os.replace(tmp, options.announcement)


def _withdraw(options: ServerOptions) -> None:
    for path in (options.announcement, options.socket_path):
        if path is not None:
            try:
                if path == options.announcement and json.loads(path.read_text()).get("pid") != os.getpid():
                    continue  # another server took over the name
                path.unlink()
            except (OSError, ValueError):
                pass
