"""`sc2 serve`: one loaded model answering completions over HTTP, reusing the KV cache of recent prompts.

Endpoints (serve/http.py routes them, serve/protocols/ shapes them):
- `POST /v1/complete`: our own; the engine's events as they are (protocols/native.py);
- `POST /infill`: llama.cpp's (protocols/infill.py), and `POST /completion`, llama.cpp's plain prompt
  (protocols/completion.py);
- `POST /v1/completions`: OpenAI's legacy completions with `prompt` + `suffix` (protocols/openai.py);
- `GET /health` (as llama.cpp's), `GET /v1/models`, `GET /v1/info`.

One generation runs at a time, on the thread that called `serve` (the one that loaded the model); others
queue. At most `max_connections` connections are served at once
(a thread each; the next get a 503 and are closed), and a request must arrive within `request_timeout`. A request is cancelled at the next token when its client
disconnects, or when a newer request arrives with the same `client_id` (editors fire one per keystroke).
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..completion.runner import Runner
from .http import Handler
from .runtime import announce, private_runtime_dir, withdraw
from .service import ServerOptions, Service
from .wire import dumps, error_body

# ------------------------------------------------------------------------------------------------ running

BACKLOG = 128  # connections the kernel holds before accept (the standard library's 5 reset some under load)
BUSY = dumps(error_body(503, "too many connections; try again")).encode()


class _Bounded(socketserver.ThreadingMixIn):
    """A thread per connection, at most `slots` at once; one too many gets a 503 and is closed. Failures
    of a connection (a client that hung up, garbage on the wire) are logged as one line, no traceback."""

    daemon_threads = True
    request_queue_size = BACKLOG
    slots: threading.BoundedSemaphore
    log: Callable[[str], None]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        self.log(f"connection {client_address}: {type(error).__name__}: {error}")


def _refuse(request: socket.socket) -> None:
    try:
        request.settimeout(1)
        head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(BUSY)}"
        request.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + BUSY)
    except OSError:
        pass


class _TCPServer(_Bounded, ThreadingHTTPServer):
    allow_reuse_address = True


class _UnixServer(_Bounded, socketserver.UnixStreamServer):
    def get_request(self):  # BaseHTTPRequestHandler wants a (host, port)-like address for its logs
        conn, _ = super().get_request()
        return conn, ("unix", 0)


def serve(engine: Runner, options: ServerOptions, ready: Callable[[dict], None] | None = None) -> str:
    """Serve until SIGTERM/SIGINT or `idle_timeout` seconds without a request; returns why it stopped."""
    service = Service(engine, options)
    service.one_thread = True  # every request runs in `service.work` below, on this thread
    handler = type("BoundHandler", (Handler,), {"service": service})
    slots = threading.BoundedSemaphore(options.max_connections)  # shared by TCP and the Unix socket
    tcp = type("TCP", (_TCPServer,), {"slots": slots, "log": staticmethod(options.log)})
    servers: list[socketserver.BaseServer] = [tcp((options.host, options.port), handler)]
    if options.socket_path is not None:
        unix = type("Unix", (_UnixServer,), {"slots": slots, "log": staticmethod(options.log)})
        servers.append(_bind_unix(options.socket_path, unix, handler))
    port = servers[0].server_address[1]
    stop = threading.Event()
    reason = ["idle"]

    def on_signal(signum: int, _frame: Any) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()
        service.stopping.set()  # a running generation ends at its next token

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
        while not stop.is_set():
            service.work(timeout=0.5)  # the model runs here, on the thread that loaded it
            idle = time.monotonic() - service.last_activity
            if options.idle_timeout and service.active == 0 and idle > options.idle_timeout:
                break
    finally:
        service.close()
        for s in servers:
            s.shutdown()
            s.server_close()
        withdraw(options.announcement, options.socket_path)
        for s, handler_ in previous.items():
            signal.signal(s, handler_)
    return reason[0]


def _bind_unix(path: Path, server: type[_UnixServer], handler: type) -> _UnixServer:
    private_runtime_dir()
    if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
        path.unlink()  # a stale socket left by a server that died; a live one was ruled out by the caller
    bound = server(str(path), handler)
    os.chmod(path, 0o600)
    return bound
