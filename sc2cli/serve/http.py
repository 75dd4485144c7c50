"""The HTTP side of `sc2 serve`: routing, authorization, bodies, and replies in each protocol's shape.

JSON in, JSON out; errors are `{"error": message}` with a 4xx/5xx status. Parsing a body into a request
and shaping replies is the protocols' job (serve/protocols/); running the engine is the service's
(serve/server.py).
"""

from __future__ import annotations

import json
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from ..completion.events import Done, Event, Token
from ..completion.request import CompletionRequest
from ..errors import InputError
from .protocols import infill, native, openai
from .service import Service

POST_ROUTES = ("/v1/complete", "/infill", "/v1/completions")
GET_ROUTES = ("/health", "/v1/info", "/v1/models")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
            raise HTTPError(404 if self.path not in POST_ROUTES else 405, f"no GET {self.path}")
        if self.path != "/health":
            self._authorize()
        self._send_json(200, routes[self.path]())

    def _post(self) -> None:
        handlers = {"/v1/complete": self._complete, "/infill": self._infill, "/v1/completions": self._openai}
        if self.path not in handlers:
            raise HTTPError(404 if self.path not in GET_ROUTES else 405, f"no POST {self.path}")
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

    def _events(self, request: CompletionRequest, client_id: Any) -> Iterator[Event]:
        limit = self.service.options.max_tokens_limit
        if request.max_tokens > limit:
            raise InputError(f"max_tokens {request.max_tokens} is over this server's limit of {limit}")
        ticket = self.service.ticket(client_id if isinstance(client_id, str) else None)
        return self.service.run(request, ticket, self._disconnected)

    def _complete(self, body: dict) -> None:
        stream, client_id, model = (
            body.pop("stream", False),
            body.pop("client_id", None),
            body.pop("model", None),
        )
        if model is not None and model not in (self.service.options.key, self.service.engine.name):
            raise InputError(f"this server serves {self.service.engine.name}, not {model}")
        events = self._events(native.parse(body), client_id)
        if stream:
            self._stream(events, native.CONTENT_TYPE, lambda e: _ndjson(native.event_json(e)))
        else:
            self._send_json(200, native.reply(_last(events)))

    def _infill(self, body: dict) -> None:
        events = self._events(infill.parse(body), infill.client_id(body))
        if body.get("stream"):
            self._stream(events, "text/event-stream", lambda e: _sse(_shape(infill, e, streamed=True)))
        else:
            self._send_json(200, infill.reply(_last(events), streamed=False))

    def _openai(self, body: dict) -> None:
        events = self._events(openai.parse(body), openai.client_id(body))
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.service.engine.name,
        }
        if body.get("stream"):
            chunk = lambda e: _sse({**meta, **_shape(openai, e, streamed=True)})  # noqa: E731
            self._stream(events, "text/event-stream", chunk, end="data: [DONE]\n\n")
        else:
            self._send_json(200, {**meta, **openai.reply(_last(events), streamed=False)})

    # --- responses

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(
        self, events: Iterator[Event], content_type: str, chunk: Callable[[Event], str], end: str = ""
    ) -> None:
        """A body delimited by closing the connection, written as events arrive. The first event is
        taken before the 200 goes out, so errors in the request still get their own status."""
        first = next(events)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in _chain(first, events):
            self._send_chunk(chunk(event))
        if end:
            self._send_chunk(end)

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


def _shape(protocol: Any, event: Event, streamed: bool) -> dict[str, Any]:
    """A protocol's record for one event: its token reply, or its final reply."""
    if isinstance(event, Token):
        return protocol.token_reply(event)
    return protocol.reply(event, streamed=streamed)


def _chain(first: Event, rest: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from rest


def _last(events: Iterator[Event]) -> Done:
    done = None
    for done in events:  # noqa: B007 - the last event is the Done record
        pass
    assert isinstance(done, Done), "an engine's stream ends with Done"
    return done


def _ndjson(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False) + "\n"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
