"""A repository's chunks and the identifiers in them, kept in SQLite on disk (one file per repository in the
user cache folder), updated from file modification times and sizes, and searched with BM25.

A completion asks for the chunks most like the lines around its cursor. Reading and splitting 2,000 files
takes seconds; an index already on disk costs one `git ls-files`, one stat per file and a few indexed
queries, so only the first completion in a repository pays. SQLite is in the standard library, keeps the
postings on disk rather than in memory, and lets two processes update the same index safely."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..folders import cache_folder
from .files import TrackedFile, eligible, index_stamp, read_source, tracked_files, tracked_paths

CHUNK_LINES = 24  # a chunk is this many lines, and chunks start every CHUNK_STRIDE lines
CHUNK_STRIDE = 24  # no overlap: half the index of a half-overlapping window, for a little recall
SCHEMA_VERSION = 4
BM25_K1, BM25_B = 1.2, 0.75
BULK_FILES = 64  # more files than this to index: one sorted insert, the chunk index rebuilt after it
FIRST_BYTE_S = 2e-6  # with a time budget, the first batch assumes a byte takes this long to index (a
# guess that errs slow: about 0.6 us on a loaded 2-core machine); later batches go by what was measured
MAX_BATCH = 512  # files in one transaction, at most
VARIABLES = 500  # the most `?` in one statement (old SQLite builds allow 999)
MAX_POSTINGS = 6000  # the rarest query identifiers are scored, until their postings reach this many rows:
# a common one says little (a low idf) and costs many rows, and a completion cannot wait for them
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
KEYWORDS = frozenset(
    [
        "and",
        "as",
        "assert",
        "async",
        "await",
        "break",
        "case",
        "catch",
        "class",
        "const",
        "continue",
        "def",
        "default",
        "del",
        "do",
        "elif",
        "else",
        "enum",
        "except",
        "export",
        "extends",
        "false",
        "fi",
        "finally",
        "fn",
        "for",
        "from",
        "func",
        "function",
        "go",
        "if",
        "impl",
        "import",
        "in",
        "interface",
        "is",
        "let",
        "match",
        "mod",
        "new",
        "nil",
        "none",
        "not",
        "null",
        "or",
        "package",
        "pass",
        "pub",
        "raise",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "switch",
        "this",
        "throw",
        "true",
        "try",
        "type",
        "use",
        "var",
        "void",
        "while",
        "with",
        "yield",
        "int",
        "str",
        "bool",
        "float",
        "char",
    ]
)  # said everywhere: they match every chunk and nothing in particular

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, path TEXT UNIQUE, mtime_ns INTEGER, size INTEGER);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, file_id INTEGER, start INTEGER, stop INTEGER,
                                   length INTEGER);
CREATE TABLE IF NOT EXISTS tokens (id INTEGER PRIMARY KEY, token TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS postings (token_id INTEGER, chunk_id INTEGER, tf INTEGER, length INTEGER,
                                     PRIMARY KEY (token_id, chunk_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (file_id);
"""  # postings are clustered by token (a search reads one range per identifier, no table rows), and hold
# integers only: the identifier's text is stored once, in tokens
_BY_CHUNK = "CREATE INDEX IF NOT EXISTS postings_chunk ON postings (chunk_id)"  # forgetting a file's chunks


@dataclass(frozen=True)
class Hit:
    """Lines [start, stop) of `path` (0-based), and how well they match the query."""

    path: str
    start: int
    stop: int
    score: float
    mtime_ns: int


@dataclass(frozen=True)
class Refresh:
    """What an update did: files indexed anew, files dropped, files tracked now, files still to index."""

    indexed: int
    removed: int
    files: int
    pending: int = 0  # changed files left for a later refresh (one given a time budget)


def identifiers(text: str) -> list[str]:
    """The identifier tokens BM25 matches on (two characters or more, no common keywords)."""
    return [t for t in IDENTIFIER.findall(text) if t.lower() not in KEYWORDS]


