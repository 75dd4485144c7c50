"""The HTTP side of `sc2 serve`: routing, authorization, bodies, and replies in each protocol's shape.

JSON in, compact single-line JSON out (serve/wire.py); errors are `{"error": {"message", "type", "param",
"code"}}` with a 4xx/5xx status. Every connection stays in step: a body the server does not read (an
early 401, 404, 405, 411, 413) is drained when it is small and the connection closed when it is not, and
each request must arrive whole within `request_timeout` seconds (slow or silent clients are dropped).
Parsing a body into a request and shaping replies is the protocols' job (serve/protocols/); running the
engine is the service's (serve/service.py).
"""

from __future__ import annotations

import hmac
import io
import math
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from ..completion.events import Done, Event, Timings, Token, Usage
from ..completion.request import CompletionRequest
from ..errors import InputError
from . import wire
from .protocols import completion, infill, native, openai
from .service import Service

POST_ROUTES = ("/v1/complete", "/infill", "/completion", "/v1/completions")
GET_ROUTES = ("/health", "/v1/info", "/v1/models")
DRAIN_LIMIT = (
    1 << 20
)  # an unread body up to this size is read and dropped; a bigger one closes the connection


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class _DeadlineReader(io.RawIOBase):
    """The socket's input, failing with `TimeoutError` once `deadline` (monotonic seconds) has passed:
    one deadline for a whole request, so a client sending a byte a second cannot hold a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sc2"
    service: Service  # set on the subclass made for each server

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, 1 << 16)

    def handle_one_request(self) -> None:
        """One request, which must arrive whole within the request timeout (from the moment it is awaited,
        so an idle keep-alive connection closes after as long)."""
        self._reader.deadline = time.monotonic() + self.service.options.request_timeout
        self._body_read = False
        super().handle_one_request()

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
        self._settle_body()
        self._send_json(200, routes[self.path]())

    def _post(self) -> None:
        handlers = {
            "/v1/complete": self._complete,
            "/infill": self._infill,
            "/completion": self._completion,
            "/v1/completions": self._openai,
        }
        if self.path not in handlers:
            raise HTTPError(404 if self.path not in GET_ROUTES else 405, f"no POST {self.path}")
        self._authorize()
        handlers[self.path](self._body())

    def _guard(self, handle: Callable[[], None]) -> None:
        """Every failure becomes a JSON error reply; the server itself keeps serving."""
        try:
            handle()
        except HTTPError as e:
            self._send_error(e.status, str(e), e.param)
        except InputError as e:
            self._send_error(400, str(e))
        except TimeoutError:
            self.close_connection = True
            self._send_error(408, "the request did not arrive in time")
        except OSError:  # the client hung up
            self.close_connection = True
        except Exception as e:  # a bug: answer, log, keep serving
            self.service.options.log(f"internal error on {self.command} {self.path}: {type(e).__name__}: {e}")
            self._send_error(500, f"internal error: {type(e).__name__}: {e}")

    # --- requests

    def _authorize(self) -> None:
        token = self.service.options.token
        given = self.headers.get("Authorization", "")
        if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPError(
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer' with the server's SC2_SERVER_TOKEN",
            )

    def _body(self) -> Any:
        """The JSON object the request carries (its `Content-Length` bytes, read once)."""
        self._body_read = True
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length, not Transfer-Encoding")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise HTTPError(411, "a Content-Length header is required") from None
        if length < 0 or length > self.service.options.max_body:
            self.close_connection = True
            raise HTTPError(413, f"request body over {self.service.options.max_body} bytes")
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise HTTPError(400, "the body ended before its Content-Length")
        body = wire.loads(raw)
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def _settle_body(self) -> None:
        """Keep the connection in step when the body was not read: drop a small one, else close."""
        if self._body_read:
            return
        self._body_read = True
        length = self.headers.get("Content-Length") if self.headers else None
        if self.headers and self.headers.get("Transfer-Encoding"):
            self.close_connection = True
        elif length is not None:
            try:
                size = int(length)
                if not 0 <= size <= DRAIN_LIMIT or len(self.rfile.read(size)) < size:
                    self.close_connection = True
            except (ValueError, OSError):
                self.close_connection = True

    def _events(
        self,
        request: CompletionRequest,
        client_id: Any,
        field: str,
        stop_early: Callable[[], bool] | None = None,
    ) -> Iterator[Event]:
        limit = self.service.options.max_tokens_limit
        if request.max_tokens > limit:
            raise InputError(f"field {field!r}: {request.max_tokens} is over this server's limit of {limit}")
        n_ctx = self.service.context_size(request)
        if request.max_tokens >= n_ctx:
            raise InputError(
                f"field {field!r}: {request.max_tokens} leaves no room for the prompt in {n_ctx} tokens of context"
            )
        ticket = self.service.ticket(client_id if isinstance(client_id, str) else None)
        disconnected = self._disconnected
        if stop_early is not None:
            disconnected = lambda: stop_early() or self._disconnected()  # noqa: E731
        return self.service.run(request, ticket, disconnected)

    def _complete(self, body: dict) -> None:
        stream, client_id, model = (
            body.pop("stream", False),
            body.pop("client_id", None),
            body.pop("model", None),
        )
        self._check_model(model, allow_empty=False)
        events = self._events(native.parse(body), client_id, "max_tokens")
        if stream:
            self._stream(events, native.CONTENT_TYPE, lambda e: wire.dumps(native.event_json(e)) + "\n")
        else:
            self._send_json(200, native.reply(_last(events)))

    def _check_model(self, model: Any, allow_empty: bool) -> None:
        names = (self.service.options.key, self.service.engine.name)
        if model is None or (allow_empty and model == "") or model in names:
            return
        raise HTTPError(
            404,
            f"the model {model!r} does not exist here: this server runs {self.service.engine.name}",
            "model",
        )

    def _infill(self, body: dict) -> None:
        opts = infill.options(body)
        n_ctx = self.service.context_size(None)
        unlimited = min(self.service.options.max_tokens_limit, n_ctx // 2)
        request = infill.parse(body, {infill.UNLIMITED: unlimited, 0: 1}.get(opts.n_predict, opts.n_predict))
        request = infill.with_recent(request, n_ctx)  # chunks other requests sent, for this one
        asked = infill.Asked(request, opts, n_ctx)
        if opts.warm_only and infill.is_empty(request):  # nothing to compute
            nothing = Done(
                "", (), (), "max_tokens", Usage(0, 0, 0), Timings(), model=self.service.engine.name
            )
            self._send_json(200, infill.select(infill.reply(nothing, False, asked), opts.response_fields))
            return
        deadline = infill.PredictDeadline(opts.t_max_predict_ms)
        events = _watched(self._events(request, infill.client_id(body), "n_predict", deadline), deadline)
        if opts.warm_only:
            events = (e for e in events if isinstance(e, Done))
        if opts.stream:
            final = lambda e: infill.reply(e, True, asked, deadline.fired)  # noqa: E731
            self._stream(events, "text/event-stream", lambda e: _sse(_shape(infill.token_reply, final, e)))
        else:
            reply = infill.reply(_last(events), False, asked, deadline.fired)
            self._send_json(200, infill.select(reply, opts.response_fields))

    def _completion(self, body: dict) -> None:
        self._infill(completion.as_infill(body, self._spell))

    def _spell(self, token_id: int) -> bytes:
        """A token id's bytes (control tokens spelled out as text); an unknown id is the client's mistake."""
        table = self.service.engine.tokenizer.token_bytes
        if not 0 <= token_id < len(table):
            raise InputError(
                f"field 'prompt': token id {token_id} is not in the vocabulary (0-{len(table) - 1})"
            )
        return table[token_id]

    def _openai(self, body: dict) -> None:
        self._check_model(body.get("model"), allow_empty=True)
        opts = openai.options(body)
        request = openai.parse(body)
        events = self._events(request, openai.client_id(body), "max_tokens")
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.service.engine.name,
        }
        if opts.stream:
            echo = [request.prefix if opts.echo else ""]  # goes out with the first chunk

            def token(e: Token) -> dict[str, Any]:
                chunk, echo[0] = openai.token_reply(e, echo[0]), ""
                return chunk

            final = lambda e: openai.reply(e, True)  # noqa: E731
            self._stream(
                events,
                "text/event-stream",
                lambda e: _sse({**meta, **_shape(token, final, e)}),
                end="data: [DONE]\n\n",
                error=lambda message: _sse(wire.error_body(500, message)),
            )
        else:
            spell = self.service.engine.tokenizer.token_bytes
            token_text = lambda i: spell[i].decode("utf-8", "replace")  # noqa: E731
            reply = openai.reply(_last(events), False, opts, request.prefix, token_text)
            self._send_json(200, {**meta, **reply})

    # --- responses

    def _send_error(self, status: int, message: str, param: str | None = None) -> None:
        self._settle_body()
        self._send_json(status, wire.error_body(status, message, param))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own errors (a garbled request line, an unknown method) in our JSON."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # a garbled line leaves HTTP/0.9, which has no status line
        self.log_error("code %d, message %s", code, message)
        self._send_json(code, wire.error_body(code, message or self.responses.get(code, ("error",))[0]))

    def _writing(self) -> None:
        """Writes get their own timeout (a client that stops reading is dropped), not the request's."""
        self.connection.settimeout(self.service.options.request_timeout)

    def _send_json(self, status: int, payload: Any) -> None:
        data = wire.dumps(payload).encode()
        self._writing()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _stream(
        self,
        events: Iterator[Event],
        content_type: str,
        chunk: Callable[[Event], str],
        end: str = "",
        error: Callable[[str], str] | None = None,
    ) -> None:
        """A body delimited by closing the connection, written as events arrive. The first event is
        taken before the 200 goes out, so errors in the request still get their own status; a failure
        after that is logged and, where the protocol has a way to say it, sent as a last chunk."""
        first = next(events)
        self._writing()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in _chain(first, events):
                self._send_chunk(chunk(event))
        except OSError:
            raise
        except Exception as e:
            self.service.options.log(f"failed mid-stream on {self.path}: {type(e).__name__}: {e}")
            if error is not None:
                self._send_chunk(error(f"{type(e).__name__}: {e}"))
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
        where = f"{getattr(self, 'command', None) or '-'} {getattr(self, 'path', '-')}"
        self.service.options.log(f"{where} " + (format % args if args else format))


def _shape(token: Callable[[Token], dict], final: Callable[[Done], dict], event: Event) -> dict[str, Any]:
    """A protocol's record for one event: its token reply, or its final reply."""
    return token(event) if isinstance(event, Token) else final(event)


def _watched(events: Iterator[Event], deadline: infill.PredictDeadline) -> Iterator[Event]:
    for event in events:
        deadline.see(event)
        yield event


def _chain(first: Event, rest: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from rest


def _last(events: Iterator[Event]) -> Done:
    done = None
    for done in events:  # noqa: B007 - the last event is the Done record
        pass
    assert isinstance(done, Done), "an engine's stream ends with Done"
    return done


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {wire.dumps(payload)}\n\n"
