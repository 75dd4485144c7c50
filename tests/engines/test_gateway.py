"""`sc2 serve --engine URL`: the warm server keeps its protocols while the engine does the work."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys

from .fake_engine import FakeEngine
from .test_remote import folder, script, tok  # noqa: F401 - fixtures


def test_the_warm_server_becomes_a_gateway(folder, tok, tmp_path):  # noqa: F811
    with FakeEngine(script(tok, "return 42\n"), tok) as engine:
        env = {**os.environ, "SC2_RUNTIME_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        env.pop("SC2_ENGINE", None)
        cmd = [sys.executable, "-m", "sc2cli", "serve", "-m", str(folder), "--port", "0", "--no-socket",
               "--engine", engine.url("llama")]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        try:
            port = next(
                int(m.group(1)) for line in proc.stderr if (m := re.search(r" on http://[^:]+:(\d+)", line))
            )
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = {"input_prefix": "def f():\n    ", "input_suffix": "\n", "n_predict": 8}
            conn.request(
                "POST", "/infill", body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            reply = json.loads(conn.getresponse().read())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert reply["content"] == "return 42"
    sent = [b for p, _, b in engine.requests if p == "/completion"][-1]
    assert sent["prompt"][0] == tok.special["<fim_prefix>"]
