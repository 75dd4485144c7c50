"""A real `sc2 serve` process on a free loopback port with a tiny model: same output as in-process, prompt
cache reuse, llama.cpp and OpenAI endpoints, cancellation, bad requests, idle exit and clean shutdown."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sc2cli.checkpoint.names import model_key
from sc2cli.serve.client import Endpoint
from sc2cli.serve.client import stream_completion as stream_events
from sc2cli.serve.runtime import socket_path

from ..checkpoints import write_tiny_model

SOURCE = "".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n\n\n" for i in range(40))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("srvmodel"), seed=6)


def start_server(model: Path, runtime: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    """Start `sc2 serve` and wait for its ready line; returns the process and where it listens."""
    env = {**os.environ, "SC2_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sc2cli", "serve", "-m", str(model), "--port", "0", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # ends at EOF if the server dies
        seen.append(line)
        match = re.search(r" on http://[^:]+:(\d+)", line)
        if match:
            return proc, {"port": int(match.group(1))}
    raise AssertionError(f"server did not start: {''.join(seen)}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    runtime = tmp_path_factory.mktemp("runtime")
    proc, info = start_server(model, runtime, "--max-tokens-limit", "1000")
    yield {"proc": proc, "info": info, "runtime": runtime, "port": info["port"], "model": str(model)}
    stop(proc)


def call(port: int, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, payload


def run_cli(runtime: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SC2_RUNTIME_DIR": str(runtime)}
    return subprocess.run(
        [sys.executable, "-m", "sc2cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_uses_the_server_and_prints_the_same(server, model, tmp_path):
    f = tmp_path / "m.py"
    f.write_text(SOURCE)
    args = ["complete", f"{f}:30:5", "-m", str(model), "--max-tokens", "12", "-f", "json", "-v"]
    via_server = run_cli(server["runtime"], *args)
    in_process = run_cli(server["runtime"], *args, "--no-server")
    assert "using the server" in via_server.stderr and "using the server" not in in_process.stderr
    a, b = json.loads(via_server.stdout), json.loads(in_process.stdout)
    for field in (
        "text",
        "tokens",
        "stop_reason",
        "prompt_tokens",
        "completion_tokens",
        "truncated",
        "model",
    ):
        assert a[field] == b[field], field
    assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5)
    text_via_server = run_cli(
        server["runtime"], "complete", f"{f}:30:5", "-m", str(model), "--max-tokens", "12"
    )
    assert text_via_server.stdout == a["text"]


def stream_completion(endpoint, request, client_id=None):
    """The server's events as the JSON records the native protocol carries (the client parses them into
    typed events)."""
    return [event.to_json() for event in stream_events(endpoint, request, client_id)]


def test_prompt_cache_reuses_the_unchanged_start(server, model):
    """After an edit near the cursor, exactly the tokens from the edit onward are recomputed."""
    from sc2cli.completion.generate import common_prefix
    from sc2cli.completion.request import CompletionRequest, prompt_for
    from sc2cli.completion.tokenizer import Tokenizer
    from sc2cli.model.config import ModelConfig

    endpoint = Endpoint(port=server["port"])
    cursor = SOURCE.index("def function_30")
    base = {
        "prefix": SOURCE[:cursor],
        "suffix": SOURCE[cursor:],
        "path": "m.py",
        "repo": "r",
        "max_tokens": 4,
        "raw": True,
    }
    first = list(stream_completion(endpoint, base))[-1]
    again = list(stream_completion(endpoint, base))[-1]
    assert again["cached_tokens"] == again["prompt_tokens"] - 1  # only the last prompt token is recomputed
    edited = {**base, "prefix": base["prefix"] + "new_value = 1\n"}
    after_edit = list(stream_completion(endpoint, edited))[-1]

    tokenizer = Tokenizer.from_folder(model)
    config = ModelConfig.from_file(Path(model) / "config.json")
    before = prompt_for(CompletionRequest.from_json(base), tokenizer, 2048, config)
    ids_before, ids_after = (
        before.ids,
        prompt_for(CompletionRequest.from_json(edited), tokenizer, 2048, config).ids,
    )
    assert first["prompt_tokens"] == len(ids_before) and after_edit["prompt_tokens"] == len(ids_after)
    assert after_edit["cached_tokens"] == common_prefix(ids_before, ids_after)
    recomputed = len(ids_after) - after_edit["cached_tokens"]
    assert before.task.suffix != base["suffix"]  # the suffix was cut short, to keep this cost down
    edit_and_suffix = (
        len(tokenizer.encode("new_value = 1\n" + before.task.suffix)) + 2
    )  # + <fim_suffix>, <fim_middle>
    assert recomputed <= edit_and_suffix + 2  # the edit onward, not the whole prompt


def test_infill_endpoint(server):
    body = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n", "n_predict": 5,
            "input_extra": [{"filename": "util.py", "text": "X = 1\n"}]}  # fmt: skip
    status, payload = call(server["port"], "POST", "/infill", body)
    reply = json.loads(payload)
    assert status == 200 and reply["stop"] is True and isinstance(reply["content"], str)
    assert reply["tokens_evaluated"] > 0 and "tokens_cached" in reply and "timings" in reply
    status, payload = call(server["port"], "POST", "/infill", {**body, "stream": True})
    events = [json.loads(line[6:]) for line in payload.decode().splitlines() if line.startswith("data: ")]
    assert events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == reply["content"]


def test_openai_completions_endpoint(server):
    body = {
        "prompt": "def add(a, b):\n    return ",
        "suffix": "\n",
        "max_tokens": 5,
        "model": server["model"],
    }
    status, payload = call(server["port"], "POST", "/v1/completions", body)
    reply = json.loads(payload)
    assert status == 200 and reply["object"] == "text_completion"
    assert (
        reply["choices"][0]["finish_reason"] in ("stop", "length")
        and reply["usage"]["completion_tokens"] <= 5
    )
    status, payload = call(server["port"], "POST", "/v1/completions", {**body, "stream": True})
    lines = [line[6:] for line in payload.decode().splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == reply["choices"][0]["text"]


def test_health_models_and_info(server, model):
    assert call(server["port"], "GET", "/health") == (200, b'{"status":"ok"}')
    status, payload = call(server["port"], "GET", "/v1/models")
    assert status == 200 and json.loads(payload)["data"][0]["id"] == str(model)
    info = json.loads(call(server["port"], "GET", "/v1/info")[1])
    assert info["device"] == "cpu" and info["max_position_embeddings"] == 1024 and info["cache_slots"] == 4


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/complete", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/complete", b"[1, 2]", 400, "JSON object"),
        ("POST", "/v1/complete", b'{"suffix": "x"}', 400, "'prefix'"),
        ("POST", "/v1/complete", b'{"prefix": "x", "max_tokens": "many"}', 400, "max_tokens"),
        ("POST", "/v1/complete", b'{"prefix": "x", "bogus": 1}', 400, "unknown field"),
        ("POST", "/v1/complete", b'{"prefix": "x", "max_tokens": 5000}', 400, "over this server's limit"),
        ("POST", "/v1/complete", b'{"prefix": "x", "sampling": {"temperature": -1}}', 400, "temperature"),
        ("POST", "/v1/complete", b'{"prefix": "", "suffix": ""}', 400, "empty prompt"),
        ("POST", "/v1/complete", b'{"prefix": "x", "max_tokens": 0}', 400, "'max_tokens'"),
        ("POST", "/v1/complete", b'{"prefix": "x", "model": "other"}', 404, "does not exist"),
        (
            "POST",
            "/v1/complete",
            b'{"prefix": "x", "sampling": {"temperature": 1e-300}}',
            400,
            "sampling.temperature",
        ),
        ("POST", "/v1/complete", b'{"prefix": "x", "sampling": {"temperature": NaN}}', 400, "NaN"),
        (
            "POST",
            "/v1/complete",
            b'{"prefix": "x", "sampling": {"seed": 1180591620717411303424}}',
            400,
            "sampling.seed",
        ),
        ("POST", "/v1/complete", b'{"prefix": "\\ud800"}', 400, "lone surrogate"),
        ("POST", "/v1/complete", b"[" * 100_000 + b"]" * 100_000, 400, "nested"),
        ("POST", "/infill", b'{"input_prefix": "x", "temperature": Infinity}', 400, "Infinity"),
        ("POST", "/infill", b'{"input_prefix": "x", "n_predict": 99999999999}', 400, "n_predict"),
        ("POST", "/infill", b'{"input_prefix": "x", "top_p": 0}', 400, "top_p"),
        ("POST", "/infill", b'{"input_prefix": "x", "input_extra": [{"filename": "a"}]}', 400, "input_extra"),
        ("POST", "/v1/completions", b'{"prompt": "x", "temperature": -Infinity}', 400, "Infinity"),
        ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 1e999}', 400, "1e999"),
        ("POST", "/v1/completions", b'{"prompt": "x", "n": 2}', 400, "'n'"),
        ("POST", "/v1/completions", b'{"prompt": "x", "best_of": 3}', 400, "'best_of'"),
        ("POST", "/v1/completions", b'{"prompt": "x", "logprobs": 2}', 400, "'logprobs'"),
        ("POST", "/v1/completions", b'{"prompt": "x", "logprobs": 0, "echo": true}', 400, "'logprobs'"),
        ("POST", "/v1/completions", b'{"prompt": "x", "model": "gpt-4"}', 404, "does not exist"),
        ("POST", "/infill", b'{"input_prefix": 3}', 400, "input_prefix"),
        ("POST", "/v1/completions", b'{"prompt": ["a", "b"]}', 400, "one prompt per request"),
        ("GET", "/nowhere", None, 404, "no GET"),
        ("GET", "/infill", None, 405, "no GET"),
        ("POST", "/health", b"{}", 405, "no POST"),
    ],
)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, method, path, body, status, message):
    got, payload = call(server["port"], method, path, raw=body)
    error = json.loads(payload)["error"]
    assert got == status and error["code"] == status and message in error["message"], error
    assert "--" not in error["message"]  # the protocol's field names, never a CLI flag
    assert call(server["port"], "GET", "/health")[0] == 200


def test_oversized_body_is_refused_before_it_is_read(server):
    import socket

    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as s:
        s.sendall(b"POST /v1/complete HTTP/1.1\r\nHost: x\r\nContent-Length: 9437184\r\n\r\n{")
        reply = b""
        while b"over 8388608 bytes" not in reply:  # headers and body may come in separate packets
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.decode().startswith("HTTP/1.1 413") and b"over 8388608 bytes" in reply
    assert call(server["port"], "GET", "/health")[0] == 200


def long_request(client_id: str | None = None) -> dict:
    body = {"prefix": "def f(x):\n", "max_tokens": 900, "raw": True, "stream": True}
    return {**body, "client_id": client_id} if client_id else body


def test_disconnected_client_is_cancelled_at_the_next_token(server):
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    conn.request(
        "POST", "/v1/complete", body=json.dumps(long_request()), headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    response.readline()  # generation is under way
    conn.close()  # the editor moved on
    started = time.monotonic()
    status, _ = call(server["port"], "POST", "/v1/complete", {"prefix": "x = ", "max_tokens": 2})
    assert status == 200
    assert time.monotonic() - started < 10  # not queued behind 900 tokens


def test_a_newer_request_from_the_same_client_cancels_the_older(server):
    endpoint = Endpoint(port=server["port"])
    results: dict[str, list] = {"old": []}
    generating = threading.Event()

    def older() -> None:
        body = {k: v for k, v in long_request().items() if k != "stream"}
        for event in stream_events(endpoint, body, "editor-1"):
            results["old"].append(event.to_json())
            generating.set()  # the first token is out: the newer request must find this one running

    thread = threading.Thread(target=older)
    thread.start()
    assert generating.wait(60)
    newer = list(stream_completion(endpoint, {"prefix": "y = ", "max_tokens": 2}, "editor-1"))
    thread.join(timeout=60)
    assert results["old"][-1]["stop_reason"] == "cancelled" and results["old"][-1]["completion_tokens"] < 900
    assert newer[-1]["stop_reason"] != "cancelled"


def test_token_idle_exit_and_clean_shutdown(model, tmp_path):
    runtime = tmp_path / "rt"
    proc, info = start_server(model, runtime, "--token", "s3cret", "--idle-timeout", "3")
    port = info["port"]
    assert call(port, "POST", "/v1/complete", {"prefix": "x"})[0] == 401
    assert call(port, "GET", "/v1/info")[0] == 401
    assert call(port, "GET", "/health")[0] == 200
    ok, _ = call(
        port,
        "POST",
        "/v1/complete",
        {"prefix": "x", "max_tokens": 2},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert ok == 200
    cli = run_cli(runtime, "fim", "--prefix", "x", "-m", str(model), "--max-tokens", "2", "-v")
    assert (
        cli.returncode == 0 and "using the server" in cli.stderr
    )  # the token comes from the private announcement
    assert proc.wait(timeout=30) == 0  # idle for 3 s: it exits by itself
    assert "stopped (idle" in proc.stderr.read()
    assert not socket_path(model_key(str(model))).exists()
    assert not list(runtime.glob("*.json")) and not list(runtime.glob("*.sock"))


def test_no_speculate_turns_drafts_off_and_sigterm_stops_cleanly(server, model, tmp_path):
    runtime = tmp_path / "rt"
    proc, info = start_server(model, runtime, "--no-socket", "--no-speculate")
    body = {"input_prefix": "def total(items):\n", "input_suffix": "\n", "n_predict": 12, "raw": True}
    try:
        for port, drafts in ((server["port"], True), (info["port"], False)):
            assert json.loads(call(port, "GET", "/v1/info")[1])["speculate"] is drafts
            replies = [json.loads(call(port, "POST", "/infill", body)[1]) for _ in range(2)]
            assert ("draft_n" in replies[1]["timings"]) is drafts  # the same answer asked again
            assert replies[0]["content"] == replies[1]["content"]
    finally:  # stopped whatever happened above
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in proc.stderr.read()
