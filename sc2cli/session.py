"""Where a completion runs, decided once per command: an external engine (`engine` setting), a warm
server for this model, or this process.

The application layer between the CLI and the library: it turns the user's settings into an open
checkpoint, a loaded engine (the one way every command loads a model and its tokenizer), or a server to
talk to, and streams the same typed events from either. It never prints: the CLI hands it a progress
bar factory and a `note` callback.

Imports inside functions keep torch out of what needs no model (`--show-prompt`, a completion through a
warm server).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .checkpoint.cache import cached_snapshot
from .checkpoint.layout import read_config
from .checkpoint.names import model_key, parse_model_name
from .checkpoint.open import Checkpoint, open_checkpoint
from .completion.events import Event
from .completion.prompt import Prompt
from .completion.request import CompletionRequest, prompt_for
from .completion.tokenizer import Tokenizer
from .model.device import default_budget, probable_device_type
from .settings import Settings

if TYPE_CHECKING:
    from .completion.engine import Engine
    from .engines.remote import RemoteEngine
    from .serve.client import Endpoint

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class Bar(AbstractContextManager, Protocol):
    """A progress display: entering gives the `progress(done, total)` callback (or None to stay quiet);
    `notice` shows one line beside it."""

    def __enter__(self) -> Progress | None: ...

    def notice(self, message: str) -> None: ...


class _Quiet(nullcontext):
    def notice(self, message: str) -> None:
        pass


def quiet(label: str) -> Bar:
    """No progress display (library use, tests)."""
    return _Quiet()  # type: ignore[return-value]


def _ignore(message: str) -> None:
    pass


def open_model_checkpoint(
    settings: Settings, revision: str | None, bar: Callable[[str], Bar] = quiet
) -> Checkpoint:
    """The checkpoint the settings name, downloaded if need be (with a progress bar), config checked."""
    display = bar(f"fetching {settings.model}")
    with display as progress:
        return open_checkpoint(
            settings.model,
            revision=revision,
            offline=settings.offline,
            progress=progress,
            notice=display.notice,
        )


def context_reach(settings: Settings, revision: str | None, budget: int) -> int:
    """The prompt tokens automatic context is sized against: the budget, or a sliding-window model's window
    when smaller (context farther back than the window is out of the first new token's sight; the tiny
    model's 256-token window took a quarter of a 2,048-token budget of context and repeated itself). The
    window comes from the checkpoint's config when it is on disk, without the network."""
    target = parse_model_name(settings.model)
    folder = target if isinstance(target, Path) else cached_snapshot(target, revision)
    window = read_config(folder).sliding_window if folder is not None else None
    return min(budget, window) if window else budget


def open_engine(
    settings: Settings,
    revision: str | None = None,
    *,
    bar: Callable[[str], Bar] = quiet,
    note: Callable[[str], None] = _ignore,
    cache_slots: int = 0,
) -> Engine:
    """The model and its tokenizer, loaded once, ready to stream completions. Its default prompt budget is
    the settings' `prompt_budget`, else the device's."""
    from .completion.engine import Engine  # torch: only here, where weights are loaded

    checkpoint = open_model_checkpoint(settings, revision, bar)
    tokenizer = Tokenizer.from_folder(checkpoint.folder)
    started = time.perf_counter()
    with bar(f"loading {settings.model}") as progress:
        model = checkpoint.load(
            device=settings.device, dtype=settings.dtype, attn=settings.attn, quantize=settings.quantize,
            progress=progress,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    note(f"loaded {settings.model} ({model.dtype}, {model.attn_backend}, {model.device}) in {seconds:.1f}s")
    return Engine(
        model,
        tokenizer,
        name=settings.model,
        default_budget=settings.prompt_budget or default_budget(model.device.type),
        load_seconds=seconds,
        cache_slots=cache_slots,
    )


def open_remote(
    settings: Settings,
    revision: str | None = None,
    *,
    token: str | None = None,
    bar: Callable[[str], Bar] = quiet,
    note: Callable[[str], None] = _ignore,
) -> RemoteEngine:
    """The engine at `settings.engine`, checked to serve this model's vocabulary, with the model's tokenizer
    and config (only those files are fetched when the weights are not cached). Torch-free."""
    from .checkpoint.download import fetch_tokenizer
    from .checkpoint.layout import read_config
    from .checkpoint.names import parse_model_name
    from .engines.address import parse_engine_url
    from .engines.remote import RemoteEngine

    assert settings.engine, "open_remote needs the engine setting"
    address = parse_engine_url(settings.engine)
    target = parse_model_name(settings.model)
    if isinstance(target, str):
        with bar(f"fetching {settings.model}'s tokenizer"):
            folder = fetch_tokenizer(settings.model, revision=revision, offline=settings.offline)
    else:
        folder = target
    engine = RemoteEngine(
        address,
        Tokenizer.from_folder(folder),
        read_config(folder),
        name=settings.model,
        default_budget=settings.prompt_budget or default_budget("cuda"),
        token=token,
    )
    for message in engine.check():
        note(message)
    note(f"completing through the engine at {address}")
    return engine


def prompt_only(
    request: CompletionRequest, settings: Settings, revision: str | None, bar: Callable[[str], Bar] = quiet
) -> Prompt:
    """The exact prompt a completion would run on, without loading any weights (`--show-prompt`)."""
    checkpoint = open_model_checkpoint(settings, revision, bar)
    budget = default_budget(probable_device_type(settings.device))
    return prompt_for(request, Tokenizer.from_folder(checkpoint.folder), budget, checkpoint.config)


def find_server(
    settings: Settings,
    revision: str | None,
    url: str | None = None,
    note: Callable[[str], None] | None = None,
) -> Endpoint | None:
    """The server to use: the one `url` names, else a warm one for this model found in the runtime folder,
    unless the settings ask for a device, dtype or attention backend it does not run with."""
    from .serve.client import Endpoint, discover  # http.client: only when a server is looked for

    if url:
        return Endpoint.from_url(url, os.environ.get("SC2_SERVER_TOKEN"))
    found = discover(model_key(settings.model, revision), note)
    if found is None:
        return None
    endpoint, info = found
    wanted = {"device": settings.device, "dtype": settings.dtype, "attn": settings.attn}
    for key, value in wanted.items():
        if value != "auto" and not str(info.get(key, "")).startswith(_canonical(key, value)):
            return None
    return endpoint


def _canonical(key: str, value: str) -> str:
    if key == "dtype":
        return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(value, value)
    return value


def stream_through(endpoint: Endpoint, request: CompletionRequest, client_id: str | None) -> Iterator[Event]:
    """The completion's events from a warm server (the same records the engine makes)."""
    from .serve.client import stream_completion  # as in find_server

    return stream_completion(endpoint, request.to_json(), client_id)
