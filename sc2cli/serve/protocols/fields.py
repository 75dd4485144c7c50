"""Reading typed fields from a JSON request body; a wrong type is an `InputError` naming the field."""

from __future__ import annotations

from typing import Any

from ...errors import InputError


def number(body: dict, name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"field {name!r} must be a {kind.__name__}")
    return value


def stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise InputError("field 'stop' must be a string or a list of strings")


def text(body: dict, name: str, required: bool = False) -> str:
    value = body.get(name, None if required else "")
    if not isinstance(value, str):
        raise InputError(f"field {name!r} (a string) is {'required' if value is None else 'not a string'}")
    return value
