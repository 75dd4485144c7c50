"""Reading the user's files and finding the repository they belong to (the CLI's input side).

The prompt keeps at most its budget of tokens, and a token stands for at most `BYTES_PER_TOKEN` bytes of
text, so only a window of lines around the cursor can ever reach the model: `read_excerpt` streams the
input and keeps that window, in memory bounded by the budget whatever the file's size. Inputs are regular
files or standard input of at most `MAX_INPUT_BYTES` (64 MiB); FIFOs, devices and sockets are refused
(one with no writer would hang the read forever).
"""

from __future__ import annotations

import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from .cursor import past_the_end
from .prompt import SNAP_LINES

BINARY_SNIFF_BYTES = 8192
MAX_INPUT_BYTES = 64 << 20  # larger inputs are refused: no source file is this big
BYTES_PER_TOKEN = 64  # a token's bytes, at most, for all but 82 of StarCoder2's 49,152 tokens (runs of one
# character, up to 256 bytes; the tiny model's longest is 37; code averages 3-4): a file made mostly of such
# runs gets a shorter prompt than the whole file would give, never a wrong one
READ_CHUNK = 1 << 20


def decode_text(data: bytes, name: str, offset: int = 0) -> str:
    """UTF-8 text, or a clear refusal: binary files and other encodings are not completed. `offset` is where
    `data` starts in the input (for the error's byte offset)."""
    if offset == 0 and b"\0" in data[:BINARY_SNIFF_BYTES]:
        raise InputError(f"{name} looks like a binary file (it contains NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{name} is not UTF-8 text (invalid byte at offset {offset + e.start}); convert it to UTF-8"
        ) from None


