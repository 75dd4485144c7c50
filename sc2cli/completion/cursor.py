"""Cursor positions: `FILE:LINE[:COL]` from the command line, and the character offset it points to."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Location:
    """`FILE:LINE[:COL]` from the command line; LINE and COL are 1-based, COL None means end of line."""

    path: str
    line: int
    column: int | None = None


_LOCATION = re.compile(r"^(?P<path>.+?):(?P<line>\d+)(?::(?P<col>\d+))?$", re.DOTALL)


def parse_location(spec: str) -> Location:
    match = _LOCATION.match(spec)
    if not match:
        raise InputError(f"{spec!r}: expected FILE:LINE or FILE:LINE:COL (LINE and COL count from 1)")
    line, col = int(match["line"]), match["col"]
    if line < 1 or (col is not None and int(col) < 1):
        raise InputError(f"{spec!r}: LINE and COL count from 1")
    return Location(match["path"], line, int(col) if col is not None else None)


def line_count(text: str) -> int:
    """Lines as an editor counts them: a final newline ends the last line rather than starting one."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def past_the_end(line: int, lines: int, name: str) -> InputError:
    """The error for a cursor below the last line (`lines`, as `line_count` counts them)."""
    return InputError(f"line {line} is past the end of {name} ({lines} lines)")


def cursor_offset(
    text: str,
    line: int,
    column: int | None,
    *,
    byte_column: bool = False,
    name: str = "file",
    first_line: int = 1,
) -> int:
    """The character offset of a 1-based LINE:COL cursor (before the COL-th character, or before the
    COL-th byte of the line's UTF-8 with `byte_column`). No COL: the end of the line's text. `text` may be
    an excerpt of the file that starts at line `first_line` (errors then name the file's line numbers)."""
    if line < 1 or (column is not None and column < 1):
        raise InputError(f"line {line}, column {column} of {name}: LINE and COL count from 1")
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    if line > len(starts):
        raise past_the_end(line + first_line - 1, line_count(text) + first_line - 1, name)
    start = starts[line - 1]
    end = starts[line] - 1 if line < len(starts) else len(text)
    line_text = text[start:end].removesuffix("\r")
    if column is None:
        return start + len(line_text)
    line = line + first_line - 1
    if byte_column:
        encoded = line_text.encode("utf-8")
        if column > len(encoded) + 1:
            raise InputError(
                f"byte column {column} is past the end of line {line} of {name} ({len(encoded)} bytes)"
            )
        try:
            return start + len(encoded[: column - 1].decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(
                f"byte column {column} of line {line} of {name} is inside a multi-byte character"
            ) from None
    if column > len(line_text) + 1:
        raise InputError(
            f"column {column} is past the end of line {line} of {name} ({len(line_text)} characters)"
        )
    return start + column - 1
