"""The configurations `sc2 eval --vary KEY=v1,v2` compares: every combination of the values given, in the
order given. A bad key or value is one line naming it and what is allowed."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Variant:
    """What one configuration changes; None keeps the command's own setting."""

    auto_context: bool | None = None
    heal: bool | None = None
    quantize: str | None = None
    budget: int | None = None  # prompt + completion tokens
    context_budget: float | None = None  # the share of the prompt left to other files
    model: str | None = None
    label: str = "default"


def _switch(value: str) -> bool:
    if value not in ("on", "off"):
        raise ValueError("on or off")
    return value == "on"


def _quantize(value: str) -> str:
    if value not in ("none", "int8"):
        raise ValueError("none or int8")
    return value


def _tokens(value: str) -> int:
    if not value.isdigit() or int(value) < 16:
        raise ValueError("a whole number of tokens ≥ 16")
    return int(value)


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 0.9:
        raise ValueError("a share between 0 and 0.9")
    return share


def _name(value: str) -> str:
    if not value:
        raise ValueError("a model name")
    return value


KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "auto-context": ("auto_context", _switch),
    "heal": ("heal", _switch),
    "quantize": ("quantize", _quantize),
    "budget": ("budget", _tokens),
    "context-budget": ("context_budget", _share),
    "model": ("model", _name),
}


def parse_vary(specs: Sequence[str]) -> list[Variant]:
    """`["auto-context=on,off", "heal=on,off"]` -> four variants; none given -> one default variant."""
    axes: list[tuple[str, str, list[tuple[str, object]]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise InputError(f"--vary {spec!r}: use KEY=v1,v2 with KEY one of {', '.join(KEYS)}")
        if any(key == k for k, _, _ in axes):
            raise InputError(f"--vary {key} is given twice: put all its values in one --vary")
        field, parse = KEYS[key]
        raw = [v.strip() for v in values.split(",") if v.strip()]
        if not raw or len(set(raw)) != len(raw):
            raise InputError(f"--vary {spec!r}: give distinct values separated by commas")
        try:
            axes.append((key, field, [(v, parse(v)) for v in raw]))
        except ValueError as e:
            bad = next(v for v in raw if not _accepts(parse, v))
            raise InputError(f"--vary {key}={bad}: {key} takes {e}") from None
    if not axes:
        return [Variant()]
    variants = []
    for combination in itertools.product(*(values for _, _, values in axes)):
        changes = {field: value for (_, field, _), (_, value) in zip(axes, combination, strict=True)}
        label = " ".join(f"{key}={text}" for (key, _, _), (text, _) in zip(axes, combination, strict=True))
        variants.append(dataclasses.replace(Variant(), label=label, **changes))
    return variants


def _accepts(parse: Callable[[str], object], value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True
