"""The server's model runs on one thread: every request's generation on the thread that runs `work` (the
one that loaded the model), its events streamed back to the connection's thread, errors raised there,
and a client that leaves stops its generation whether it was running or still queued."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sc2cli.completion.events import Done, Timings, Token, Usage
from sc2cli.completion.request import CompletionRequest
from sc2cli.errors import InputError
from sc2cli.serve.service import ServerOptions, Service, Ticket


class ThreadEngine:
    """Yields `tokens` tokens (or raises InputError for a prefix of "bad"), noting the thread it ran on."""

    default_budget, limit = 4096, 16384

    def __init__(self, tokens: int = 3, pause: float = 0.0) -> None:
        self.tokens, self.pause = tokens, pause
        self.threads: list[int] = []
        self.produced: list[int] = []

    def stream(self, request: CompletionRequest, cancelled=None) -> Iterator:
        self.threads.append(threading.get_ident())
        if request.prefix == "bad":
            raise InputError("a bad prompt")
        n = 0
        for n in range(self.tokens):
            if cancelled is not None and cancelled():
                break
            time.sleep(self.pause)
            yield Token(f"t{n}", (n,), (0.0,))
        self.produced.append(n)
        yield Done("", (), (), "length", Usage(1, n, 0), Timings(), model="fake")


@pytest.fixture
def worker():
    """A Service whose requests run on one worker thread, as `serve` runs them on its own."""

    def make(engine: ThreadEngine) -> tuple[Service, threading.Thread]:
        service = Service(engine, ServerOptions())
        service.one_thread = True

        def work() -> None:
            while not service.stopping.is_set():
                service.work(0.05)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        made.append((service, thread))
        return service, thread

    made: list[tuple[Service, threading.Thread]] = []
    yield make
    for service, thread in made:
        service.close()
        thread.join(timeout=5)


def request(prefix: str = "x") -> CompletionRequest:
    return CompletionRequest(prefix=prefix, max_tokens=8)


def test_every_generation_runs_on_the_working_thread(worker):
    engine = ThreadEngine()
    service, thread = worker(engine)
    results: list[list] = []

    def client() -> None:
        results.append(list(service.run(request(), Ticket(None), lambda: False)))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(timeout=10)
    assert len(results) == 4 and all(isinstance(events[-1], Done) and len(events) == 4 for events in results)
    assert set(engine.threads) == {thread.ident}


def test_an_engine_error_is_raised_on_the_connections_thread(worker):
    service, _ = worker(ThreadEngine())
    with pytest.raises(InputError, match="a bad prompt"):
        list(service.run(request("bad"), Ticket(None), lambda: False))
    assert isinstance(list(service.run(request(), Ticket(None), lambda: False))[-1], Done)  # still serving


def test_a_connection_that_stops_reading_stops_the_generation(worker):
    engine = ThreadEngine(tokens=1000, pause=0.002)
    service, _ = worker(engine)
    events = service.run(request(), Ticket(None), lambda: False)
    next(events)
    events.close()  # the handler stopped (its client hung up mid-write)
    done = list(service.run(request(), Ticket(None), lambda: False))  # served after the first one ended
    assert isinstance(done[-1], Done) and engine.produced[0] < 1000


def test_closing_ends_queued_requests(worker):
    engine = ThreadEngine(tokens=1000, pause=0.002)
    service, _ = worker(engine)
    first = service.run(request(), Ticket(None), lambda: False)
    next(first)  # running
    queued: list[list] = []
    waiting = threading.Thread(
        target=lambda: queued.append(list(service.run(request(), Ticket(None), lambda: False)))
    )
    waiting.start()
    time.sleep(0.1)
    service.close()
    waiting.join(timeout=10)
    assert not waiting.is_alive() and len(queued) == 1
    rest = list(first)
    assert isinstance(rest[-1], Done) and engine.produced[0] < 1000  # the running one stopped at a token
