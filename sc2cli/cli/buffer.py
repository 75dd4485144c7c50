"""The buffer `sc2 complete` and `sc2 fim` work on: reading it, building its request, and printing the
completion's events as text, JSON or JSON lines. Where the completion runs is the session's choice."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from .. import session
from ..completion.cursor import cursor_offset, parse_location
from ..completion.events import Done, Event, Token
from ..completion.prompt import Document, context_report
from ..completion.request import CompletionRequest
from ..completion.sampling import Sampling
from ..completion.sources import (
    BYTES_PER_TOKEN,
    decode_text,
    open_input,
    read_all,
    read_excerpt,
    read_head,
    read_stdin,
    read_text,
    relative_path,
    repository_of,
)
from ..engines.transport import StreamCut
from ..errors import InputError
from ..model.device import default_budget, probable_device_type
from ..settings import Settings, load_settings
from .options import CompletionOptions, OutputFormat
from .output import ProgressBar, note, truncation_note, write

WINDOW_TOKENS = (
    16384  # the budget the input window is sized for when none is set: the StarCoder2 models' context
)


@dataclass
class Buffer:
    """The text being completed and the cursor's offset in it; `path` is where it lives, if known. `text`
    may be an excerpt (the lines the prompt can use): `before` and `after` then hold the rest of the input,
    kept only for --insert, which prints it all."""

    text: str
    cursor: int
    path: str | None
    before: str = ""
    after: str = ""


def complete_at(location: str, byte_col: bool, path: str | None, opts: CompletionOptions) -> None:
    """`sc2 complete`: the buffer is a file (or stdin) and the cursor FILE:LINE[:COL]. Only the lines the
    prompt can use are read into memory (sources.read_excerpt), except with --insert, which prints the
    whole input and so holds it (at most sources.MAX_INPUT_BYTES)."""
    where = parse_location("-" + location[1:] if location.startswith("\0") else location)
    settings = _settings(opts)
    stdin = where.path == "-"
    file_path = path or (None if stdin else where.path)
    name = "standard input" if stdin else where.path
    with nullcontext(sys.stdin.buffer) if stdin else open_input(where.path) as stream:
        data = read_all(stream, name) if opts.insert else None
        source = BytesIO(data) if data is not None else stream
        excerpt = read_excerpt(source, where.line, window_bytes(settings), name, drain=stdin)
    cursor = cursor_offset(
        excerpt.text, where.line - excerpt.first_line + 1, where.column,
        byte_column=byte_col, name=file_path or "stdin", first_line=excerpt.first_line,
    )  # fmt: skip
    buffer = Buffer(excerpt.text, cursor, file_path)
    if data is not None:
        buffer.before = decode_text(data[: excerpt.start], name)
        buffer.after = decode_text(data[excerpt.end :], name, excerpt.end)
    complete_buffer(buffer, opts, settings)


def _settings(opts: CompletionOptions) -> Settings:
    """The settings in force, once the options no setting checks are checked: typer reads "nan" and "inf"
    as floats, which no sampling can use."""
    for flag, value in (("--temperature", opts.temperature), ("--top-p", opts.top_p)):
        if value is not None and not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")
    return load_settings(opts.settings_overrides())


def window_bytes(settings: Settings) -> int:
    """How far around the cursor the prompt can reach, in bytes of the input: its budget (the device's
    default when none is set, as the session picks it) times the most bytes a token holds. A warm server
    started with a larger budget than this process would pick sees the window this one reads."""
    budget = settings.prompt_budget or default_budget(probable_device_type(settings.device))
    return budget * BYTES_PER_TOKEN


def fill_in(prefix: str, suffix: str, path: str | None, opts: CompletionOptions) -> None:
    """`sc2 fim`: the buffer is a prefix and a suffix, each text, @PATH or - (stdin); like a file's, only
    the lines around the cursor that the prompt can use go on (the tail of the prefix, the head of the
    suffix)."""
    if prefix == "-" and suffix == "-":
        raise InputError("only one of --prefix and --suffix can read stdin (-)")
    settings = _settings(opts)
    before, after = _text_option(prefix), _text_option(suffix)
    line = before.count("\n") + 1
    data = (before + after).encode("utf-8")
    excerpt = read_excerpt(BytesIO(data), line, window_bytes(settings), "the prefix and suffix")
    cursor = len(before) - len(data[: excerpt.start].decode("utf-8"))
    complete_buffer(Buffer(excerpt.text, cursor, path), opts, settings)


def _text_option(value: str) -> str:
    if value == "-":
        return read_stdin()
    if value.startswith("@") and len(value) > 1:
        return read_text(value[1:])
    return value


def complete_buffer(buffer: Buffer, opts: CompletionOptions, settings: Settings) -> None:
    """Shared by complete and fim: request, where it runs, output."""
    request = build_request(buffer, opts, settings)
    if opts.show_prompt:
        _show_prompt(request, settings, opts)
        return
    if settings.engine and not opts.server:
        engine = session.open_remote(
            settings, opts.revision, token=engine_token(opts.engine_token), bar=ProgressBar,
            note=lambda message: note(message, opts.verbose),
        )  # fmt: skip
        print_events(engine.stream(request), opts.output, buffer if opts.insert else None, opts.verbose)
        return
    endpoint = (
        None
        if opts.no_server
        else session.find_server(settings, opts.revision, opts.server, lambda m: note(m, opts.verbose))
    )
    if endpoint is not None:
        note(f"using the server at {endpoint}", opts.verbose)
        events = session.stream_through(endpoint, request, opts.client_id)
    else:
        engine = session.open_engine(
            settings, opts.revision, bar=ProgressBar, note=lambda message: note(message, opts.verbose)
        )
        events = engine.stream(request)
    print_events(events, opts.output, buffer if opts.insert else None, opts.verbose)


def engine_token(given: str | None) -> str | None:
    """The engine's bearer token; a warning when it came from the command line, where `ps` shows it."""
    if given and os.environ.get("SC2_ENGINE_TOKEN") != given:
        note(
            "warning: --engine-token on the command line is visible to other users; use SC2_ENGINE_TOKEN",
            True,
        )
    return given or None


