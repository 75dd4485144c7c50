"""The fill-in-the-middle prompt StarCoder2 was trained on, as pure functions.

The repository format: `<repo_name>{repo}<file_sep>{path}\\n{code}...<file_sep><fim_prefix>{path}\\n{prefix}
<fim_suffix>{suffix}<fim_middle>`; without metadata the repo name and paths are dropped; with no path and
no context files it is the plain `<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>`. Control tokens
are `Piece(control=True)` and are added by id; everything else is tokenized as plain text.

The prompt is laid out so its start stays stable while the user edits near the cursor (a warm server
then reuses the cached start): context files first, in the given order, with a budget that moves in
coarse steps; the prefix trimmed from the top at line numbers that are multiples of `SNAP_LINES`;
the suffix, which follows the prefix and so is recomputed after any edit above the cursor, kept short.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import InputError
from .tokenizer import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME

SNAP_LINES = 32  # the prefix's first kept line is a multiple of this (stable prompt start under edits)
CONTEXT_QUANTUM = 256  # context files get a budget that moves in steps of this many tokens
SUFFIX_SHARE = 8  # the suffix gets at most 1/SUFFIX_SHARE of the room, even when the whole file fits:
# it follows the prefix, so a warm server recomputes all of it after any edit above the cursor


# ------------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Piece:
    text: str
    control: bool = False


@dataclass(frozen=True)
class Document:
    """A file given as context: its path relative to the repository root, and its text (a whole file or a
    chunk of one). `origin` says why it is there (--context, import, similar: lines ...); not in the prompt."""

    path: str
    text: str
    origin: str = ""


@dataclass(frozen=True)
class FimTask:
    prefix: str
    suffix: str
    path: str | None = None  # the completed file's path, relative to the repository root
    repo: str | None = None
    context: tuple[Document, ...] = ()
    metadata: bool = True

    @property
    def repository_format(self) -> bool:
        return self.path is not None or bool(self.context)

    @property
    def empty(self) -> bool:
        return not (self.prefix or self.suffix or self.context or self.path)


def _control(name: str) -> Piece:
    return Piece(name, control=True)


def layout(task: FimTask) -> list[Piece]:
    """The untrimmed prompt."""
    if not task.repository_format:
        return [
            _control(FIM_PREFIX),
            Piece(task.prefix),
            _control(FIM_SUFFIX),
            Piece(task.suffix),
            _control(FIM_MIDDLE),
        ]
    pieces: list[Piece] = []
    if task.metadata and task.repo:
        pieces += [_control(REPO_NAME), Piece(task.repo)]
    for doc in task.context:
        pieces += [_control(FILE_SEP), Piece(f"{doc.path}\n{doc.text}" if task.metadata else doc.text)]
    head = f"{task.path}\n" if task.metadata and task.path is not None else ""
    pieces += [_control(FILE_SEP), _control(FIM_PREFIX), Piece(head + task.prefix)]
    pieces += [_control(FIM_SUFFIX), Piece(task.suffix), _control(FIM_MIDDLE)]
    return pieces


def render(pieces: Sequence[Piece]) -> str:
    """The prompt as text, control tokens spelled out (for --show-prompt)."""
    return "".join(p.text for p in pieces)


# ------------------------------------------------------------------------------------------------ budget


class Encoder(Protocol):
    special: dict[str, int]

    def encode(self, text: str) -> list[int]: ...

    def encode_lines(self, lines: Sequence[str]) -> list[int]: ...

    def bytes_of(self, token_id: int) -> bytes: ...


@dataclass(frozen=True)
class Truncation:
    """Tokens dropped to fit the budget, per part."""

    prefix: int = 0
    suffix: int = 0
    context: int = 0

    def any(self) -> bool:
        return bool(self.prefix or self.suffix or self.context)


@dataclass(frozen=True)
class Prompt:
    pieces: tuple[Piece, ...]
    ids: tuple[int, ...]
    task: FimTask  # what was kept, after trimming
    truncated: Truncation = field(default_factory=Truncation)
    heal: bytes = b""  # the prefix's last token, taken out: the completion must start with these bytes
    context_tokens: tuple[int, ...] = ()  # what each kept context document takes, its <file_sep> included

    @property
    def text(self) -> str:
        return render(self.pieces)


def encode_pieces(pieces: Sequence[Piece], encoder: Encoder) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        ids += [encoder.special[piece.text]] if piece.control else encoder.encode(piece.text)
    return ids


def build_prompt(
    task: FimTask,
    encoder: Encoder,
    budget: int | None = None,
    max_suffix: int | None = None,
    context_room: int = 0,
) -> Prompt:
    """The prompt for `task`, trimmed so it has at most `budget` tokens: whole lines farthest from the
    cursor go first, most of the room goes to the prefix, context files fill what remains, and at least
    `context_room` tokens if they have that much (the prefix gives way to them). The suffix
    keeps at most 1/SUFFIX_SHARE of the room and at most `max_suffix` tokens, whole lines from its start,
    but always the rest of the cursor's line (its start only if it alone takes over half the room): it says
    where the line being completed ends, for the model and for the stop rules."""
    if task.empty:
        raise InputError("empty prompt: nothing before or after the cursor, no path and no context")
    ids = encode_pieces(layout(task), encoder)
    if budget is None and max_suffix is None:
        return Prompt(tuple(layout(task)), tuple(ids), task, context_tokens=context_tokens(task, encoder))
    limit = budget if budget is not None else len(ids) + CONTEXT_QUANTUM  # None: room for all but the suffix
    suffix_room = _room(task, encoder, limit) // SUFFIX_SHARE if budget is not None else len(ids)
    suffix_room = suffix_room if max_suffix is None else min(suffix_room, max_suffix)
    if len(ids) <= limit and len(encoder.encode(task.suffix)) <= suffix_room:
        return Prompt(tuple(layout(task)), tuple(ids), task, context_tokens=context_tokens(task, encoder))
    kept = _fit(task, encoder, limit, suffix_room, context_room)
    pieces = layout(kept)
    ids = encode_pieces(pieces, encoder)
    while len(ids) > limit:  # the per-line estimate was short by a few tokens: drop one more line
        kept = _shave(kept, task, limit)
        pieces = layout(kept)
        ids = encode_pieces(pieces, encoder)
    return Prompt(
        tuple(pieces),
        tuple(ids),
        kept,
        _dropped(task, kept, encoder),
        context_tokens=context_tokens(kept, encoder),
    )


def context_report(prompt: Prompt) -> list[dict[str, object]]:
    """Which files and chunks went into the prompt, why, and how many tokens each took."""
    return [
        {"path": d.path, "origin": d.origin, "tokens": n}
        for d, n in zip(prompt.task.context, prompt.context_tokens, strict=True)
    ]


def context_tokens(task: FimTask, encoder: Encoder) -> tuple[int, ...]:
    """The tokens each context document takes in the prompt (its <file_sep>, path and text)."""
    return tuple(
        1 + len(encoder.encode(f"{d.path}\n{d.text}" if task.metadata else d.text)) for d in task.context
    )


def heal(prompt: Prompt, encoder: Encoder) -> Prompt:
    """Token healing. A prefix that stops inside a word ("import o") or after a space ("return a + ") ends
    with a token the model rarely saw there: in its training text " os" and " b" are single tokens. So the
    prefix's last token leaves the prompt, and generation is held to start with its bytes (generate.py),
    free to pick " os" again. Nothing changes when the prefix is empty or its last token is not whole text."""
    index = next((i for i, p in enumerate(prompt.pieces) if p.control and p.text == FIM_PREFIX), None)
    if index is None or not prompt.task.prefix or index + 1 >= len(prompt.pieces):
        return prompt
    end = len(encode_pieces(prompt.pieces[: index + 2], encoder))  # ids up to the end of the prefix text
    last = encoder.bytes_of(prompt.ids[end - 1])
    try:
        text = last.decode("utf-8")
    except UnicodeDecodeError:
        return prompt  # the token ends inside a character: leave it
    piece = prompt.pieces[index + 1]
    if not text or not prompt.task.prefix.endswith(text):
        return prompt
    pieces = (
        *prompt.pieces[: index + 1],
        Piece(piece.text[: len(piece.text) - len(text)]),
        *prompt.pieces[index + 2 :],
    )
    ids = prompt.ids[: end - 1] + prompt.ids[end:]
    return Prompt(pieces, ids, prompt.task, prompt.truncated, last, prompt.context_tokens)


def _room(task: FimTask, encoder: Encoder, budget: int) -> int:
    """The budget less what the layout takes without prefix, suffix and context (paths, control tokens)."""
    return budget - len(
        encode_pieces(layout(FimTask("", "", task.path, task.repo, (), task.metadata)), encoder)
    )


def _fit(task: FimTask, encoder: Encoder, budget: int, suffix_room: int, context_room: int = 0) -> FimTask:
    room = _room(task, encoder, budget)
    if room < 1:
        raise InputError(f"the prompt budget of {budget} tokens cannot hold even the file's path; raise it")
    prefix_lines = task.prefix.splitlines(keepends=True) or [""]
    suffix_lines = task.suffix.splitlines(keepends=True)
    p_counts, s_counts = encoder.encode_lines(prefix_lines), encoder.encode_lines(suffix_lines)
    kept_suffix = max(_take_from_start(s_counts, suffix_room), min(1, len(suffix_lines)))
    suffix = "".join(suffix_lines[:kept_suffix])
    s_used = sum(s_counts[:kept_suffix])
    if kept_suffix == 1 and s_used > room // 2:  # the rest of the cursor's line alone is enormous: its start
        suffix, s_used = _cut_end(suffix, room // 2, encoder), room // 2
    reserve = min(context_room, sum(context_tokens(task, encoder))) if task.context else 0
    prefix, p_used = _trim_prefix(prefix_lines, p_counts, room - s_used - reserve, encoder)
    used = p_used + s_used
    context_room = room - -(-used // CONTEXT_QUANTUM) * CONTEXT_QUANTUM  # room minus `used` rounded up
    context = _fit_context(task, encoder, context_room)
    return FimTask(prefix, suffix, task.path, task.repo, context, task.metadata)


def _take_from_start(counts: Sequence[int], room: int) -> int:
    """How many leading items fit in `room`."""
    total = 0
    for i, c in enumerate(counts):
        if total + c > room:
            return i
        total += c
    return len(counts)


def _cut_end(line: str, room: int, encoder: Encoder) -> str:
    """The start of one enormous line that fits `room` tokens."""
    while line and len(encoder.encode(line)) > room:
        line = line[: len(line) - max(1, len(line) // 10)]
    return line


def _trim_prefix(lines: list[str], counts: list[int], room: int, encoder: Encoder) -> tuple[str, int]:
    """Drop lines from the top, at a multiple of SNAP_LINES where possible, to fit `room` tokens."""
    tail = [0] * (len(counts) + 1)  # tail[i] = tokens of lines[i:]
    for i in range(len(counts) - 1, -1, -1):
        tail[i] = tail[i + 1] + counts[i]
    last = len(lines) - 1  # the cursor's line is always kept, in part if need be
    for start in [*range(0, last + 1, SNAP_LINES), *range(last + 1)]:
        if tail[start] <= room:
            return "".join(lines[start:]), tail[start]
    line = lines[last]
    while line and len(encoder.encode(line)) > room:  # one enormous line: keep its end
        line = line[max(1, len(line) // 10) :]
    return line, len(encoder.encode(line))


def _fit_context(task: FimTask, encoder: Encoder, room: int) -> tuple[Document, ...]:
    kept: list[Document] = []
    for doc in task.context:
        header = 1 + len(encoder.encode(f"{doc.path}\n" if task.metadata else ""))
        lines = doc.text.splitlines(keepends=True)
        counts = encoder.encode_lines(lines)
        if header + sum(counts) <= room:
            kept.append(doc)
            room -= header + sum(counts)
            continue
        n = _take_from_start(counts, room - header) // SNAP_LINES * SNAP_LINES
        if n:
            kept.append(dataclasses.replace(doc, text="".join(lines[:n])))
        break
    return tuple(kept)


def _shave(kept: FimTask, original: FimTask, budget: int) -> FimTask:
    """Drop one more line: from the context's end, else the suffix's end, else the prefix's top."""
    if kept.context:
        last = kept.context[-1]
        lines = last.text.splitlines(keepends=True)
        context = kept.context[:-1] + (
            (dataclasses.replace(last, text="".join(lines[:-1])),) if len(lines) > 1 else ()
        )
        return FimTask(kept.prefix, kept.suffix, kept.path, kept.repo, context, kept.metadata)
    suffix_lines = kept.suffix.splitlines(keepends=True)
    if len(suffix_lines) > 1:  # the first line, the rest of the cursor's, goes only after the whole prefix
        return FimTask(kept.prefix, "".join(suffix_lines[:-1]), kept.path, kept.repo, (), kept.metadata)
    prefix_lines = kept.prefix.splitlines(keepends=True)
    if kept.prefix:
        prefix = (
            "".join(prefix_lines[1:])
            if len(prefix_lines) > 1
            else kept.prefix[max(1, len(kept.prefix) // 10) :]
        )
        return FimTask(prefix, kept.suffix, kept.path, kept.repo, (), kept.metadata)
    if not kept.suffix:
        raise InputError(f"the prompt budget of {budget} tokens is too small; raise it")
    suffix = kept.suffix[: len(kept.suffix) - max(1, len(kept.suffix) // 10)]
    return FimTask(kept.prefix, suffix, kept.path, kept.repo, (), kept.metadata)


def _dropped(task: FimTask, kept: FimTask, encoder: Encoder) -> Truncation:
    def tokens(text: str) -> int:
        return len(encoder.encode(text))

    full_context = sum(tokens(d.text) for d in task.context)
    kept_context = sum(tokens(d.text) for d in kept.context)
    return Truncation(
        prefix=tokens(task.prefix) - tokens(kept.prefix),
        suffix=tokens(task.suffix) - tokens(kept.suffix),
        context=full_context - kept_context,
    )
