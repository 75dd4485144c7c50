"""What serves completions, as the server and the CLI see it: a loaded model (engine.Engine) or a remote
engine's client (engines.remote.RemoteEngine). Torch-free, so a gateway to a remote engine never loads
torch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .events import Event
from .request import CompletionRequest
from .tokenizer import Tokenizer


class Runner(Protocol):
    name: str
    tokenizer: Tokenizer
    default_budget: int
    limit: int  # positions the model holds

    def stream(
        self, request: CompletionRequest, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[Event]: ...

    def describe(self) -> dict[str, Any]: ...
