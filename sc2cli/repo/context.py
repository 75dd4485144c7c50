"""Context chosen automatically for a completion in a git repository: the files the current file imports,
then the chunks most like the lines around the cursor, as `Document`s for StarCoder2's repository format.

Only files git tracks are read (files.py), so nothing git ignores can reach a prompt. The selection is
measured in characters (the tokenizer is not loaded yet when the CLI builds a request); the prompt then
trims it to its token budget, dropping from the end, so what comes first matters most."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..completion.prompt import Document
from .files import git_root, read_source
from .imports import imported_files
from .index import Refresh, RepoIndex, identifiers
from .recent import ring_for

CHARS_PER_TOKEN = 3  # code runs 3 to 4 characters a token: this errs toward choosing more than fits
QUERY_LINES_BEFORE, QUERY_LINES_AFTER = 12, 4  # the lines around the cursor the chunks must resemble
IMPORT_SHARE = 2  # one imported file takes at most 1/IMPORT_SHARE of the room left: similar chunks need some
MAX_CHUNKS = 12
INDEX_BUDGET_S = 0.2  # the most a completion spends indexing; a large repository's index grows over several
TRUST_S = 2.0  # a process that found the index whole this recently uses it without checking files again

_open: dict[Path, RepoIndex] = {}  # one index per repository root for the life of the process (a server's)
_whole_at: dict[Path, float] = {}  # when each index was last found up to date (time.monotonic)
_roots: dict[str, Path | None] = {}  # folder -> its repository's root, for the requests a server sees
MAX_FOLDERS = 256


@dataclass(frozen=True)
class Selection:
    """The documents chosen, the repository's root, how long indexing took, how many files it indexed,
    and how many are left for later completions (a time budget ran out)."""

    documents: tuple[Document, ...]
    root: Path | None
    index_s: float = 0.0
    indexed_files: int = 0
    pending_files: int = 0


def index_for(root: Path) -> RepoIndex:
    """The process's index of `root`, opened (from the on-disk cache) on first use."""
    root = root.resolve()
    if root not in _open:
        _open[root] = RepoIndex(root)
    return _open[root]


def context_tokens(budget: int, max_tokens: int, share: float, given: Sequence[Document] = ()) -> int:
    """The tokens of context to choose: `share` of what the completion leaves of the prompt's budget,
    less what the documents already `given` take."""
    return int((budget - max_tokens) * share) - sum(len(d.text) for d in given) // CHARS_PER_TOKEN


def choose_context(
    file: Path,
    prefix: str,
    suffix: str,
    budget: int,
    max_tokens: int,
    share: float,
    given: Sequence[Document] = (),
    index_budget_s: float | None = INDEX_BUDGET_S,
) -> Selection:
    """`auto_context` for a completion of `max_tokens` in a prompt of `budget` tokens, `share` of it for
    context, after the documents `given` by hand: what `sc2 complete` and `sc2 eval` both ask."""
    tokens = context_tokens(budget, max_tokens, share, given)
    return auto_context(file, prefix, suffix, tokens, [d.path for d in given], index_budget_s)


def auto_context(
    file: Path,
    prefix: str,
    suffix: str,
    tokens: int,
    given: Sequence[str] = (),
    index_budget_s: float | None = INDEX_BUDGET_S,
) -> Selection:
    """Documents for about `tokens` tokens of context for the cursor between `prefix` and `suffix` in
    `file`; `given` are paths already in the prompt (`--context`), never repeated. Empty outside git.
    Indexing stops after `index_budget_s` seconds (None: the index is made whole first, for results that
    do not depend on how fast the machine is); imports never wait for it."""
    root = git_root(file.absolute().parent)
    if root is None or tokens <= 0:
        return Selection((), root)
    started = time.perf_counter()
    index = index_for(root)
    refreshed = _refresh(index, index_budget_s)
    seconds = time.perf_counter() - started
    path = file.absolute().resolve().relative_to(root.resolve()).as_posix()
    room = tokens * CHARS_PER_TOKEN
    imports = _imports(root, path, prefix + suffix, index.files, set(given), room)
    room -= sum(len(d.text) for d in imports)
    skip = {path, *given, *(d.path for d in imports)}
    similar = _similar(root, index, _query(prefix, suffix), skip, room)
    return Selection(imports + similar, root, seconds, refreshed.indexed, refreshed.pending)