_KINDS = {
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def open_input(path: str | Path) -> BinaryIO:
    """A regular file of at most MAX_INPUT_BYTES, open for reading bytes. Checked before opening: opening a
    FIFO blocks until something writes to it."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            kind = next((k for test, k in _KINDS.items() if test(info.st_mode)), "not a regular file")
            raise InputError(f"{path} is {kind}, not a regular file; pipe its text to stdin (-) instead")
        _check_size(info.st_size, str(path))
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None


def _check_size(size: int, name: str) -> None:
    if size > MAX_INPUT_BYTES:
        raise InputError(f"{name} is over {MAX_INPUT_BYTES >> 20} MiB; sc2 completes source files, not data")


def _read(stream: BinaryIO, name: str, size: int = READ_CHUNK) -> bytes:
    try:
        return stream.read(size)
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e})") from None


def read_all(stream: BinaryIO, name: str) -> bytes:
    """All of a stream, refused past MAX_INPUT_BYTES (read no further than that)."""
    data = _read(stream, name, MAX_INPUT_BYTES + 1)
    _check_size(len(data), name)
    return data


def read_text(path: str | Path) -> str:
    """A whole file as text (at most MAX_INPUT_BYTES)."""
    with open_input(path) as f:
        return decode_text(read_all(f, str(path)), str(path))


def read_stdin() -> str:
    return decode_text(read_all(sys.stdin.buffer, "standard input"), "standard input")


def read_head(path: str | Path, reach: int) -> str:
    """The whole lines that start a file, up to `reach` bytes (a context file: the prompt keeps its start)."""
    with open_input(path) as f:
        data = _read(f, str(path), reach + 1)
    if len(data) > reach:
        data = data[: data.rfind(b"\n", 0, reach) + 1]
    return decode_text(data, str(path))


@dataclass(frozen=True)
class Excerpt:
    """Whole lines of an input: the text, the number of its first line, and the bytes [start, end) of the
    input it spans."""

    text: str
    first_line: int
    start: int
    end: int


def read_excerpt(stream: BinaryIO, line: int, reach: int, name: str, *, drain: bool = False) -> Excerpt:
    """The lines around line `line` (1-based) that the prompt can use: the whole lines within `reach` bytes
    before it (back to a multiple of SNAP_LINES, see `cut`), the line itself, and the whole lines ending
    at most `reach` bytes after it. With reach = budget × BYTES_PER_TOKEN, the prompt built from the
    excerpt is the one built from the whole input. Memory stays near 3 × reach
    whatever the input's size; the cursor's line may be at most `reach` bytes long. `drain`: read the
    rest of the stream too (standard input: its writer finishes, and the size limit holds)."""
    window = _Window(stream, name, reach)
    window.find_line(line)
    window.read_after()
    first, first_line, end = window.cut()
    data = bytes(window.buf[first:end])
    if drain:
        window.drain()
    start, end = window.start + first, window.start + end
    return Excerpt(decode_text(data, name, start), first_line, start, end)


class _Window:
    """The bytes of a stream being read, with the bookkeeping to drop what the excerpt cannot use."""

    def __init__(self, stream: BinaryIO, name: str, reach: int) -> None:
        self.stream, self.name, self.reach = stream, name, reach
        self.buf = bytearray()
        self.start = 0  # the input's offset of buf[0]
        self.buf_line = 1  # the line buf[0] is in
        self.partial = False  # buf[0] is inside line buf_line, not its start
        self.total = 0  # bytes read
        self.eof = False
        self.line = 1
        self.line_start = 0  # buf's offset of the wanted line's start

    def _more(self) -> bytes:
        chunk = _read(self.stream, self.name)
        if self.total == 0 and b"\0" in chunk[:BINARY_SNIFF_BYTES]:
            raise InputError(f"{self.name} looks like a binary file (it contains NUL bytes)")
        self.total += len(chunk)
        _check_size(self.total, self.name)
        self.eof = not chunk
        return chunk

    def find_line(self, line: int) -> None:
        """Read until the start of `line`, keeping at least 2 × `reach` bytes before it."""
        self.line = line
        newlines = 0  # in the input up to the end of buf
        while newlines < line - 1:
            chunk = self._more()
            if not chunk:
                lines = newlines + (1 if self.buf and not self.buf.endswith(b"\n") else 0)
                raise past_the_end(line, lines, self.name)
            count = chunk.count(b"\n")
            if newlines + count >= line - 1:
                at = -1
                for _ in range(line - 1 - newlines):
                    at = chunk.index(b"\n", at + 1)
                self.line_start = len(self.buf) + at + 1
                self.buf += chunk
                return
            self.buf += chunk
            newlines += count
            if len(self.buf) > 3 * self.reach + len(chunk):
                self._drop_front(len(self.buf) - 2 * self.reach)

    def _drop_front(self, keep_from: int) -> None:
        """Forget the bytes before `keep_from`, back to a line start where there is one."""
        cut = self.buf.rfind(b"\n", 0, keep_from) + 1
        if cut == 0:  # one line longer than all of this: forget its start
            cut, self.partial = keep_from, True
        else:
            self.buf_line += self.buf.count(b"\n", 0, cut)
            self.partial = False
        del self.buf[:cut]
        self.start += cut

    def read_after(self) -> None:
        """Read on until `reach` bytes follow the wanted line's end, or the input ends."""
        while True:
            end = self.buf.find(b"\n", self.line_start)
            if (end if end >= 0 else len(self.buf)) - self.line_start > self.reach:
                raise InputError(
                    f"line {self.line} of {self.name} is over {self.reach} bytes long; sc2 reads that much "
                    "around the cursor (it completes source code, not minified or generated data)"
                )
            if self.eof or (
                end >= 0 and len(self.buf) - (end + 1) > self.reach
            ):  # bytes after the line's end
                return
            self.buf += self._more()

    def drain(self) -> None:
        """Read the rest without keeping it: the size limit holds, and a pipe's writer can finish."""
        while not self.eof:
            self._more()

    def cut(self) -> tuple[int, int, int]:
        """(first byte, its line number, end byte) of the excerpt in buf. The first line is the first to
        start within `reach` bytes of the wanted line, moved back to a multiple of SNAP_LINES (where the
        prompt trims) when one starts within 2 × reach: the prompt then trims the excerpt as it would
        have trimmed the whole input."""
        floor = max(0, self.line_start - 2 * self.reach)
        if self.partial:
            floor = max(floor, self.buf.find(b"\n") + 1)
        low = max(floor, self.line_start - self.reach)
        first = low if low == 0 else self.buf.find(b"\n", low - 1) + 1
        first_line = self.buf_line + self.buf.count(b"\n", 0, first)
        back, start = (first_line - 1) % SNAP_LINES, first
        while back and start > floor:
            start, back = self.buf.rfind(b"\n", 0, start - 1) + 1, back - 1
        if back == 0 and start >= floor:
            first, first_line = start, first_line - (first_line - 1) % SNAP_LINES
        line_end = self.buf.find(b"\n", self.line_start) + 1 or len(self.buf)
        if self.eof and len(self.buf) - line_end <= self.reach:
            return first, first_line, len(self.buf)
        return first, first_line, self.buf.rfind(b"\n", line_end - 1, line_end + self.reach) + 1


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
