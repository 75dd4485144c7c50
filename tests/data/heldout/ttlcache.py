"""A thread-safe least-recently-used cache with optional expiry, and a decorator built on it."""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class CacheStats:
    __slots__ = ("evictions", "expirations", "hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __repr__(self) -> str:
        return (
            f"CacheStats(hits={self.hits}, misses={self.misses}, "
            f"evictions={self.evictions}, expirations={self.expirations})"
        )


class TTLCache(Generic[K, V]):
    """Keeps at most `maxsize` entries; each expires `ttl` seconds after it was stored (never if None)."""

    def __init__(
        self, maxsize: int = 128, ttl: float | None = None, clock: Callable[[], float] = time.monotonic
    ):
        if maxsize <= 0:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        self._data: OrderedDict[K, tuple[V, float | None]] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        with self._lock:
            self._purge_expired()
            return len(self._data)

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def _expired(self, deadline: float | None) -> bool:
        return deadline is not None and self._clock() >= deadline

    def _purge_expired(self) -> None:
        for key in [k for k, (_, deadline) in self._data.items() if self._expired(deadline)]:
            del self._data[key]
            self.stats.expirations += 1

    def get(self, key: K, default: Any = None) -> V | Any:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.stats.misses += 1
                return default
            value, deadline = entry
            if self._expired(deadline):
                del self._data[key]
                self.stats.expirations += 1
                self.stats.misses += 1
                return default
            self._data.move_to_end(key)
            self.stats.hits += 1
            return value

    def set(self, key: K, value: V, ttl: float | None = None) -> None:
        ttl = self.ttl if ttl is None else ttl
        deadline = self._clock() + ttl if ttl is not None else None
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
            self._data[key] = (value, deadline)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
                self.stats.evictions += 1

    def pop(self, key: K, default: Any = _MISSING) -> V | Any:
        with self._lock:
            if key in self._data:
                return self._data.pop(key)[0]
        if default is _MISSING:
            raise KeyError(key)
        return default

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def items(self) -> list[tuple[K, V]]:
        with self._lock:
            self._purge_expired()
            return [(k, v) for k, (v, _) in self._data.items()]


def cached(maxsize: int = 128, ttl: float | None = None, key: Callable[..., Hashable] | None = None):
    """Memoize a function in a `TTLCache`. The cache is exposed as `wrapper.cache`."""

    def make_key(*args: Any, **kwargs: Any) -> Hashable:
        if key is not None:
            return key(*args, **kwargs)
        return (args, tuple(sorted(kwargs.items())))

    def decorator(func: Callable[..., V]) -> Callable[..., V]:
        cache: TTLCache[Hashable, V] = TTLCache(maxsize=maxsize, ttl=ttl)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> V:
            k = make_key(*args, **kwargs)
            value = cache.get(k, _MISSING)
            if value is _MISSING:
                value = func(*args, **kwargs)
                cache.set(k, value)
            return value

        wrapper.cache = cache  # type: ignore[attr-defined]
        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
        return wrapper

    return decorator


@cached(maxsize=256)
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


if __name__ == "__main__":
    print(fibonacci(80))
    print(fibonacci.cache.stats)
