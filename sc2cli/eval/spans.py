"""The spans `sc2 eval` hides: by default lines added in recent commits (`git log -p`, the code the user
actually writes), each in the file as that commit left it; or random lines of tracked files. A span is one
line: the prefix keeps its indentation, the completion must write the rest of it. Sampling is seeded."""

from __future__ import annotations

import random
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..repo.files import eligible, read_source, tracked_files

CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".mjs", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".rs",
     ".go", ".java", ".kt", ".scala", ".rb", ".php", ".cs", ".swift", ".m", ".lua", ".sh", ".r", ".jl",
     ".sql", ".vue", ".svelte", ".zig", ".hs", ".ml", ".ex", ".dart"}
)  # fmt: skip
MIN_CHARS = 4  # a line shorter than this (a bracket, `pass`) says little about the model
GIT_TIMEOUT_S = 60
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass(frozen=True)
class Span:
    """Line `line` (1-based) of `path` as `commit` left it ("" for the work tree): `prefix` ends at the
    line's indentation, `expected` is the rest of the line, `suffix` starts at its newline."""

    path: str
    line: int
    prefix: str
    expected: str
    suffix: str
    commit: str = ""


def worth_completing(line: str) -> bool:
    """A line with something to write: enough characters, and a letter or digit among them."""
    text = line.strip()
    return len(text) >= MIN_CHARS and any(c.isalnum() for c in text)


def span_at(path: str, text: str, line: int, commit: str = "") -> Span | None:
    """The span of line `line` (1-based) in `text`, or None when the line is not worth completing."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines) or not worth_completing(lines[line - 1]):
        return None
    start = sum(len(x) + 1 for x in lines[: line - 1])
    body = lines[line - 1]
    indent = len(body) - len(body.lstrip())
    cursor, end = start + indent, start + len(body)
    return Span(path, line, text[:cursor], text[cursor:end], text[end:], commit)


def added_lines(diff: str) -> list[tuple[str, str, int]]:
    """(commit, path, line) for every line `git log -p --unified=0 --format=commit:%H` says was added."""
    found: list[tuple[str, str, int]] = []
    commit = path = previous = ""
    line = 0
    for row in diff.split("\n"):
        header, previous = previous.startswith("--- "), row
        if row.startswith("commit:"):
            commit, path = row[7:].strip(), ""
        elif header and row.startswith("+++ "):  # not an added line that starts with "++ "
            path = row[6:] if row.startswith("+++ b/") else ""
        elif row.startswith("@@"):
            match = _HUNK.match(row)
            line = int(match.group(1)) if match else 0
        elif row.startswith("+") and path and line:
            if worth_completing(row[1:]):
                found.append((commit, path, line))
            line += 1
    return found


def history_spans(root: Path, paths: Sequence[str], limit: int, seed: int, commits: int) -> list[Span]:
    """Up to `limit` lines added in the last `commits` commits (no merges) to code files still tracked."""
    diff = _git(root, "log", "-p", "--unified=0", "--no-merges", "--no-renames", "--no-color",
                "--format=commit:%H", f"-n{commits}", "--", *(paths or ["."]))  # fmt: skip
    current = {f.path for f in tracked_files(root) if _is_code(f.path)}
    candidates = sorted({c for c in added_lines(diff) if c[1] in current})
    random.Random(seed).shuffle(candidates)
    spans: list[Span] = []
    texts: dict[tuple[str, str], str | None] = {}
    for commit, path, line in candidates:
        if len(spans) >= limit:
            break
        if (commit, path) not in texts:
            texts[(commit, path)] = _show(root, commit, path)
        text = texts[(commit, path)]
        span = span_at(path, text, line, commit) if text is not None else None
        if span is not None:
            spans.append(span)
    return spans


def random_spans(root: Path, paths: Sequence[str], limit: int, seed: int) -> list[Span]:
    """Up to `limit` distinct lines worth completing, from tracked code files under `paths`, at random."""
    files = sorted(f.path for f in tracked_files(root) if _is_code(f.path) and _under(f.path, paths))
    rng = random.Random(seed)
    spans: list[Span] = []
    texts: dict[str, list[int]] = {}
    for _ in range(limit * 20):
        if len(spans) >= limit or not files:
            break
        path = rng.choice(files)
        text = read_source(root, path)
        if text is None:
            files.remove(path)
            continue
        open_lines = texts.setdefault(
            path, [i + 1 for i, x in enumerate(text.split("\n")) if worth_completing(x)]
        )
        if not open_lines:
            files.remove(path)
            continue
        line = open_lines.pop(rng.randrange(len(open_lines)))
        span = span_at(path, text, line)
        if span is not None:
            spans.append(span)
    return spans


def _is_code(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return eligible(path) and "." in name and name[name.rfind(".") :] in CODE_SUFFIXES


def _under(path: str, paths: Sequence[str]) -> bool:
    return not paths or any(
        p in (".", "") or path == p or path.startswith(p.rstrip("/") + "/") for p in paths
    )


def _show(root: Path, commit: str, path: str) -> str | None:
    data = _git_bytes(root, "show", f"{commit}:{path}")
    if data is None or b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        return None


def _git(root: Path, *args: str) -> str:
    data = _git_bytes(root, *args)
    if data is None:
        raise InputError(f"git {args[0]} failed in {root}: is it a git repository with commits?")
    return data.decode("utf-8", "surrogateescape")


def _git_bytes(root: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
