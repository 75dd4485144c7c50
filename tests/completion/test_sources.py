"""Reading inputs: the excerpt around the cursor (bounded memory, the same prompt as the whole input),
and the refusals of what is not a regular file or is too big."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sc2cli
from sc2cli.completion.cursor import cursor_offset
from sc2cli.completion.prompt import FimTask, build_prompt
from sc2cli.completion.sources import (
    BYTES_PER_TOKEN,
    MAX_INPUT_BYTES,
    open_input,
    read_excerpt,
    read_head,
    read_text,
)
from sc2cli.completion.tokenizer import Tokenizer
from sc2cli.errors import InputError

TOKENIZER = Tokenizer.from_folder(Path(sc2cli.__file__).parent / "tiny")


class Trickle(io.BytesIO):
    """A stream that hands out at most `most` bytes a read, as a pipe may."""

    def __init__(self, data: bytes, most: int) -> None:
        super().__init__(data)
        self.most = most

    def read(self, size: int | None = -1) -> bytes:
        return super().read(self.most if size is None or size < 0 else min(size, self.most))


LINE = st.text(st.sampled_from("ab c_(){}:=#\t\r日é"), max_size=40)
TEXTS = st.lists(LINE, max_size=120).map("\n".join)


def _line_start(data: bytes, line: int) -> int:
    start = 0
    for _ in range(line - 1):
        start = data.index(b"\n", start) + 1
    return start


@settings(max_examples=150, deadline=None)
@given(TEXTS, st.integers(1, 130), st.integers(1, 200), st.integers(1, 50))
def test_the_excerpt_is_whole_lines_around_the_cursor_line(text, line, reach, most):
    data = text.encode()
    if line > data.count(b"\n") + 1:
        with pytest.raises(InputError, match=f"line {line} is past the end"):
            read_excerpt(Trickle(data, most), line, reach, "f")
        return
    start = _line_start(data, line)
    end_of_line = data.find(b"\n", start) + 1 or len(data)
    if end_of_line - start - (data[end_of_line - 1 : end_of_line] == b"\n") > reach:
        with pytest.raises(InputError, match="bytes long"):
            read_excerpt(Trickle(data, most), line, reach, "f")
        return
    ex = read_excerpt(Trickle(data, most), line, reach, "f")
    assert ex.text == data[ex.start : ex.end].decode()
    assert ex.first_line == data[: ex.start].count(b"\n") + 1 <= line
    assert ex.start == 0 or data[ex.start - 1 : ex.start] == b"\n"
    assert ex.end == len(data) or data[ex.end - 1 : ex.end] == b"\n"
    assert max(0, start - 2 * reach) <= ex.start <= start and end_of_line <= ex.end <= end_of_line + reach
    low = max(0, start - reach)
    assert (ex.first_line - 1) % 32 == 0 or ex.start == (data.find(b"\n", low - 1) + 1 if low else 0)
    if ex.end < len(data):  # what is left out would not fit: the next line ends past the reach
        assert (data.find(b"\n", ex.end) + 1 or len(data)) > end_of_line + reach
    if len(data) <= reach:
        assert (ex.text, ex.first_line) == (text, 1)


@settings(max_examples=100, deadline=None)
@given(TEXTS, st.integers(1, 130), st.integers(0, 45), st.booleans())
def test_the_cursor_in_the_excerpt_is_the_cursor_in_the_text(text, line, column, byte_column):
    data = text.encode()
    if line > data.count(b"\n") + 1:
        return
    try:
        want = cursor_offset(text, line, column or None, byte_column=byte_column)
    except InputError as e:
        want = str(e)
    ex = read_excerpt(io.BytesIO(data), line, 400, "f")
    try:
        got = len(data[: ex.start].decode()) + cursor_offset(
            ex.text,
            line - ex.first_line + 1,
            column or None,
            byte_column=byte_column,
            first_line=ex.first_line,
        )
    except InputError as e:
        got = str(e)
    assert got == want


PLAIN_LINE = st.text(st.sampled_from("ab c_(){}:=#\t日é"), max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PLAIN_LINE, min_size=1, max_size=400), st.data(), st.integers(24, 96))
def test_the_excerpt_makes_the_prompt_the_whole_text_makes(lines, data, budget):
    """The point of the window: reach = budget × BYTES_PER_TOKEN loses nothing the prompt would keep.
    (Lines split at "\\n" only: the prompt's trimming splits at every separator str.splitlines knows.)"""
    text = "\n".join(lines)
    line = data.draw(st.integers(1, len(lines)))
    column = data.draw(st.integers(1, len(lines[line - 1]) + 1))
    cursor = cursor_offset(text, line, column)
    ex = read_excerpt(io.BytesIO(text.encode()), line, budget * BYTES_PER_TOKEN, "f")
    at = cursor_offset(ex.text, line - ex.first_line + 1, column)
    whole = build_prompt(FimTask(text[:cursor], text[cursor:], "a.py"), TOKENIZER, budget)
    part = build_prompt(FimTask(ex.text[:at], ex.text[at:], "a.py"), TOKENIZER, budget)
    assert (part.ids, part.pieces) == (whole.ids, whole.pieces)


class Lines(io.RawIOBase):
    """`size` bytes of short lines, made as they are read: a big input without holding it."""

    def __init__(self, size: int) -> None:
        self.size = self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        at = (self.size - self.left) % 24  # where in its line the chunk starts
        chunk = (b"x = 1  # a line of code\n" * (n // 24 + 2))[at : at + n]
        b[:n] = chunk
        self.left -= n
        return n


def test_memory_stays_bounded_on_the_largest_input():
    size = MAX_INPUT_BYTES - 1
    tracemalloc.start()
    try:
        ex = read_excerpt(io.BufferedReader(Lines(size)), 2_000_000, 64 << 10, "big", drain=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ex.text.startswith("x = 1") and 64 << 10 <= len(ex.text) <= 3 * (64 << 10)
    assert peak < 8 << 20  # a few chunks of 1 MiB and the window, not the 64 MiB
    with pytest.raises(InputError, match="over 64 MiB"):
        read_excerpt(io.BufferedReader(Lines(MAX_INPUT_BYTES + 1)), 3, 1000, "stdin", drain=True)


def test_non_regular_files_are_refused_before_opening(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: opening it would block forever
    for path, kind in ((fifo, "a FIFO"), (Path(os.devnull), "a character device")):
        for read in (open_input, read_text, lambda p: read_head(p, 100)):
            with pytest.raises(InputError, match=f"is {kind}, not a regular file"):
                read(path)


def test_files_over_the_limit_are_refused_without_reading(tmp_path):
    big = tmp_path / "big.py"
    with open(big, "wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(InputError, match="big.py is over 64 MiB"):
        open_input(big)


def test_a_context_file_gives_its_first_whole_lines(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("one\ntwo\nthree\n")
    assert read_head(f, 100) == "one\ntwo\nthree\n"
    assert read_head(f, 9) == "one\ntwo\n"
    assert read_head(f, 2) == ""