def identifier_counts(text: str) -> Counter[str]:
    """`Counter(identifiers(text))`, with the keyword test once per distinct token rather than per token."""
    counts = Counter(IDENTIFIER.findall(text))
    for token in [t for t in counts if t.lower() in KEYWORDS]:
        del counts[token]
    return counts


def chunk_spans(line_count: int) -> list[tuple[int, int]]:
    """Overlapping windows of CHUNK_LINES lines every CHUNK_STRIDE lines, the last one reaching the end."""
    if line_count <= CHUNK_LINES:
        return [(0, line_count)] if line_count else []
    starts = list(range(0, line_count - CHUNK_LINES + 1, CHUNK_STRIDE))
    if starts[-1] + CHUNK_LINES < line_count:
        starts.append(line_count - CHUNK_LINES)
    return [(s, s + CHUNK_LINES) for s in starts]


class RepoIndex:
    """The index of one repository root. `refresh()` brings it up to date with the files on disk."""

    def __init__(self, root: Path, db_path: Path | None = None) -> None:
        self.root = root.resolve()
        key = hashlib.sha1(str(self.root).encode()).hexdigest()[:16]
        self.db_path = db_path or cache_folder() / "repo-index" / f"{self.root.name}-{key}.sqlite"
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")  # readers never wait for another process's update
        self.db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last update to a crash is fine
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        if self._meta("schema") != str(SCHEMA_VERSION):
            self._reset()
        self.db.executescript(_SCHEMA)
        self.db.execute(_BY_CHUNK)
        self.files: dict[str, TrackedFile] = {}

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _reset(self) -> None:
        """Start over: an index another version of sc2 wrote may have other tables and columns."""
        with self.db:
            for table in ("files", "chunks", "tokens", "postings"):
                self.db.execute(f"DROP TABLE IF EXISTS {table}")
            self.db.execute("DELETE FROM meta")
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def refresh(self, tracked: Sequence[TrackedFile] | None = None, budget_s: float | None = None) -> Refresh:
        """Re-index files whose mtime or size changed, drop files no longer tracked. With `budget_s`, stop
        once about that many seconds have gone to indexing, the most recently modified files first: the
        rest waits for the next call (`Refresh.pending`), and searches meanwhile see what is indexed. The
        budget counts from the call: listing and checking the files spend it too."""
        started = time.perf_counter()
        current = {f.path: f for f in (tracked if tracked is not None else self._tracked())}
        known = {p: (i, m, s) for i, p, m, s in self.db.execute("SELECT id, path, mtime_ns, size FROM files")}
        stale = [f for p, f in current.items() if known.get(p, (0, None, None))[1:] != (f.mtime_ns, f.size)]
        stale.sort(key=lambda f: (-f.mtime_ns, f.path))
        gone = [p for p in known if p not in current]
        self.files = current
        if gone:
            self._replace(gone, [])
        if budget_s is None:
            self._replace([f.path for f in stale], stale, bulk=len(stale) > BULK_FILES)
            done = len(stale)
        else:
            done = self._index_within(stale, started + budget_s)
        if done > BULK_FILES and done == len(stale):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log would stay as big as the index
        return Refresh(done, len(gone), len(current), len(stale) - done)

    def _tracked(self) -> list[TrackedFile]:
        """The tracked files with their stat; `git ls-files` runs only when git's index file changed since
        the list was last stored (a new process saves a subprocess on every completion)."""
        stamp = index_stamp(self.root)
        if stamp is not None and stamp == self._meta("git_index"):
            return tracked_files(self.root, json.loads(self._meta("tracked") or "[]"))
        paths = [p for p in tracked_paths(self.root) if eligible(p)]
        if stamp is not None and paths:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('tracked', ?)", (json.dumps(paths),))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('git_index', ?)", (stamp,))
        return tracked_files(self.root, paths)

    def _index_within(self, stale: Sequence[TrackedFile], deadline: float) -> int:
        """Index `stale` in batches sized by how long a byte took so far (in this index, across processes),
        each begun only if it should end by `deadline` (time.perf_counter); how many were indexed. A batch
        is one transaction, so what is indexed stays for the next process."""
        done, per_byte = 0, float(self._meta("byte_s") or FIRST_BYTE_S)
        while done < len(stale):
            allowance = (deadline - time.perf_counter()) / per_byte
            size, total = 0, 0
            while done + size < len(stale) and size < MAX_BATCH:
                total += stale[done + size].size
                if total > allowance:
                    break
                size += 1
            if size < 1 and done:
                break
            size = max(size, 1)  # a call indexes one file at least, however big: the next one goes on
            batch = stale[done : done + size]
            began = time.perf_counter()
            self._replace([f.path for f in batch], batch, byte_s=per_byte)
            measured = (time.perf_counter() - began) / max(sum(f.size for f in batch), 1)
            per_byte = (per_byte + measured) / 2  # smoothed: one batch of unusual files says little
            done += size
        return done

    def _replace(
        self, paths: Sequence[str], files: Sequence[TrackedFile], bulk: bool = False, byte_s: float = 0.0
    ) -> None:
        """In one write transaction: forget what the index holds for `paths`, then index `files` (and keep
        `byte_s`, the time a byte takes, for the next process). The old rows are looked up inside it, so
        two processes indexing the same file cannot both add it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            ids = []
            for i in range(0, len(paths), VARIABLES):
                part = list(paths[i : i + VARIABLES])
                marks = ",".join("?" * len(part))
                ids += [r[0] for r in self.db.execute(f"SELECT id FROM files WHERE path IN ({marks})", part)]
            self._forget(ids)
            if files:
                self._add(files, bulk)
            if byte_s:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('byte_s', ?)", (repr(byte_s),))
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    def _forget(self, file_ids: list[int]) -> None:
        for file_id in file_ids:
            self.db.execute(
                "DELETE FROM postings WHERE chunk_id IN (SELECT id FROM chunks WHERE file_id = ?)", (file_id,)
            )
            self.db.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
            self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def _add(self, files: Sequence[TrackedFile], bulk: bool) -> None:
        """Index `files` with one insert per table: chunks and postings numbered here, postings sorted.
        `bulk`: drop the by-chunk index and build it again after (many files into a small index)."""
        file_id, chunk_id = (self._next_id(table) for table in ("files", "chunks"))
        file_rows, chunk_rows = [], []
        by_token: dict[str, list[tuple[int, int, int]]] = {}  # token -> (chunk, tf, length), chunks ascending
        for f in files:
            file_rows.append((file_id, f.path, f.mtime_ns, f.size))
            text = read_source(self.root, f.path)  # None: binary or not UTF-8, remembered but never searched
            lines = text.splitlines() if text is not None else []
            for start, stop in chunk_spans(len(lines)):
                found = identifier_counts("\n".join(lines[start:stop]))
                length = sum(found.values())
                chunk_rows.append((chunk_id, file_id, start, stop, length))
                for token, tf in found.items():
                    by_token.setdefault(token, []).append((chunk_id, tf, length))
                chunk_id += 1
            file_id += 1
        token_ids = self._token_ids(set(by_token))
        postings = [  # in primary-key order: sorting the tokens sorts the rows
            (token_ids[t], c, tf, n)
            for t in sorted(by_token, key=token_ids.__getitem__)
            for c, tf, n in by_token[t]
        ]
        if bulk:  # one sort of the finished table is faster than keeping the index sorted row by row
            self.db.execute("DROP INDEX IF EXISTS postings_chunk")
        self.db.executemany("INSERT INTO files VALUES (?, ?, ?, ?)", file_rows)
        self.db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)", chunk_rows)
        self.db.executemany("INSERT INTO postings VALUES (?, ?, ?, ?)", postings)
        if bulk:
            self.db.execute(_BY_CHUNK)

    def _next_id(self, table: str) -> int:
        return self.db.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").fetchone()[0]

    def _token_ids(self, tokens: set[str]) -> dict[str, int]:
        """Each token's number, new tokens numbered and stored."""
        wanted = sorted(tokens)
        ids: dict[str, int] = {}
        for i in range(0, len(wanted), VARIABLES):
            part = wanted[i : i + VARIABLES]
            marks = ",".join("?" * len(part))
            ids.update(self.db.execute(f"SELECT token, id FROM tokens WHERE token IN ({marks})", part))
        new = [t for t in wanted if t not in ids]
        first = self._next_id("tokens")
        ids.update((t, first + i) for i, t in enumerate(new))
        self.db.executemany("INSERT INTO tokens VALUES (?, ?)", ((ids[t], t) for t in new))
        return ids

    def search(self, query: Iterable[str], limit: int, exclude: Iterable[str] = ()) -> list[Hit]:
        """The `limit` chunks that best match the query's identifiers (BM25), ties to the newest file."""
        terms = set(query)
        if not terms:
            return []
        n, total = self.db.execute("SELECT COUNT(*), COALESCE(SUM(length), 0) FROM chunks").fetchone()
        if not n:
            return []
        avg = total / n
        ids = self._known(sorted(terms))
        df = dict(self._document_frequencies(list(ids.values())))
        useful = _rarest(df, MAX_POSTINGS)
        if not useful:
            return []
        idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in useful}
        marks = ",".join("?" * len(useful))
        rows = self.db.execute(
            f"SELECT token_id, chunk_id, tf, length FROM postings WHERE token_id IN ({marks})", tuple(useful)
        )
        scores: dict[int, float] = {}
        for token, chunk, tf, length in rows:
            norm = tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / avg))
            scores[chunk] = scores.get(chunk, 0.0) + idf[token] * norm
        return self._hits(scores, limit, set(exclude))

    def idf(self, query: Iterable[str]) -> tuple[Callable[[str], float], float] | None:
        """The query's identifiers' idf over the indexed chunks (an identifier none holds: the highest) and
        the average chunk length, to score other chunks on the index's scale; None when nothing is indexed."""
        n, total = self.db.execute("SELECT COUNT(*), COALESCE(SUM(length), 0) FROM chunks").fetchone()
        if not n:
            return None
        ids = self._known(sorted(set(query)))
        by_id = dict(self._document_frequencies(list(ids.values())))
        df = {t: by_id.get(i, 0) for t, i in ids.items()}
        return (lambda t: math.log(1 + (n - df.get(t, 0) + 0.5) / (df.get(t, 0) + 0.5))), total / n

    def _document_frequencies(self, token_ids: list[int]) -> Iterable[tuple[int, int]]:
        marks = ",".join("?" * len(token_ids))
        return self.db.execute(
            f"SELECT token_id, COUNT(*) FROM postings WHERE token_id IN ({marks}) GROUP BY token_id",
            tuple(token_ids),
        )

    def _known(self, terms: list[str]) -> dict[str, int]:
        """The numbers of the query's identifiers that occur somewhere in the repository."""
        terms = terms[:VARIABLES]
        marks = ",".join("?" * len(terms))
        return dict(self.db.execute(f"SELECT token, id FROM tokens WHERE token IN ({marks})", terms))

    def _hits(self, scores: dict[int, float], limit: int, exclude: set[str]) -> list[Hit]:
        best = sorted(scores.items(), key=lambda item: -item[1])[: limit * 4 + len(exclude) * 8]
        marks = ",".join("?" * len(best))
        rows = self.db.execute(
            f"SELECT c.id, f.path, c.start, c.stop, f.mtime_ns FROM chunks c JOIN files f ON f.id = c.file_id "
            f"WHERE c.id IN ({marks})",
            tuple(c for c, _ in best),
        )
        hits = [
            Hit(path, start, stop, scores[cid], mtime)
            for cid, path, start, stop, mtime in rows
            if path not in exclude
        ]
        hits.sort(key=lambda h: (-round(h.score, 6), -h.mtime_ns, h.path, h.start))
        return hits[:limit]

    def close(self) -> None:
        self.db.close()


def _rarest(df: dict[int, int], rows: int) -> list[int]:
    """The rarest identifiers (by number) whose postings add up to at most `rows` (always the rarest one)."""
    chosen, total = [], 0
    for token, count in sorted(df.items(), key=lambda item: item[1]):
        if chosen and total + count > rows:
            break
        chosen.append(token)
        total += count
    return chosen
