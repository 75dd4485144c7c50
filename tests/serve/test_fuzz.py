"""A live `sc2 serve` on a tiny random model under fuzzing and load.

- Raw-socket fuzz, driven by hypothesis: any method, path, headers, Content-Length (right, missing, too
  short) and body (protocol-shaped JSON or bytes) gets a response below 500 or a close, never a
  traceback, and the server keeps serving with its threads back to where they were.
- Concurrency: many clients at once over the three endpoints, with clients hanging up mid-stream and
  requests replaced by newer ones of the same client, get exactly the greedy output each request gets
  alone.

The CI run is short; `SC2_LONG_FUZZ=1` runs thousands of fuzz cases and prints its figures (requests
tried, statuses, server errors, RSS before and after).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..checkpoints import write_tiny_model
from .live import Live, exchange, start, statuses
from .test_parsing import bodies, json_values

LONG = os.environ.get("SC2_LONG_FUZZ") == "1"
FIGURES: Counter = Counter()
ROUTES = ["/v1/complete", "/infill", "/v1/completions", "/health", "/v1/info", "/v1/models", "/", "/x" * 40]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    model = write_tiny_model(tmp_path_factory.mktemp("fuzzmodel"), seed=11)
    server = start(
        model, tmp_path_factory.mktemp("rt"), "-v", "--request-timeout", "1", "--max-connections", "32",
        "--max-tokens-limit", "24",
    )  # fmt: skip
    FIGURES["rss_start_kb"] = server.rss_kb()
    yield server
    log = server.stop()
    assert "Traceback" not in log, log[-3000:]


def body_bytes() -> st.SearchStrategy[bytes]:
    shaped = st.sampled_from(["infill", "openai", "native"]).flatmap(bodies)
    return st.one_of(
        shaped.map(lambda b: json.dumps(b).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
    )


@st.composite
def requests(draw) -> bytes:
    method = draw(st.sampled_from(["POST"] * 12 + ["GET"] * 3 + ["PUT", "HEAD", "OPTIONS", "G\x00T"]))
    path = draw(
        st.sampled_from(ROUTES[:3] * 6 + ROUTES)
        | st.text(max_size=20).map(lambda t: "/" + t.encode("utf-8", "replace").hex())
    )
    body = draw(body_bytes())
    length = draw(
        st.sampled_from(
            ["exact", "exact", "exact", "missing", "short", "garbage"] + (["long"] if LONG else [])
        )
    )
    headers = {"Host": "x", "Connection": "close", "Content-Type": "application/json"}
    headers["Content-Length"] = {"exact": str(len(body)), "short": str(len(body) // 2), "garbage": "12abc",
                                 "long": str(len(body) + 10), "missing": None}[length]  # fmt: skip
    extra = draw(st.dictionaries(st.sampled_from(["Expect", "Transfer-Encoding", "Authorization", "X-A"]),
                                 st.sampled_from(["100-continue", "chunked", "Bearer ", "x" * 100]), max_size=2))  # fmt: skip
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in {**headers, **extra}.items() if v is not None
    )
    return head.encode("utf-8", "replace") + b"\r\n" + body


@settings(max_examples=2000 if LONG else 40, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_fuzzed_requests_never_get_a_server_error(live, request):
    raw = exchange(live.port, request, timeout=30)
    FIGURES["tried"] += 1
    codes = statuses(raw)
    FIGURES.update(f"status {c}" for c in codes or ["closed"])
    assert all(c < 500 or c == 501 for c in codes), raw[:500]  # 501: a method it does not implement


def test_after_the_fuzz_it_still_serves_and_its_threads_are_back(live):
    before_rss = FIGURES["rss_start_kb"]
    baseline = live.threads()
    for _ in range(20 if not LONG else 500):
        exchange(
            live.port, b"POST /infill HTTP/1.1\r\nContent-Length: 40\r\nConnection: close\r\n\r\n" + b"[" * 40
        )
    for _ in range(100):
        if live.threads() <= baseline:
            break
        time.sleep(0.1)
    after_rss = live.rss_kb()
    assert live.threads() <= baseline
    assert statuses(exchange(live.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")) == [200]
    if LONG:
        print(f"\nfuzz figures: {dict(FIGURES)}; RSS {before_rss} kB -> {after_rss} kB", file=sys.stderr)


# --- concurrency


def cases() -> list[tuple[str, dict]]:
    out = []
    for i in range(12):
        prefix = f"def function_{i}(x):\n    return x * {i} + "
        out.append(("/v1/complete", {"prefix": prefix, "max_tokens": 8, "raw": True}))
        out.append(("/infill", {"input_prefix": prefix, "input_suffix": "\n", "n_predict": 8, "raw": True}))
        out.append(("/v1/completions", {"prompt": prefix, "max_tokens": 8, "raw": True}))
    return out


def text_of(path: str, reply: dict) -> str:
    return {"/v1/complete": lambda r: r["text"], "/infill": lambda r: r["content"],
            "/v1/completions": lambda r: r["choices"][0]["text"]}[path](reply)  # fmt: skip


def post(port: int, path: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    raw = exchange(port, head.encode() + data, timeout=120)
    assert statuses(raw) == [200], raw[:300]
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def hang_up_mid_stream(port: int) -> None:
    data = json.dumps({"prefix": "def g(y):\n", "max_tokens": 24, "raw": True, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            f"POST /v1/complete HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        )
        s.recv(10)


def replaced(port: int, client: str) -> list[str]:
    """Two requests of one client at once: whichever arrives second cancels the first (if still running),
    so at most one is cancelled. Returns both stop reasons."""
    body = {"prefix": "def h(z):\n", "max_tokens": 24, "raw": True, "client_id": client}
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda n: post(port, "/v1/complete", {**body, "max_tokens": n}), (24, 4)))
    return [r["stop_reason"] for r in replies]


def test_concurrent_mixed_clients_get_the_one_at_a_time_output(live):
    port, work = live.port, cases()
    alone = {i: text_of(path, post(port, path, body)) for i, (path, body) in enumerate(work)}
    baseline = live.threads()
    rounds = 4 if LONG else 2
    jobs = (
        [("case", i) for i in range(len(work))] * rounds
        + [("hangup", 0)] * 6
        + [("replace", k) for k in range(4)]
    )
    random.Random(7).shuffle(jobs)

    def run(job: tuple[str, int]) -> tuple[int, str] | None:
        kind, i = job
        if kind == "hangup":
            hang_up_mid_stream(port)
        elif kind == "replace":
            assert replaced(port, f"editor-{i}").count("cancelled") <= 1
        else:
            path, body = work[i]
            return i, text_of(path, post(port, path, body))
        return None

    with ThreadPoolExecutor(16) as pool:
        results = [r for r in pool.map(run, jobs) if r is not None]
    assert len(results) == len(work) * rounds
    assert [text for i, text in results] == [alone[i] for i, _ in results]
    for _ in range(100):
        if live.threads() <= baseline:
            break
        time.sleep(0.1)
    assert live.threads() <= baseline