def editor_chunks(
    path: str | None, prefix: str, suffix: str, sent: Sequence[Document], tokens: int
) -> tuple[Document, ...]:
    """For a server's request that carries the editor's own chunks (`sent`, llama.cpp's `input_extra`):
    remember them, and return chunks earlier requests sent that are most like the lines around the
    cursor, for about `tokens` tokens, none of them sent again now. Kept per repository when `path` is a
    file's absolute path in one, else in one ring for all."""
    root = _root_of(path)
    ring = ring_for(root)
    now = {d.text for d in sent}
    room = tokens * CHARS_PER_TOKEN
    chosen: list[Document] = []
    skip = {path, _relative(path, root)} if path else set()
    for score, seen in ring.search(_query(prefix, suffix), MAX_CHUNKS, skip):
        if seen.text in now or len(seen.text) > room:
            continue
        chosen.append(Document(seen.path, seen.text, origin=f"recent: bm25 {score:.1f}"))
        room -= len(seen.text)
    ring.add(sent)
    return tuple(chosen)


def _refresh(index: RepoIndex, budget_s: float | None) -> Refresh:
    """The index brought up to date within the time budget, unless this process found it whole within
    the last TRUST_S seconds (a warm server, an evaluation: many completions in a row)."""
    whole_at = _whole_at.get(index.root)
    if whole_at is not None and time.monotonic() - whole_at < TRUST_S:
        return Refresh(0, 0, len(index.files))
    refreshed = index.refresh(budget_s=budget_s)
    if not refreshed.pending:
        _whole_at[index.root] = time.monotonic()
    return refreshed


def _root_of(path: str | None) -> Path | None:
    if not path or not os.path.isabs(path):
        return None
    folder = os.path.dirname(path)
    if folder not in _roots:
        if len(_roots) > MAX_FOLDERS:
            _roots.clear()
        _roots[folder] = git_root(Path(folder)) if os.path.isdir(folder) else None
    root = _roots[folder]
    return root.resolve() if root is not None else None


def _relative(path: str, root: Path | None) -> str:
    if root is None:
        return path
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return path


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
    """The index's best chunks and, scored on the index's scale, those editors sent to this process
    (recent.py), best first; none overlapping or repeating another."""
    candidates = [(h.score, h.path, h, None) for h in index.search(query, MAX_CHUNKS * 2, exclude=skip)]
    ring = ring_for(root.resolve())
    statistics = index.idf(query) if query and ring.chunks() else None  # a query more: only when needed
    for score, seen in ring.search(query, MAX_CHUNKS, skip, *(statistics or (None, None))):
        candidates.append((score, seen.path, None, seen.text))
    candidates.sort(key=lambda c: -round(c[0], 6))  # stable: the index's own order among equals
    docs: list[Document] = []
    taken: dict[str, list[tuple[int, int]]] = {}
    for score, path, hit, text in candidates:
        if room <= 0 or len(docs) >= MAX_CHUNKS:
            break
        if hit is not None:
            if any(hit.start < stop and start < hit.stop for start, stop in taken.get(path, [])):
                continue  # overlaps a chunk already chosen
            text = _lines(root, hit.path, hit.start, hit.stop)
            origin = f"similar: lines {hit.start + 1}-{hit.stop}, bm25 {score:.1f}"
            taken.setdefault(path, []).append((hit.start, hit.stop))
        else:
            origin = f"recent: bm25 {score:.1f}"
        if text is None or len(text) > room or any(text in d.text for d in docs):
            continue
        docs.append(Document(path, text, origin=origin))
        room -= len(text)
    return tuple(docs)


def _lines(root: Path, path: str, start: int, stop: int) -> str | None:
    source = read_source(root, path)
    return None if source is None else "".join(source.splitlines(keepends=True)[start:stop])


def _head(text: str, chars: int) -> str:
    """Whole lines from the start of `text`, at most `chars` characters."""
    if len(text) <= chars:
        return text
    cut = text.rfind("\n", 0, chars)
    return text[: cut + 1] if cut >= 0 else ""
