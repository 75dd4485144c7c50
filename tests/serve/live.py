"""A `sc2 serve` process for tests that talk to it over raw sockets: its port, its pid, and its log (stderr,
read by a thread so the server never blocks on a full pipe)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Live:
    proc: subprocess.Popen
    port: int
    log: list[str] = field(default_factory=list)

    def threads(self) -> int:
        """The server's thread count (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no thread count")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no RSS")

    def stop(self) -> str:
        """Stop the server (SIGTERM) and return its whole log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return "".join(self.log)


def start(model: Path, runtime: Path, *args: str, env: dict[str, str] | None = None) -> Live:
    environ = {**os.environ, "SC2_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "sc2cli", "serve", "-m", str(model), "--port", "0", *args]
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        log.append(line)
        match = re.search(r" on http://[^:]+:(\d+)", line)
        if match:
            live = Live(proc, int(match.group(1)), log)
            threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
            return live
    raise AssertionError(f"server did not start: {''.join(log)}")


def exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes and read until the server closes the connection (or `timeout` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s, timeout)


def read_all(s: socket.socket, timeout: float) -> bytes:
    out, ends = b"", time.monotonic() + timeout
    while time.monotonic() < ends:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return out


def statuses(raw: bytes) -> list[int]:
    """The status codes of the HTTP responses in a raw byte stream."""
    return [int(m.group(1)) for m in re.finditer(rb"HTTP/1\.[01] (\d{3}) ", raw)]
