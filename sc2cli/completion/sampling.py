"""How the next token is chosen: the sampling parameters a request carries (torch-free; the functions
that apply them to logits are in generate.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax); `seed` makes sampling reproducible."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"--temperature must be ≥ 0 (0 is greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"--top-k must be ≥ 1, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
