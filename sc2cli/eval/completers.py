"""Where `sc2 eval` completes: a model opened in this process (once per model and quantization, through
the session like every command), or a warm server named by URL (running whatever model it was started with)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .. import session
from ..completion.events import Event
from ..completion.request import CompletionRequest
from ..model.device import default_budget, probable_device_type
from ..settings import Settings
from .run import Completer


class ServerCompleter:
    """A warm server's completions, as the same events an engine streams."""

    def __init__(self, endpoint: Any, budget: int) -> None:
        self.endpoint = endpoint
        self.default_budget = budget  # for sizing the automatic context only: the server applies its own

    def stream(self, request: CompletionRequest) -> Iterator[Event]:
        return session.stream_through(self.endpoint, request, None)


def in_process(
    bar: Callable[[str], session.Bar] = session.quiet, note: Callable[[str], None] = lambda message: None
) -> Callable[[Settings], Completer]:
    """Opens the settings' model here (weights loaded once per call)."""

    def open_completer(settings: Settings) -> Completer:
        return session.open_engine(settings, bar=bar, note=note)

    return open_completer


def through_server(url: str) -> Callable[[Settings], Completer]:
    """Sends every completion to the server at `url`."""

    def open_completer(settings: Settings) -> Completer:
        endpoint = session.find_server(settings, None, url)
        budget = settings.prompt_budget or default_budget(probable_device_type(settings.device))
        return ServerCompleter(endpoint, budget)

    return open_completer
