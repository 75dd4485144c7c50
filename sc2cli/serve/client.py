"""Finding and talking to a warm `sc2 serve`, without torch: a completion through the server costs little
more than the model's own work.

A server announces itself with a small JSON file in the user runtime folder, named after the model it
serves; it listens on a Unix socket next to it (and on a loopback TCP port). The file is private to the
user (mode 0600) and carries the server's bearer token, if it has one; the client trusts it only when it
and its folder and socket are the user's own (runtime.py).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..completion.events import Event, event_from_json
from ..errors import InputError, Sc2Error
from .runtime import read_announcement

HEALTH_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens: a Unix socket path or a TCP host and port."""

    unix: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None

    @classmethod
    def from_url(cls, url: str, token: str | None = None) -> Endpoint:
        """`http://HOST:PORT` or `unix:///path/to.sock`."""
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return cls(unix=parts.path, token=token)
        if parts.scheme in ("http", "") and (parts.hostname or parts.path):
            host = parts.hostname or parts.path.split(":")[0]
            return cls(host=host, port=parts.port or 80, token=token)
        raise InputError(f"--server {url!r}: use http://HOST:PORT or unix:///path/to.sock")

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.unix:
            return _UnixConnection(self.unix, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def __str__(self) -> str:
        return f"unix://{self.unix}" if self.unix else f"http://{self.host}:{self.port}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def discover(key: str, note: Callable[[str], None] | None = None) -> tuple[Endpoint, dict[str, Any]] | None:
    """The running server for this model and what it announced (device, dtype, ...), if its announcement
    can be trusted (runtime.read_announcement) and it answers; None otherwise (never an error), with the
    reason passed to `note`."""
    found = read_announcement(key)
    say = note or (lambda message: None)
    if found.info is None:
        say(f"no warm server: {found.reason}")
        return None
    info = found.info
    try:
        endpoint = Endpoint(
            unix=info["socket"] or None, port=int(info.get("port", 0)), token=info.get("token")
        )
    except (KeyError, TypeError, ValueError):
        say("no warm server: the announcement is not a server's")
        return None
    if not healthy(endpoint):
        say(f"no warm server: the one announced at {endpoint} does not answer")
        return None
    return endpoint, info


def healthy(endpoint: Endpoint) -> bool:
    try:
        status, _ = _request(endpoint, "GET", "/health", None, HEALTH_TIMEOUT_S)
        return status == 200
    except (OSError, http.client.HTTPException):
        return False


def _headers(endpoint: Endpoint) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if endpoint.token:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    return headers


def _request(endpoint: Endpoint, method: str, path: str, body: Any, timeout: float | None) -> tuple[int, Any]:
    conn = endpoint.connection(timeout)
    try:
        conn.request(
            method, path, body=json.dumps(body) if body is not None else None, headers=_headers(endpoint)
        )
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def info(endpoint: Endpoint) -> dict[str, Any]:
    status, body = _request(endpoint, "GET", "/v1/info", None, 5)
    if status != 200:
        raise Sc2Error(f"server at {endpoint}: {_message_of(body, status)}")
    return body


def stream_completion(
    endpoint: Endpoint, request: dict[str, Any], client_id: str | None = None
) -> Iterator[Event]:
    """POST a completion request and yield the server's events (the same records `Engine.stream` makes)."""
    conn = endpoint.connection(timeout=None)
    try:
        body = {**request, "stream": True}
        if client_id:
            body["client_id"] = client_id
        try:
            conn.request("POST", "/v1/complete", body=json.dumps(body), headers=_headers(endpoint))
            response = conn.getresponse()
        except OSError as e:
            raise Sc2Error(f"cannot reach the server at {endpoint} ({e}); use --no-server") from None
        if response.status != 200:
            message = _error_message(response.read(), response.status)
            raise (InputError if 400 <= response.status < 500 else Sc2Error)(f"server: {message}")
        for line in response:
            if line.strip():
                yield event_from_json(json.loads(line))
    finally:
        conn.close()


def _error_message(data: bytes, status: int) -> str:
    """The message of the server's `{"error": {"message": ...}}` (or an older server's `{"error": "..."}`)."""
    try:
        return _message_of(json.loads(data), status)
    except ValueError:
        return f"HTTP {status}"


def _message_of(body: Any, status: int) -> str:
    try:
        error = body["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (KeyError, TypeError):
        return f"HTTP {status}"
