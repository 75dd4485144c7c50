"""The server's HTTP over raw sockets: a request it refuses before reading the body never leaves that body
to be read as the next request; slow, silent and garbled clients are dropped without a traceback; the
connections served at once are capped and their threads go away."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest

from ..checkpoints import write_tiny_model
from .live import Live, exchange, read_all, start, statuses

TOKEN = "s3cret"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
MAX_CONNECTIONS = 4


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    model = write_tiny_model(tmp_path_factory.mktemp("httpmodel"), seed=3)
    server = start(
        model, tmp_path_factory.mktemp("rt"), "-v", "--request-timeout", "2",
        "--max-connections", str(MAX_CONNECTIONS), env={"SC2_SERVER_TOKEN": TOKEN},
    )  # fmt: skip
    yield server
    log = server.stop()
    assert "Traceback" not in log, log


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
NEXT = f"GET /v1/info HTTP/1.1\r\nHost: x\r\n{AUTH}Connection: close\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("POST /v1/complete HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n", 401),
        ("POST /nowhere HTTP/1.1\r\nHost: x\r\n" + AUTH + "Content-Length: {n}\r\n\r\n", 404),
        ("POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n", 405),
        ("GET /v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n", 401),
        ("GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n", 200),
        ("POST /v1/complete HTTP/1.1\r\nHost: x\r\n" + AUTH + "\r\n", 411),
        ("POST /v1/complete HTTP/1.1\r\nHost: x\r\n" + AUTH + "Transfer-Encoding: chunked\r\n\r\n", 411),
        ("PUT /v1/complete HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n", 501),
    ],
)
def test_an_unread_body_is_never_taken_for_the_next_request(live, head, status):
    raw = exchange(live.port, head.format(n=len(SMUGGLED)).encode() + SMUGGLED + NEXT)
    got = statuses(raw)
    assert got[0] == status and raw.count(b'"status":"ok"') == (status == 200), raw
    assert got[1:] in ([], [200]) and (len(got) == 1 or b"max_tokens_limit" in raw), raw  # drained, or closed
    assert b'"error":{"message":' in raw or status == 200


def test_a_body_shorter_than_its_length_times_out_and_closes(live):
    head = f"POST /v1/complete HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 100\r\n\r\n"
    raw = exchange(live.port, head.encode() + b'{"prefix": "x"')
    assert statuses(raw) == [408] and b"did not arrive in time" in raw


def test_headers_a_byte_at_a_time_are_cut_off(live):
    """One deadline per request: each byte arriving in time does not extend it."""
    header = b"X-Slow: " + b"a" * 300  # 300 bytes, 0.1 s apart: well past the 2 s allowed
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        for sent in range(len(header)):
            if select.select([s], [], [], 0.1)[0]:  # the server answered or closed
                break
            try:
                s.sendall(header[sent : sent + 1])
            except OSError:
                break
        reply = read_all(s, 10)
    assert sent < len(header) - 1 and statuses(reply) in ([], [408]), reply


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("160301020001000200030300") + bytes(range(256)),  # the start of a TLS client hello
        b"HELLO\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"\x00\xff\xfe garbage \r\n\r\n",
        b"GET " + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    ],
)
def test_garbage_gets_an_error_or_a_close_and_the_server_goes_on(live, data):
    raw = exchange(live.port, data)
    assert raw == b"" or (statuses(raw)[0] in (400, 414, 431, 505) and b'"error":{' in raw), raw[:300]
    assert statuses(exchange(live.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")) == [200]


def test_connections_are_capped_and_their_threads_go_away(live):
    baseline = live.threads()
    idle = [socket.create_connection(("127.0.0.1", live.port), timeout=30) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)  # accepted: each holds a thread until its request timeout
    busy = exchange(live.port, b"GET /health HTTP/1.1\r\n\r\n")
    peak = live.threads()
    more = [socket.create_connection(("127.0.0.1", live.port), timeout=30) for _ in range(50)]
    assert statuses(busy) == [503] and b"too many connections" in busy
    assert peak <= baseline + MAX_CONNECTIONS
    for s in idle + more:
        read_all(s, 30)  # each is answered (a 503) or closed (timed out)
        s.close()
    for _ in range(100):  # threads end as their connections time out
        if live.threads() <= baseline:
            break
        time.sleep(0.2)
    assert live.threads() <= baseline
    assert statuses(exchange(live.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")) == [200]


def test_the_401_names_the_token_variable(live):
    raw = exchange(live.port, b"GET /v1/info HTTP/1.1\r\nAuthorization: Bearer \r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [401] and b"SC2_SERVER_TOKEN" in raw


def test_a_bearer_token_with_no_token_configured_is_fine(tmp_path: Path):
    """llama.vim sends `Authorization: Bearer ` (empty) whatever its configuration."""
    server = start(write_tiny_model(tmp_path / "m", seed=3), tmp_path / "rt", "--no-socket")
    try:
        raw = exchange(
            server.port, b"GET /v1/info HTTP/1.1\r\nAuthorization: Bearer \r\nConnection: close\r\n\r\n"
        )
        assert statuses(raw) == [200]
    finally:
        server.stop()
