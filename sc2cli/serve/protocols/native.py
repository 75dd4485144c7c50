"""sc2's own protocol, `POST /v1/complete`: the body is a `CompletionRequest` as JSON (plus `stream`,
`client_id` and `model`), the reply the engine's events as JSON (NDJSON when streaming), so `sc2 complete`
through a server prints exactly what it prints in-process."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...completion.events import Done, Event
from ...completion.request import CompletionRequest
from ...errors import InputError
from .fields import number, sampling_fields

CONTENT_TYPE = "application/x-ndjson"


SAMPLING_NAMES = {k: f"sampling.{k}" for k in ("temperature", "top_k", "top_p", "seed")}


def parse(body: dict) -> CompletionRequest:
    """The request as JSON; sampling and counts checked first, so messages name fields, not CLI flags."""
    raw_sampling = body.get("sampling") or {}
    if not isinstance(raw_sampling, dict) or set(raw_sampling) - set(SAMPLING_NAMES):
        raise InputError("field 'sampling' must be an object with temperature, top_k, top_p, seed")
    sampling = sampling_fields({f"sampling.{k}": v for k, v in raw_sampling.items()}, SAMPLING_NAMES)
    for name in ("max_tokens", "budget"):
        value = number(body, name, int, None)
        if value is not None and value < 1:
            raise InputError(f"field {name!r} must be at least 1, got {value}")
    return dataclasses.replace(CompletionRequest.from_json({**body, "sampling": None}), sampling=sampling)


def event_json(event: Event) -> dict[str, Any]:
    return event.to_json()


def reply(done: Done) -> dict[str, Any]:
    """The whole completion, unstreamed: the `Done` record without its type."""
    return {k: v for k, v in done.to_json().items() if k != "type"}
