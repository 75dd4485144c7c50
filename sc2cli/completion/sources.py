"""Reading the user's files and finding the repository they belong to (the CLI's input side)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError

BINARY_SNIFF_BYTES = 8192


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text, or a clear refusal: binary files and other encodings are not completed."""
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        raise InputError(f"{name} looks like a binary file (it contains NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{name} is not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8"
        ) from None


def read_text(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_text(data, str(path))


def read_stdin() -> str:
    return decode_text(sys.stdin.buffer.read(), "standard input")


def repository_root(path: Path) -> Path | None:
    """The nearest folder at or above `path` holding a `.git` (folder or worktree file)."""
    for folder in [path, *path.parents]:
        if (folder / ".git").exists():
            return folder
    return None


def repository_of(path: str | Path) -> tuple[str, Path]:
    """(repository name, root folder) for a file: the git root's name, or the file's own folder."""
    path = Path(path).absolute()
    root = repository_root(path.parent) or path.parent
    return root.name or "repo", root


def relative_path(path: str | Path, root: Path) -> str:
    """`path` relative to `root` with forward slashes; just the name if it lies elsewhere."""
    path = Path(path).absolute()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
