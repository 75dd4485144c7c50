"""Context chosen automatically for a completion in a git repository: the files the current file imports,
then the chunks most like the lines around the cursor, as `Document`s for StarCoder2's repository format.

Only files git tracks are read (files.py), so nothing git ignores can reach a prompt. The selection is
measured in characters (the tokenizer is not loaded yet when the CLI builds a request); the prompt then
trims it to its token budget, dropping from the end, so what comes first matters most."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..completion.prompt import Document
from .files import git_root, read_source
from .imports import imported_files
from .index import RepoIndex, identifiers

CHARS_PER_TOKEN = 3  # code runs 3 to 4 characters a token: this errs toward choosing more than fits
QUERY_LINES_BEFORE, QUERY_LINES_AFTER = 12, 4  # the lines around the cursor the chunks must resemble
IMPORT_SHARE = 2  # one imported file takes at most 1/IMPORT_SHARE of the room left: similar chunks need some
MAX_CHUNKS = 12

_open: dict[Path, RepoIndex] = {}  # one index per repository root for the life of the process (a server's)


@dataclass(frozen=True)
class Selection:
    """The documents chosen, the repository's root, and how long indexing and search took."""

    documents: tuple[Document, ...]
    root: Path | None
    index_s: float = 0.0
    indexed_files: int = 0


def index_for(root: Path) -> RepoIndex:
    """The process's index of `root`, opened (from the on-disk cache) on first use."""
    root = root.resolve()
    if root not in _open:
        _open[root] = RepoIndex(root)
    return _open[root]


def auto_context(file: Path, prefix: str, suffix: str, tokens: int, given: Sequence[str] = ()) -> Selection:
    """Documents for about `tokens` tokens of context for the cursor between `prefix` and `suffix` in
    `file`; `given` are paths already in the prompt (`--context`), never repeated. Empty outside git."""
    root = git_root(file.absolute().parent)
    if root is None or tokens <= 0:
        return Selection((), root)
    started = time.perf_counter()
    index = index_for(root)
    refreshed = index.refresh()
    seconds = time.perf_counter() - started
    path = file.absolute().resolve().relative_to(root.resolve()).as_posix()
    room = tokens * CHARS_PER_TOKEN
    imports = _imports(root, path, prefix + suffix, index.files, set(given), room)
    room -= sum(len(d.text) for d in imports)
    skip = {path, *given, *(d.path for d in imports)}
    similar = _similar(root, index, _query(prefix, suffix), skip, room)
    return Selection(imports + similar, root, seconds, refreshed.indexed)


def _query(prefix: str, suffix: str) -> list[str]:
    before = prefix.splitlines()[-QUERY_LINES_BEFORE:]
    after = suffix.splitlines()[:QUERY_LINES_AFTER]
    return identifiers("\n".join(before + after))


def _imports(
    root: Path, path: str, text: str, tracked: Iterable[str], given: set[str], room: int
) -> tuple[Document, ...]:
    docs = []
    for other in imported_files(path, text, tracked):
        source = read_source(root, other) if other not in given else None
        if not source or room <= 0:
            continue
        kept = _head(source, room // IMPORT_SHARE)
        if kept:
            docs.append(Document(other, kept, origin="import"))
            room -= len(kept)
    return tuple(docs)


def _similar(
    root: Path, index: RepoIndex, query: list[str], skip: set[str], room: int
) -> tuple[Document, ...]:
    docs: list[Document] = []
    taken: dict[str, list[tuple[int, int]]] = {}
    for hit in index.search(query, MAX_CHUNKS * 2, exclude=skip):
        if room <= 0 or len(docs) >= MAX_CHUNKS:
            break
        if any(hit.start < stop and start < hit.stop for start, stop in taken.get(hit.path, [])):
            continue  # overlaps a chunk already chosen
        source = read_source(root, hit.path)
        if source is None:
            continue
        text = "".join(source.splitlines(keepends=True)[hit.start : hit.stop])
        if len(text) > room:
            continue
        origin = f"similar: lines {hit.start + 1}-{hit.stop}, bm25 {hit.score:.1f}"
        docs.append(Document(hit.path, text, origin=origin))
        taken.setdefault(hit.path, []).append((hit.start, hit.stop))
        room -= len(text)
    return tuple(docs)


def _head(text: str, chars: int) -> str:
    """Whole lines from the start of `text`, at most `chars` characters."""
    if len(text) <= chars:
        return text
    cut = text.rfind("\n", 0, chars)
    return text[: cut + 1] if cut >= 0 else ""
