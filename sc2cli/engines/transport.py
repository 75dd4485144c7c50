"""HTTP to an engine with the standard library: JSON requests, server-sent event streams, and every failure
as one line (unreachable, refused, an HTTP error with the engine's own message, a timeout, a cut stream).

The bearer token goes in a header only: it is never part of a message, a URL or a process's arguments.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import Sc2Error
from .address import EngineAddress

if TYPE_CHECKING:
    from ..completion.events import Done

MESSAGE_CHARS = 300  # an engine's error text is cut to this many characters (one line)


class EngineError(Sc2Error):
    """The engine could not be used: one line saying why."""


class StreamCut(EngineError):
    """The stream broke after part of the completion arrived; `partial` is what arrived, as a `Done`."""

    def __init__(self, message: str, partial: Done | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class Broken(Exception):
    """Reading the stream failed (internal: the engine client turns it into a StreamCut)."""


class Link:
    """Requests to one engine, with its timeouts and bearer token."""

    def __init__(self, address: EngineAddress, token: str | None = None) -> None:
        self.address = address
        self._token = token

    def __repr__(self) -> str:  # never shows the token
        return f"Link({self.address})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _connect(self) -> http.client.HTTPConnection:
        a = self.address
        kind = http.client.HTTPSConnection if a.tls else http.client.HTTPConnection
        conn = kind(a.host, a.port, timeout=a.connect_timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise EngineError(
                f"the engine at {a} did not accept a connection within {a.connect_timeout:g}s "
                "(raise it with ?connect_timeout=SECONDS in the URL)"
            ) from None
        except ConnectionRefusedError:
            conn.close()
            raise EngineError(f"cannot reach the engine at {a}: connection refused; is it running?") from None
        except (OSError, ssl.SSLError) as e:
            conn.close()
            raise EngineError(f"cannot reach the engine at {a}: {_reason(e)}") from None
        assert conn.sock is not None
        conn.sock.settimeout(a.token_timeout)  # from now on: the wait for each answer, each token
        return conn

    def _send(self, method: str, path: str, body: Any) -> tuple[http.client.HTTPConnection, Any]:
        conn = self._connect()
        data = json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, path, body=data, headers=self._headers())
            return conn, conn.getresponse()
        except TimeoutError:
            conn.close()
            raise EngineError(self._silent(path)) from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise EngineError(f"the engine at {self.address} dropped the connection ({_reason(e)})") from None

    def _silent(self, path: str) -> str:
        t = self.address.token_timeout
        return (
            f"the engine at {self.address} sent nothing for {t:g}s on {path} "
            "(raise it with ?token_timeout=SECONDS in the URL)"
        )

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One JSON request: (status, parsed body or None). HTTP errors are returned, not raised."""
        conn, response = self._send(method, path, body)
        try:
            raw = response.read()
        except TimeoutError:
            raise EngineError(self._silent(path)) from None
        except (OSError, http.client.HTTPException) as e:
            raise EngineError(f"the engine at {self.address} dropped the connection ({_reason(e)})") from None
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")

    def stream(self, path: str, body: Any) -> Iterator[Any]:
        """POST and yield each server-sent event's JSON data (`None` for `[DONE]`). Closing the iterator
        closes the connection: the engine stops generating. An HTTP error is an EngineError with the
        engine's own message; failures mid-stream raise `Broken`."""
        conn, response = self._send("POST", path, body)
        try:
            if response.status >= 400:
                raise self.refusal(response.status, _read_quietly(response))
            yield from _events(response, self._silent(path))
        finally:
            conn.close()

    def refusal(self, status: int, body: Any) -> EngineError:
        """The one line for an HTTP error from the engine, with its own message."""
        hint = " (check --engine-token or SC2_ENGINE_TOKEN)" if status in (401, 403) else ""
        return EngineError(f"the engine at {self.address} answered {status}: {error_message(body)}{hint}")


def path_on(address: EngineAddress, path: str, *, root: bool = False) -> str:
    """`path` under the API's base path (or the server's root)."""
    return (address.root if root else address.path) + path


def error_message(body: Any) -> str:
    """An engine's error text: OpenAI/vLLM/llama.cpp `{"error": {"message"}}`, the older flat `{"message"}`,
    TGI's `{"error": "..."}`, FastAPI's `{"detail"}`, or the raw body; one line, cut to a length."""
    message: Any = body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail") or json.dumps(inner)
        elif isinstance(inner, str):
            message = inner
        else:
            message = body.get("message") or body.get("detail") or json.dumps(body)
    text = " ".join(str(message or "no message").split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _events(response: http.client.HTTPResponse, silent: str) -> Iterator[Any]:
    """Server-sent events: `data:` lines gathered until a blank line; `error:` lines too (llama.cpp)."""
    data: list[str] = []
    while True:
        try:
            raw = response.readline()
        except TimeoutError:
            raise Broken(silent) from None
        except (OSError, http.client.HTTPException) as e:
            raise Broken(f"the connection broke ({_reason(e)})") from None
        if not raw:
            if data:
                yield _decode("\n".join(data))
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith(("data:", "error:")):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            data.append(value if field == "data" else json.dumps({"error": _decode(value)}))
        elif not line and data:
            yield _decode("\n".join(data))
            data = []


def _decode(data: str) -> Any:
    if data.strip() == "[DONE]":
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise Broken(f"the engine sent an event that is not JSON: {data[:80]!r}") from None


def _read_quietly(response: http.client.HTTPResponse) -> Any:
    try:
        raw = response.read()
    except (OSError, http.client.HTTPException):
        return ""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return "unknown host"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
