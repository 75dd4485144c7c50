"""Against the real llama.cpp server: a random tiny checkpoint with the real StarCoder2 tokenizer, converted
to f32 GGUF, served by llama-server; `sc2 complete --engine llama+http://...` must give sc2's in-process
greedy text for nearly every prompt. Runs when SC2_LLAMA_SERVER names the llama-server binary (built by
../shared/tools/llama-ref build) and the tokenizer fixture is there; skips saying why otherwise."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..checkpoints import hub_config, reference_model, state_dict_of, write_hub_checkpoint

REPO = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("SC2_LLAMA_SERVER", "")
LLAMA_REF = Path(os.environ.get("SC2_LLAMA_REF", REPO.parent / "shared" / "tools" / "llama-ref"))
FIXTURE = Path(
    os.environ.get("SC2_TOKENIZER_FIXTURE", REPO.parent / "shared" / "fixtures" / "starcoder2-tokenizer")
)
PROMPTS = [
    ("def add(a, b):\n    return a", "\n"),
    ("import o", ""),
    ("class Stack:\n    def push(self, item):\n        self.", "\n"),
    ("for i in range(", "):\n    print(i)\n"),
    ("x = [1, 2, 3]\ny = ", "\n"),
    ("# sum of squares\ndef f(n):\n    ", ""),
    ("if __name__ == ", ":\n    main()\n"),
    ("while True:\n    line = input()\n    if not line:\n        ", "\n"),
]

pytestmark = [
    pytest.mark.skipif(
        not SERVER or not Path(SERVER).is_file(), reason="SC2_LLAMA_SERVER is not the llama-server binary"
    ),
    pytest.mark.skipif(
        not (FIXTURE / "tokenizer.json").is_file(), reason=f"no tokenizer fixture at {FIXTURE}"
    ),
    pytest.mark.skipif(not LLAMA_REF.is_file(), reason=f"no llama-ref at {LLAMA_REF} (it converts to GGUF)"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama-ck")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (FIXTURE / name).is_file():
            shutil.copy(FIXTURE / name, folder / name)
    config = hub_config(vocab_size=49152, max_position_embeddings=4096, sliding_window=None)
    write_hub_checkpoint(folder, config, state_dict_of(reference_model(config, seed=3), True))
    return folder


@pytest.fixture(scope="module")
def llama_server(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    done = subprocess.run(
        [str(LLAMA_REF), "gguf", str(checkpoint), str(out), "f32"], capture_output=True, text=True
    )
    if done.returncode != 0 or not (out / "f32.gguf").is_file():
        pytest.fail(f"llama-ref gguf failed: {done.stderr[-500:]}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        SERVER,
        "-m",
        str(out / "f32.gguf"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        "4096",
        "-np",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("llama-server did not become healthy")
        yield f"llama+http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SC2_ENGINE")}
    return subprocess.run(
        [sys.executable, "-m", "sc2cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_greedy_through_llama_server_matches_in_process(checkpoint, llama_server):
    agree = []
    for prefix, suffix in PROMPTS:
        common = [
            "fim",
            "--prefix",
            prefix,
            "--suffix",
            suffix,
            "-m",
            str(checkpoint),
            "--max-tokens",
            "16",
            "-f",
            "json",
        ]
        local = run(*common, "--no-server", "--device", "cpu", "--dtype", "fp32")
        remote = run(*common, "--engine", llama_server + "?heal_top=100")
        assert local.returncode == 0 and remote.returncode == 0, (local.stderr, remote.stderr)
        agree.append(json.loads(local.stdout)["text"] == json.loads(remote.stdout)["text"])
    print(f"llama-server vs in-process: {sum(agree)} of {len(agree)} agree", file=sys.__stderr__)
    assert sum(agree) >= len(agree) - 1, f"{sum(agree)} of {len(agree)} agree"
