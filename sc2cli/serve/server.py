"""`sc2 serve`: one loaded model answering completions over HTTP, reusing the KV cache of recent prompts.

Endpoints (serve/http.py routes them, serve/protocols/ shapes them):
- `POST /v1/complete`: our own; the engine's events as they are (protocols/native.py);
- `POST /infill`: llama.cpp's (protocols/infill.py);
- `POST /v1/completions`: OpenAI's legacy completions with `prompt` + `suffix` (protocols/openai.py);
- `GET /health` (as llama.cpp's), `GET /v1/models`, `GET /v1/info`.

One generation runs at a time; others queue. A request is cancelled at the next token when its client
disconnects, or when a newer request arrives with the same `client_id` (editors fire one per keystroke).
"""

from __future__ import annotations

import os
import signal
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..completion.engine import Engine
from .http import Handler
from .runtime import announce, withdraw
from .service import ServerOptions, Service

# ------------------------------------------------------------------------------------------------ running


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # BaseHTTPRequestHandler wants a (host, port)-like address for its logs
        conn, _ = super().get_request()
        return conn, ("unix", 0)


def serve(engine: Engine, options: ServerOptions, ready: Callable[[dict], None] | None = None) -> str:
    """Serve until SIGTERM/SIGINT or `idle_timeout` seconds without a request; returns why it stopped."""
    service = Service(engine, options)
    handler = type("BoundHandler", (Handler,), {"service": service})
    servers: list[socketserver.BaseServer] = [_TCPServer((options.host, options.port), handler)]
    if options.socket_path is not None:
        servers.append(_bind_unix(options.socket_path, handler))
    port = servers[0].server_address[1]
    stop = threading.Event()
    reason = ["idle"]

    def on_signal(signum: int, _frame: Any) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in servers
    ]
    for t in threads:
        t.start()
    details = {**service.info(), "port": port, "host": options.host, "socket": str(options.socket_path or "")}
    if options.announcement is not None:
        announce(options.announcement, {**details, "key": options.key, "token": options.token})
    if ready:
        ready(details)
    try:
        while not stop.wait(0.5):
            idle = time.monotonic() - service.last_activity
            if options.idle_timeout and service.active == 0 and idle > options.idle_timeout:
                break
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        withdraw(options.announcement, options.socket_path)
        for s, handler_ in previous.items():
            signal.signal(s, handler_)
    return reason[0]


def _bind_unix(path: Path, handler: type) -> _UnixServer:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
        path.unlink()  # a stale socket left by a server that died; a live one was ruled out by the caller
    server = _UnixServer(str(path), handler)
    os.chmod(path, 0o600)
    return server
