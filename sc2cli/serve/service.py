"""The state a server's connections share: the engine, the queue in front of it, each editor's latest
request (a newer one cancels the older), and the idle clock.

The model runs on one thread only, the one that loaded it (`work`), while connections are served on a
thread each. PyTorch's OpenMP pool belongs to the thread that uses it: a model driven from a thread per
connection starts a pool per thread, and with more pool threads than cores OpenMP stops spinning between
parallel regions (3B in int4, 2 cores: 9-12 tok/s from other threads against 15-16 from the loading one)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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
    speculate: bool = True  # False: no request drafts (`sc2 serve --no-speculate`), whatever it asks
    log: Callable[[str], None] = lambda message: None


@dataclass
class Ticket:
    """A request's place in the queue: cancelled by a newer request of the same client."""

    client_id: str | None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Job:
    """A request handed to the model's thread; its events come back through `events`, then `_END` (or an
    exception to raise). `abandoned`: the connection stopped reading, so the model stops too."""

    request: CompletionRequest
    cancelled: Callable[[], bool]
    events: queue.Queue = field(default_factory=queue.Queue)
    abandoned: threading.Event = field(default_factory=threading.Event)


_END = object()


class Service:
    """The state shared by all connections: the engine, the queue, the clients, the idle clock."""

    def __init__(self, engine: Runner, options: ServerOptions) -> None:
        self.engine = engine
        self.options = options
        self.stopping = threading.Event()  # set on shutdown: a running generation stops at its next token
        self._jobs: queue.Queue[_Job] = queue.Queue()
        # whether one thread runs every request (`work`, as `serve` does); else each connection runs its own
        self.one_thread = False
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
        """The engine's events for `request`, once it is this request's turn: computed on the thread in
        `work` when one runs there (the server's), else on the caller's."""

        def cancelled() -> bool:
            return ticket.cancelled.is_set() or self.stopping.is_set() or disconnected()

        if not self.options.speculate:
            request = replace(request, speculate=False)
        self.active += 1
        try:
            if self.one_thread:
                yield from self._through_worker(_Job(request, cancelled))
            else:
                with self._engine_lock:
                    self.last_activity = time.monotonic()
                    yield from self.engine.stream(request, cancelled=cancelled)
        finally:
            self.active -= 1
            self.last_activity = time.monotonic()

    def _through_worker(self, job: _Job) -> Iterator[Event]:
        self._jobs.put(job)
        try:
            while (item := job.events.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.abandoned.set()

    def work(self, timeout: float) -> None:
        """Run the next queued request on this thread, waiting at most `timeout` seconds for one. The
        thread that calls this should be the one that loaded the model (see the module's docstring)."""
        try:
            job = self._jobs.get(timeout=timeout)
        except queue.Empty:
            return
        if job.abandoned.is_set():  # its client left while it waited
            job.events.put(_END)
            return
        self.last_activity = time.monotonic()
        try:
            for event in self.engine.stream(
                job.request, cancelled=lambda: job.abandoned.is_set() or job.cancelled()
            ):
                job.events.put(event)
        except Exception as error:  # raised again on the connection's thread, which answers for it
            job.events.put(error)
        finally:
            job.events.put(_END)
            self.last_activity = time.monotonic()

    def close(self) -> None:
        """Stop: a running generation ends at its next token, queued requests end without events."""
        self.stopping.set()
        while True:
            try:
                self._jobs.get_nowait().events.put(_END)
            except queue.Empty:
                return

    def context_size(self, request: CompletionRequest | None) -> int:
        """Prompt + completion tokens a request may use: its budget (or the engine's), within the model."""
        budget = request.budget if request is not None and request.budget else self.engine.default_budget
        return min(budget, self.engine.limit)

    def info(self) -> dict[str, Any]:
        return {
            **self.engine.describe(),
            "key": self.options.key,
            "max_tokens_limit": self.options.max_tokens_limit,
            "speculate": self.options.speculate,
            "pid": os.getpid(),
            "started": self.started,
        }
