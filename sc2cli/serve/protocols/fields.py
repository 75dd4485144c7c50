"""Reading typed fields from a JSON request body; a wrong type or value is an `InputError` naming the
field as the protocol spells it (never a CLI flag: `Sampling`'s own messages speak of `--temperature`)."""

from __future__ import annotations

import math
from typing import Any

from ...completion.sampling import Sampling
from ...errors import InputError

MIN_TEMPERATURE = 0.01  # below this, dividing the logits can overflow to inf; 0 means greedy
MAX_SEED = 2**64 - 1  # what torch's generators take


def number(body: dict, name: str, kind: type, default: Any) -> Any:
    """An int or a float field (a float field takes ints too); finite, never a bool."""
    value = body.get(name, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"field {name!r} must be a{'n' if kind is int else ''} {_KIND_NAMES[kind]}")
    if kind is float and not math.isfinite(value):
        raise InputError(f"field {name!r} must be a finite number")
    return value


_KIND_NAMES = {int: "integer", float: "number"}


def stops(value: Any) -> tuple[str, ...]:
    """`stop`: a string or a list of strings; empty strings are skipped (as llama.cpp does)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise InputError("field 'stop' must be a string or a list of strings")


def text(body: dict, name: str, required: bool = False) -> str:
    value = body.get(name, None if required else "")
    if not isinstance(value, str):
        raise InputError(f"field {name!r} (a string) is {'required' if value is None else 'not a string'}")
    return value


def flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputError(f"field {name!r} must be true or false")
    return value


def sampling(
    temperature: float | None, top_k: int | None, top_p: float | None, seed: int | None, names: dict[str, str]
) -> Sampling:
    """`Sampling` from values already typed, checked first with messages naming the fields in `names`
    (keys temperature, top_k, top_p, seed). top_k ≤ 0 and seed -1 mean "none", as in llama.cpp."""
    t = 0.0 if temperature is None else temperature
    if t < 0 or 0 < t < MIN_TEMPERATURE:
        raise InputError(
            f"field {names['temperature']!r} must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {t}"
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"field {names['top_p']!r} must be in (0, 1], got {top_p}")
    if seed is not None and seed != -1 and not 0 <= seed <= MAX_SEED:
        raise InputError(f"field {names['seed']!r} must be between 0 and 2**64-1 (or -1: random), got {seed}")
    return Sampling(
        temperature=t,
        top_k=top_k if top_k is not None and top_k > 0 else None,
        top_p=top_p,
        seed=None if seed == -1 else seed,
    )


PLAIN_NAMES = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "seed": "seed"}


def sampling_fields(body: dict, names: dict[str, str] = PLAIN_NAMES) -> Sampling:
    """Sampling read from `body`, each parameter under its name in `names`."""
    return sampling(
        number(body, names["temperature"], float, None),
        number(body, names["top_k"], int, None),
        number(body, names["top_p"], float, None),
        number(body, names["seed"], int, None),
        names,
    )
