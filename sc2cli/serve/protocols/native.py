"""sc2's own protocol, `POST /v1/complete`: the body is a `CompletionRequest` as JSON (plus `stream`,
`client_id` and `model`), the reply the engine's events as JSON (NDJSON when streaming), so `sc2 complete`
through a server prints exactly what it prints in-process."""

from __future__ import annotations

from typing import Any

from ...completion.events import Done, Event
from ...completion.request import CompletionRequest

CONTENT_TYPE = "application/x-ndjson"


def parse(body: dict) -> CompletionRequest:
    return CompletionRequest.from_json(body)


def event_json(event: Event) -> dict[str, Any]:
    return event.to_json()


def reply(done: Done) -> dict[str, Any]:
    """The whole completion, unstreamed: the `Done` record without its type."""
    return {k: v for k, v in done.to_json().items() if k != "type"}
