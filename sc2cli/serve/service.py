"""The state a server's connections share: the engine, the queue in front of it, each editor's latest
request (a newer one cancels the older), and the idle clock."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..completion.events import Event
from ..completion.request import CompletionRequest
from ..completion.runner import Runner

DEFAULT_PORT = 8712
DEFAULT_IDLE_TIMEOUT_S = 900
MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_TOKENS_LIMIT = 2048
DEFAULT_REQUEST_TIMEOUT_S = 10.0  # a request (line, headers, body) must arrive whole within this
DEFAULT_MAX_CONNECTIONS = 64  # connections served at once (a thread each); more get a 503


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
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    log: Callable[[str], None] = lambda message: None


@dataclass
class Ticket:
    """A request's place in the queue: cancelled by a newer request of the same client."""

    client_id: str | None
    cancelled: threading.Event = field(default_factory=threading.Event)


class Service:
    """The state shared by all connections: the engine, the queue, the clients, the idle clock."""

    def __init__(self, engine: Runner, options: ServerOptions) -> None:
        self.engine = engine
        self.options = options
        self._engine_lock = threading.Lock()
        self._clients_lock = threading.Lock()
        self._latest: dict[str, Ticket] = {}
        self.active = 0
        self.last_activity = time.monotonic()
        self.started = time.time()

    def ticket(self, client_id: str | None) -> Ticket:
        ticket = Ticket(client_id)
        if client_id:
            with self._clients_lock:
                older = self._latest.get(client_id)
                if older is not None:
                    older.cancelled.set()
                self._latest[client_id] = ticket
        return ticket

    def run(
        self, request: CompletionRequest, ticket: Ticket, disconnected: Callable[[], bool]
    ) -> Iterator[Event]:
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

    def context_size(self, request: CompletionRequest | None) -> int:
        """Prompt + completion tokens a request may use: its budget (or the engine's), within the model."""
        budget = request.budget if request is not None and request.budget else self.engine.default_budget
        return min(budget, self.engine.limit)

    def info(self) -> dict[str, Any]:
        return {
            **self.engine.describe(),
            "key": self.options.key,
            "max_tokens_limit": self.options.max_tokens_limit,
            "pid": os.getpid(),
            "started": self.started,
        }
