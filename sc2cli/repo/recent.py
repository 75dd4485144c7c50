"""Chunks editors sent recently (llama.cpp's `input_extra`: text from open buffers, yanks, edits), kept
in a bounded ring per repository root (or one for requests that name none) so that a warm server can
offer them again to later completions, scored with BM25 like the index's chunks. Memory only: what an
editor sent lives as long as the server, and at most RING_CHUNKS chunks of MAX_CHUNK_CHARS each."""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..completion.prompt import Document
from .index import BM25_B, BM25_K1, identifier_counts

RING_CHUNKS = 64  # chunks remembered per root; the oldest seen goes first
MAX_CHUNK_CHARS = 8000  # a longer chunk keeps its first lines only
MAX_ROOTS = 16  # rings kept at once; the least recently used goes first


@dataclass(frozen=True)
class Seen:
    """A chunk an editor sent: the file it came from, its text, and its identifiers."""

    path: str
    text: str
    counts: Counter[str]
    length: int


def bm25(
    counts: Counter[str], length: int, terms: set[str], idf: Callable[[str], float], avg: float
) -> float:
    """A chunk's BM25 score for the query `terms`, given each term's idf and the average chunk length."""
    score = 0.0
    for term in terms & counts.keys():
        tf = counts[term]
        score += idf(term) * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / avg))
    return score


class RecentChunks:
    """A ring of the chunks seen last, safe to share between a server's threads."""

    def __init__(self, capacity: int = RING_CHUNKS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Seen] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, documents: Iterable[Document]) -> None:
        """Remember `documents` as the newest chunks (one seen again moves to the front)."""
        with self._lock:
            for doc in documents:
                text = _head(doc.text, MAX_CHUNK_CHARS)
                if not text.strip():
                    continue
                key = (doc.path, text)
                if key in self._items:
                    self._items.move_to_end(key)
                    continue
                counts = identifier_counts(text)
                self._items[key] = Seen(doc.path, text, counts, sum(counts.values()))
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)

    def chunks(self) -> list[Seen]:
        """The chunks remembered, newest first."""
        with self._lock:
            return list(reversed(self._items.values()))

    def search(
        self,
        query: Iterable[str],
        limit: int,
        exclude: set[str] = frozenset(),  # type: ignore[assignment]
        idf: Callable[[str], float] | None = None,
        avg: float | None = None,
    ) -> list[tuple[float, Seen]]:
        """The `limit` chunks (not from a path in `exclude`) that best match the query, newest first among
        equals. `idf` and `avg` come from the repository's index when there is one, else from the ring."""
        terms = set(query)
        seen = [s for s in self.chunks() if s.path not in exclude]
        if not terms or not seen:
            return []
        if idf is None or avg is None:
            idf, avg = _ring_statistics(seen)
        scored = [(bm25(s.counts, s.length, terms, idf, avg or 1.0), s) for s in seen]
        scored = [(score, s) for score, s in scored if score > 0]
        return sorted(scored, key=lambda item: -item[0])[:limit]  # a stable sort: ties keep newest first


_rings: OrderedDict[Path | None, RecentChunks] = OrderedDict()
_rings_lock = threading.Lock()


def ring_for(root: Path | None) -> RecentChunks:
    """The process's ring for the repository at `root` (None: requests that name no repository)."""
    with _rings_lock:
        if root not in _rings:
            _rings[root] = RecentChunks()
            while len(_rings) > MAX_ROOTS:
                _rings.popitem(last=False)
        _rings.move_to_end(root)
        return _rings[root]


def _ring_statistics(seen: list[Seen]) -> tuple[Callable[[str], float], float]:
    """idf and the average length over the ring's own chunks (when no index says better)."""
    df: Counter[str] = Counter()
    for s in seen:
        df.update(s.counts.keys())
    n = len(seen)
    avg = sum(s.length for s in seen) / n
    return (lambda t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))), avg


def _head(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    cut = text.rfind("\n", 0, chars)
    return text[: cut + 1] if cut >= 0 else text[:chars]
