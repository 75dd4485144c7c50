"""`sc2 serve`: keep a model loaded and answer completions over HTTP and a Unix socket."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..settings import load_settings
from .app import app
from .options import (
    AttnOpt,
    BudgetOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    EngineTokenOpt,
    ModelOpt,
    NoSpeculateOpt,
    OfflineOpt,
    QuantizeOpt,
    RevisionOpt,
    VerboseOpt,
    given_settings,
)
from .output import ProgressBar, note


@app.command(name="serve", short_help="Keep a model loaded and serve completions.", rich_help_panel="Server")
def serve_command(
    model: ModelOpt = None, revision: RevisionOpt = None, offline: OfflineOpt = None, device: DeviceOpt = None,
    dtype: DtypeOpt = None, attn: AttnOpt = None, quantize: QuantizeOpt = None,
    budget: BudgetOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to share the model.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="TCP port (default 8712, or a free one if it is taken; 0: any).")] = None,
    unix_socket: Annotated[bool, typer.Option("--socket/--no-socket", help="Also listen on a Unix socket in the runtime folder.")] = True,
    idle_timeout: Annotated[float, typer.Option(help="Exit after this many seconds without a request (0: never).")] = 900,
    token: Annotated[str | None, typer.Option(help="Require this bearer token (shows in `ps`: prefer SC2_SERVER_TOKEN or --token-file).")] = None,
    token_file: Annotated[Path | None, typer.Option(help="Require the bearer token this file holds (its first line).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without a token.")] = False,
    request_timeout: Annotated[float, typer.Option(help="Seconds a request may take to arrive (line, headers, body).")] = 10,
    max_connections: Annotated[int, typer.Option(help="Connections served at once; more get a 503.")] = 64,
    cache_slots: Annotated[int, typer.Option(help="Prompt caches kept for reuse (one per file being edited).")] = 4,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 2048,
    no_speculate: NoSpeculateOpt = False,
    verbose: VerboseOpt = False,
    engine: EngineOpt = None,
    engine_token: EngineTokenOpt = None,
) -> None:  # fmt: skip
    """Keep a model loaded and serve completions; sc2 complete/fim use it automatically.

    Endpoints: POST /v1/complete (sc2's own), POST /infill (llama.cpp), POST /v1/completions (OpenAI,
    prompt + suffix), GET /health, GET /v1/models, GET /v1/info.
    With --engine the server is a gateway: same endpoints, sc2's prompts, an external engine runs the model.
    """
    from .. import session  # the library loads when the command runs (torch with the model)
    from ..checkpoint.names import model_key
    from ..serve.client import discover
    from ..serve.runtime import announcement_path, private_runtime_dir, socket_path
    from ..serve.server import serve as run_server
    from ..serve.service import DEFAULT_PORT, ServerOptions
    from .buffer import engine_token as checked_token

    settings = load_settings(
        given_settings(
            model=model,
            device=device,
            dtype=dtype,
            attn=attn,
            prompt_budget=budget,
            offline=offline,
            quantize=quantize,
        )
    )
    key = model_key(settings.model, revision)
    token = _token(token, token_file)
    if not _loopback(host):
        if not token and not insecure:
            raise InputError(
                f"--host {host} is reachable from other machines: set SC2_SERVER_TOKEN (or --token-file), "
                "or pass --insecure to serve without a token"
            )
        note(f"listening on {host}: reachable from other machines{'' if token else ' with no token'}", True)
    if request_timeout <= 0 or max_connections < 1:
        raise InputError("--request-timeout must be > 0 and --max-connections ≥ 1")
    if unix_socket:
        private_runtime_dir()  # refuses a folder another user could answer from, before the model loads
    if unix_socket and discover(key) is not None:
        raise InputError(f"a server for {settings.model} is already running ({socket_path(key)})")
    options = ServerOptions(
        host=host,
        port=_free_port(host, DEFAULT_PORT) if port is None else port,
        socket_path=socket_path(key) if unix_socket else None,
        announcement=announcement_path(key) if unix_socket else None,
        key=key,
        token=token,
        idle_timeout=idle_timeout,
        max_tokens_limit=max_tokens_limit,
        request_timeout=request_timeout,
        max_connections=max_connections,
        speculate=not no_speculate,
        log=(lambda message: print(f"sc2 serve: {message}", file=sys.stderr, flush=True))
        if verbose
        else (lambda m: None),
    )
    if engine:  # a gateway: the engine object has the in-process Engine's interface
        runner = session.open_remote(
            dataclasses.replace(settings, engine=engine), revision, token=checked_token(engine_token),
            bar=ProgressBar, note=lambda message: note(message, True),
        )  # fmt: skip
    else:
        runner = session.open_engine(
            settings,
            revision,
            bar=ProgressBar,
            note=lambda message: note(message, True),
            cache_slots=cache_slots,
        )

    def ready(details: dict) -> None:
        where = f"http://{details['host']}:{details['port']}" + (
            f" and unix://{details['socket']}" if details["socket"] else ""
        )
        print(f"sc2 serve: {settings.model} on {where} (pid {details['pid']})", file=sys.stderr, flush=True)

    try:
        why = run_server(runner, options, ready)  # type: ignore[arg-type]
    except OSError as e:
        raise InputError(
            f"cannot listen on {host}:{options.port} ({e.strerror or e}); pick another --port"
        ) from None
    print(
        f"sc2 serve: stopped ({'idle for ' + str(int(idle_timeout)) + 's' if why == 'idle' else why})",
        file=sys.stderr,
        flush=True,
    )


def _token(argv_token: str | None, token_file: Path | None) -> str | None:
    """The bearer token: --token (with a warning: every user sees argv in `ps`), --token-file, or
    SC2_SERVER_TOKEN."""
    if argv_token is not None:
        note(
            "--token shows in `ps` to every user of this machine; use SC2_SERVER_TOKEN or --token-file", True
        )
        return argv_token or None
    if token_file is not None:
        try:
            first = token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--token-file {token_file}: cannot read it ({e})") from None
        if not first or not first[0].strip():
            raise InputError(f"--token-file {token_file}: the file is empty")
        return first[0].strip()
    return os.environ.get("SC2_SERVER_TOKEN") or None


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str, preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, preferred))
            return preferred
        except OSError:
            return 0
