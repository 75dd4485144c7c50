"""Where a completion should end, decided while it streams: pure functions over the text so far.

Rules (all but stop strings are off with --raw): stop strings; single-line mode when the cursor has code
after it on its line; the end of the statement when the cursor is mid-statement at the end of its line
("return a + " stops at "b", not three functions later); the end of the cursor's block (a line indented
less than the cursor's line, or a blank line followed by a dedent); no repeating what already follows the
cursor; no trailing blank lines.
`Finisher` only lets out text that no later token can take back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OPENERS, CLOSERS = "([{", ")]}"


@dataclass(frozen=True)
class Rules:
    stop: tuple[str, ...] = ()
    single_line: bool = False
    indent: int | None = None  # indentation width of the cursor's line; None turns the block rules off
    suffix_lines: tuple[str, ...] = ()  # the first non-blank lines after the cursor's line, stripped
    rest_of_line: str = ""  # what follows the cursor on its line, stripped
    raw: bool = False  # only stop strings apply
    statement: str = ""  # the cursor's line before it, when the completion may just finish that statement


def indent_width(line: str) -> int:
    ws = line[: len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(8))


def rules_for(prefix: str, suffix: str, stop: Sequence[str] = (), raw: bool = False) -> Rules:
    """The rules implied by the text around the cursor."""
    stop = tuple(s for s in stop if s)
    if raw:
        return Rules(stop=stop, raw=True)
    before = prefix.rsplit("\n", 1)[-1]
    after, _, below = suffix.partition("\n")
    after = after.rstrip("\r")
    line = before + after
    indent = indent_width(line) if line.strip() else indent_width(before)
    suffix_lines = tuple(s.strip() for s in below.splitlines() if s.strip())[:3]
    return Rules(
        stop,
        single_line=bool(after.strip()),
        indent=indent,
        suffix_lines=suffix_lines,
        rest_of_line=after.strip(),
        statement=before if before.strip() and not after.strip() else "",
    )


@dataclass(frozen=True)
class End:
    index: int
    reason: str  # "stop" (a stop string) or "postprocess"


def find_end(text: str, rules: Rules) -> End | None:
    """Where the completion ends, if the text so far decides it."""
    ends = [End(i, "stop") for i in (text.find(s) for s in rules.stop) if i >= 0]
    if (rules.single_line and "\n" in text) or (
        rules.statement and "\n" in text and _finishes_statement(rules.statement, text[: text.index("\n")])
    ):
        ends.append(End(text.index("\n"), "postprocess"))
    elif not rules.raw and rules.indent is not None and not rules.single_line:
        block_end = _end_of_block(text, rules.indent)
        if block_end is not None:
            ends.append(End(block_end, "postprocess"))
    # at one index, the rules' end wins: a stop string there begins with the newline or line that decides
    # the rules' end, so text in pieces meets the rules' end first, and the reason must not depend on that
    return min(ends, key=lambda e: (e.index, e.reason == "stop")) if ends else None


def _finishes_statement(before: str, added: str) -> bool:
    """Whether the cursor's line, `before` it plus the `added` text, is a whole statement: the completion
    wrote something on it, every bracket opened on it is closed, and it does not open a block or go on
    (a trailing ":", "\\" or ",")."""
    line = (before + added).rstrip()
    return bool(added.strip()) and _bracket_depth(line) <= 0 and not line.endswith((":", "\\", ","))


def _bracket_depth(text: str) -> int:
    return sum(c in OPENERS for c in text) - sum(c in CLOSERS for c in text)


def _end_of_block(text: str, indent: int) -> int | None:
    """The start of the first line (after the cursor's own) that leaves the cursor's block."""
    last_indent, blank_before = indent, False
    start = text.find("\n") + 1
    while start:
        newline = text.find("\n", start)
        line = text[start:] if newline < 0 else text[start:newline]
        if not line.strip():
            if newline < 0:
                return None  # indentation not known yet
            blank_before = True
        else:
            width = indent_width(line)
            if width < indent or (blank_before and width < last_indent):
                return start
            last_indent, blank_before = width, False
        start = newline + 1
    return None


def _without_trailing_blank_lines(text: str) -> str:
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _bracket_excess(text: str) -> int:
    """Closing brackets beyond the opening ones."""
    depth = excess = 0
    for ch in text:
        if ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            if depth:
                depth -= 1
            else:
                excess += 1
    return excess


def _overlap_with_rest_of_line(text: str, rest: str) -> int:
    """Length of the longest non-empty start of `rest` that `text` ends with (0 if none)."""
    for k in range(min(len(rest), len(text)), 0, -1):
        if text.endswith(rest[:k]):
            return k
    return 0


def clean_end(text: str, rules: Rules) -> str:
    """The completion once it has ended: no trailing blank lines, nothing that repeats the suffix."""
    if rules.raw:
        return text
    text = _without_trailing_blank_lines(text)
    lines = text.split("\n")
    for k in range(min(len(rules.suffix_lines), len(lines)), 0, -1):
        if [s.strip() for s in lines[-k:]] == list(rules.suffix_lines[:k]):
            text = _without_trailing_blank_lines("\n".join(lines[:-k]))
            break
    if rules.rest_of_line:
        body = text.rstrip()
        k = _overlap_with_rest_of_line(body, rules.rest_of_line)
        overlap = rules.rest_of_line[:k]
        only_closers = all(c in CLOSERS or c.isspace() for c in overlap)
        if k and (not only_closers or _bracket_excess(body) >= sum(c in CLOSERS for c in overlap)):
            text = body[: len(body) - k].rstrip(" \t")
    return text


def stable_length(text: str, rules: Rules) -> int:
    """How much of `text` will be in the completion whatever comes next: a prefix of what the rules would
    make of it if it ended now, at the start of any stop string it may be beginning, or later."""
    ends = [len(text)]
    for stop in rules.stop:  # `text` may end with the start of a stop string: it would end there
        ends += [
            len(text) - k for k in range(1, min(len(stop) - 1, len(text)) + 1) if text.endswith(stop[:k])
        ]
    if rules.raw:
        return min(ends)
    return min(_stable_if_ended(text[:end], rules) for end in ends)


def _stable_if_ended(text: str, rules: Rules) -> int:
    # trailing white space may become blank lines, or precede a dedent
    n = len(text.rstrip())
    if rules.rest_of_line:
        n = min(n, len(text.rstrip()) - _overlap_with_rest_of_line(text.rstrip(), rules.rest_of_line))
    if rules.suffix_lines:
        n = min(n, _start_of_suffix_run(text, rules.suffix_lines))
    # what the rules hold back may leave white space at the end, which the final trim can still take away
    return len(text[: max(n, 0)].rstrip())


def _start_of_suffix_run(text: str, suffix_lines: tuple[str, ...]) -> int:
    """Where the trailing lines start that could still turn out to repeat the suffix's first lines."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    lines = text.split("\n")
    for first in range(max(0, len(lines) - len(suffix_lines)), len(lines)):
        run = [s.strip() for s in lines[first:]]
        if run[:-1] == list(suffix_lines[: len(run) - 1]) and suffix_lines[len(run) - 1].startswith(run[-1]):
            return max(starts[first] - 1, 0)  # the newline before the run goes with it
    return len(text)


class Finisher:
    """Feed generated text in pieces; get back what is safe to show now. `done` once the rules decide."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.text = ""  # everything generated so far
        self.emitted = ""
        self.reason: str | None = None  # set when the rules (not the model) ended the completion
        self.settled = False

    @property
    def done(self) -> bool:
        return self.reason is not None

    def feed(self, piece: str) -> str:
        if self.settled:
            return ""
        self.text += piece
        end = find_end(self.text, self.rules)
        if end is not None:
            self.reason = end.reason
            return self._settle(self.text[: end.index])
        return self._release(stable_length(self.text, self.rules))

    def finish(self) -> str:
        """The model stopped by itself (end of text or token limit): settle what is held back."""
        return "" if self.settled else self._settle(self.text)

    @property
    def final(self) -> str:
        return self.emitted

    def _release(self, n: int) -> str:
        out = self.text[len(self.emitted) : n] if n > len(self.emitted) else ""
        self.emitted += out
        return out

    def _settle(self, text: str) -> str:
        final = clean_end(text, self.rules)
        if not final.startswith(
            self.emitted
        ):  # never reached (stable_length is conservative): keep what was shown
            final = self.emitted
        out = final[len(self.emitted) :]
        self.emitted, self.settled = final, True
        return out