def build_request(buffer: Buffer, opts: CompletionOptions, settings: Settings) -> CompletionRequest:
    """The request for the buffer: "\\n" newlines (the file's own are restored in the output), the
    repository's name and the file's path in it, context files, sampling and budget."""
    eol = "\r\n" if "\r\n" in buffer.text else "\n"
    prefix = buffer.text[: buffer.cursor].replace("\r\n", "\n")
    suffix = buffer.text[buffer.cursor :].replace("\r\n", "\n")
    contexts = opts.context or []
    anchor = buffer.path or (str(Path.cwd() / "_") if contexts else None)
    repo, root = repository_of(anchor) if anchor else (None, Path.cwd())
    given = tuple(
        Document(
            relative_path(c, root), read_head(c, window_bytes(settings)).replace("\r\n", "\n"), "--context"
        )
        for c in contexts
    )
    documents = given + _auto_context(buffer.path, prefix, suffix, given, opts, settings)
    return CompletionRequest(
        prefix=prefix,
        suffix=suffix,
        path=relative_path(buffer.path, root) if buffer.path else None,
        repo=opts.repo_name or repo,
        context=documents,
        context_share=opts.context_budget if documents else 0.0,
        metadata=not opts.no_metadata,
        max_tokens=settings.max_tokens,
        sampling=Sampling(opts.temperature, opts.top_k, opts.top_p, opts.seed),
        stop=tuple(opts.stop or ()),
        raw=opts.raw,
        heal=not opts.no_heal,
        speculate=not opts.no_speculate,
        budget=settings.prompt_budget,
        eol=eol,
    )


def _auto_context(
    path: str | None,
    prefix: str,
    suffix: str,
    given: tuple[Document, ...],
    opts: CompletionOptions,
    settings: Settings,
) -> tuple[Document, ...]:
    """Imported files and similar chunks of the file's git repository, for the context's share of the budget."""
    if path is None or opts.no_auto_context or not opts.context_budget:
        return ()
    from ..repo.context import choose_context

    budget = settings.prompt_budget or default_budget(probable_device_type(settings.device))
    budget = session.context_reach(settings, opts.revision, budget)
    chosen = choose_context(
        Path(path), prefix, suffix, budget, settings.max_tokens, opts.context_budget, given
    )
    if chosen.root is not None:
        pending = f", {chosen.pending_files} left for the next completions" if chosen.pending_files else ""
        note(f"auto context: {len(chosen.documents)} documents; index checked in {chosen.index_s * 1000:.0f} ms "
             f"({chosen.indexed_files} files indexed anew{pending})", opts.verbose)  # fmt: skip
    return chosen.documents


def _show_prompt(request: CompletionRequest, settings: Settings, opts: CompletionOptions) -> None:
    prompt = session.prompt_only(request, settings, opts.revision, ProgressBar)
    write(prompt.text)
    healed = f"; the completion must start with {prompt.heal.decode('utf-8', 'replace')!r} (token healing)"
    note(
        f"{len(prompt.ids)} prompt tokens{truncation_note(prompt.truncated)}{healed if prompt.heal else ''}",
        opts.verbose,
    )
    for item in context_report(prompt):
        note(f"context {item['path']} ({item['origin'] or 'given'}): {item['tokens']} tokens", opts.verbose)


def print_events(
    events: Iterator[Event],
    output: OutputFormat,
    insert: Buffer | None,
    verbose: bool,
) -> None:
    """Stream text as it comes (text), or one object at the end (json), or every event (jsonl)."""
    done, cut = None, None
    record: dict = {}
    for event in _until_cut(events):
        if isinstance(event, StreamCut):  # what arrived is the completion; the error comes after it
            cut, event = event, event.partial
        if isinstance(event, Done):
            done, record = event, event.to_json()
            if insert is not None:
                record["buffer"] = (
                    insert.before + insert.text[: insert.cursor] + done.text + insert.text[insert.cursor :]
                    + insert.after
                )  # fmt: skip
        else:
            record = event.to_json()
        if output is OutputFormat.jsonl:
            write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        elif output is OutputFormat.text and isinstance(event, Token) and insert is None:
            write(event.text)
    assert done is not None, "a completion's events end with Done"
    if output is OutputFormat.json:
        write(
            json.dumps({k: v for k, v in record.items() if k != "type"}, ensure_ascii=False, allow_nan=False)
            + "\n"
        )
    elif output is OutputFormat.text:
        if insert is not None:
            write(record["buffer"])
        elif sys.stdout.isatty():
            write("\n")
    usage, t = done.usage, done.timings
    note(
        f"{usage.completion_tokens} tokens ({done.stop_reason}); prompt {usage.prompt_tokens} tokens "
        f"({usage.cached_tokens} cached) in {t.prefill_s:.2f}s, {t.decode_tokens_per_s:.1f} tok/s"
        f"{truncation_note(done.truncated)}",
        verbose,
    )
    if cut is not None:
        raise cut


def _until_cut(events: Iterator[Event]) -> Iterator[Event | StreamCut]:
    """The events, and in place of the `Done` of a stream an engine broke, its StreamCut."""
    try:
        yield from events
    except StreamCut as cut:
        if cut.partial is None:
            raise
        yield cut
