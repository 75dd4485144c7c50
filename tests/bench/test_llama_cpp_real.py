"""The real llama.cpp on a GGUF written from the trained tiny model: it reads the file, tokenizes as sc2
does, picks the same greedy tokens (the same weights), and `sc2 bench` measures it. Runs where a build is
at hand: `$SC2_LLAMA_CPP` (read before the tests hide it), llama-bench on PATH, or the shared llama-ref
build beside this checkout; skipped elsewhere (CI has none)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sc2cli.bench.llama_cpp import BENCH, find_llama_cpp
from sc2cli.bench.run import BenchOptions, run_bench
from sc2cli.checkpoint.gguf import write_gguf
from sc2cli.checkpoint.load import load_checkpoint
from sc2cli.checkpoint.names import TINY_DIR
from sc2cli.completion.generate import generate
from sc2cli.completion.tokenizer import Tokenizer


def _build() -> str | None:
    given = os.environ.get("SC2_LLAMA_CPP")
    if given and given.lower() not in ("none", "off"):
        return given
    if shutil.which(BENCH):
        return shutil.which(BENCH)
    tool = Path(__file__).resolve().parents[3] / "shared" / "tools" / "llama-ref"
    if tool.is_file():
        folder = subprocess.run([str(tool), "path"], capture_output=True, text=True).stdout.strip()
        return folder if (Path(folder) / BENCH).is_file() else None
    return None


BUILD = _build()
pytestmark = pytest.mark.skipif(
    BUILD is None, reason="no llama.cpp build (set SC2_LLAMA_CPP to its bin folder)"
)
CODE = '''import os


def add(a, b):
    """Return the sum of a and b."""
    return a + b  # 12345 ünïcödé


class Counter:
    def __init__(self):
        self.value = 0
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """llama-server on the tiny model's GGUF, as sc2 writes it."""
    gguf = write_gguf(TINY_DIR, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    port = _free_port()
    command = [str(find_llama_cpp(BUILD).tool("llama-server")), "-m", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(port), "-t", "2", "-c", "512", "-np", "1", "-ngl", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        else:
            pytest.fail(f"llama-server did not start on the GGUF (exit {proc.poll()})")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_llama_cpp_tokenizes_as_sc2_does(server):
    assert _post(server, "/tokenize", {"content": CODE})["tokens"] == Tokenizer.from_folder(TINY_DIR).encode(
        CODE
    )


def test_llama_cpp_picks_sc2s_greedy_tokens(server):
    ids = list(Tokenizer.from_folder(TINY_DIR).encode(CODE))
    body = {"prompt": ids, "n_predict": 20, "temperature": 0, "top_k": 1, "cache_prompt": False}
    theirs = _post(server, "/completion", {**body, "return_tokens": True})["tokens"]
    model = load_checkpoint(TINY_DIR, dtype="fp32", device="cpu")
    ours = [step.token for step in generate(model, ids, max_new_tokens=20)]
    assert len(theirs) >= 10 and theirs == ours[: len(theirs)]  # llama.cpp stops at EOS, sc2 here does not


def test_bench_measures_the_real_llama_bench(monkeypatch):
    from sc2cli.bench import run

    monkeypatch.setattr(run, "memory_bandwidth", lambda device=None: {"copy_gbps": 1.0, "read_gbps": 1.0})
    options = BenchOptions(model="tiny", prompt_lengths=(32,), decode_tokens=8, runs=1, llama_cpp=BUILD)
    report = run_bench(options).to_json()
    assert report["notes"] == []
    assert report["results"]["prefill_32_tok_s"]["llama.cpp BF16"] > 0
    assert report["ratios"]["decode_tok_s"]["sc2 / llama.cpp BF16"] > 0
