"""The `sc2` command line: the only module that prints.

Commands stay thin and hand off to library functions, imported inside the command so that `sc2 --help`
and other commands that run no model never import torch. Stdout carries only the product (the
completion); everything else goes to stderr, and every error is one line.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from . import __version__
from .errors import Sc2Error

app = typer.Typer(
    name="sc2",
    help="Local code completion with the StarCoder2 models.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's renderer alone costs ~0.2 s of start-up (sc2 --help < 0.3 s)
)

_state = {"debug": bool(os.environ.get("SC2_DEBUG"))}


def _show_version(value: bool) -> None:
    if value:
        print(f"sc2 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Local code completion with the StarCoder2 models, in pure PyTorch."""
    _state["debug"] = _state["debug"] or debug


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line on stderr and exit."""
    print(f"sc2: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _click_error_types() -> tuple[type[BaseException], ...]:
    """Typer vendors click in recent versions and uses the real one in older: accept both."""
    types: list[type[BaseException]] = []
    try:
        from typer._click.exceptions import ClickException as vendored

        types.append(vendored)
    except ImportError:
        pass
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


STDIN_LOCATION = re.compile(r"-:\d+(:\d+)?")


def _protect_stdin_locations(argv: list[str]) -> list[str]:
    """`-:42:7` (the buffer on stdin) looks like an option to click: hand it over as `<stdin>:42:7`
    preceded by a NUL, which no shell argument can contain, so it can't be mistaken for a file name."""
    return ["\0" + arg[1:] if STDIN_LOCATION.fullmatch(arg) else arg for arg in argv]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn every failure into one line on stderr."""
    command = typer.main.get_command(app)
    argv = _protect_stdin_locations(sys.argv[1:] if argv is None else argv)
    try:
        code = command.main(args=argv, prog_name="sc2", standalone_mode=False)
    except Sc2Error as e:
        if _state["debug"]:
            raise
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        _silence_stdout()
        raise SystemExit(141) from None
    except _click_error_types() as e:
        message = e.format_message()  # type: ignore[attr-defined]
        if not message:  # `sc2` alone: the help was shown
            raise SystemExit(getattr(e, "exit_code", 2)) from None
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        fail(f"{message}{hint}", getattr(e, "exit_code", 2))
    except (typer.Abort, EOFError):
        fail("aborted", 1)
    except Exception as e:
        if _state["debug"]:
            raise
        fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", 1)
    raise SystemExit(code if isinstance(code, int) else 0)


def _silence_stdout() -> None:
    """After the reader of our stdout went away, point it at /dev/null so the interpreter's final flush
    does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------------
# Completion: complete, fim
# ---------------------------------------------------------------------------------------------------------

_MODEL, _GEN, _PROMPT, _OUT = "Model", "Generation", "Prompt", "Output"


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    jsonl = "jsonl"


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Checkpoint folder, hub repo id, or alias (tiny, 3b, 7b, 15b).",
        rich_help_panel=_MODEL,
    ),
]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub branch, tag or commit.", rich_help_panel=_MODEL)]
OfflineOpt = Annotated[
    bool | None, typer.Option("--offline", help="Use the local cache only.", rich_help_panel=_MODEL)
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=_MODEL)
]
DtypeOpt = Annotated[str | None, typer.Option(help="auto, bf16, fp16 or fp32.", rich_help_panel=_MODEL)]
QuantizeOpt = Annotated[
    str | None,
    typer.Option(
        help="none, or int8: int8 weights, about 2x faster decode on CPUs (embeddings and norms kept).",
        rich_help_panel=_MODEL,
    ),
]
AttnOpt = Annotated[
    str | None, typer.Option(help="Attention: auto, sdpa, flash or eager.", rich_help_panel=_MODEL)
]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Most tokens to generate.", rich_help_panel=_GEN)]
TemperatureOpt = Annotated[float, typer.Option(help="0 is greedy.", rich_help_panel=_GEN)]
TopPOpt = Annotated[float | None, typer.Option(help="Nucleus sampling, in (0, 1].", rich_help_panel=_GEN)]
TopKOpt = Annotated[
    int | None, typer.Option(help="Sample among the k most likely tokens.", rich_help_panel=_GEN)
]
SeedOpt = Annotated[int | None, typer.Option(help="Makes sampling reproducible.", rich_help_panel=_GEN)]
StopOpt = Annotated[
    list[str] | None, typer.Option("--stop", help="Stop before this text (repeatable).", rich_help_panel=_GEN)
]
RawOpt = Annotated[
    bool,
    typer.Option("--raw", help="No post-processing: stop only at stop tokens/strings.", rich_help_panel=_GEN),
]
NoHealOpt = Annotated[
    bool,
    typer.Option(
        "--no-heal",
        help="Keep the prefix's last token in the prompt (no token healing): what the model sees is "
        "exactly the text before the cursor.",
        rich_help_panel=_GEN,
    ),
]
ContextOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--context",
        help="Another file of the repository to show the model (repeatable).",
        rich_help_panel=_PROMPT,
    ),
]
RepoNameOpt = Annotated[
    str | None,
    typer.Option(
        help="Repository name in the prompt (default: the git root's folder name).", rich_help_panel=_PROMPT
    ),
]
NoMetadataOpt = Annotated[
    bool,
    typer.Option(
        "--no-metadata",
        help="Leave the repository name and file paths out of the prompt.",
        rich_help_panel=_PROMPT,
    ),
]
BudgetOpt = Annotated[
    int | None,
    typer.Option(
        help="Most tokens of prompt + completion (default: 2048 on CPU, 8192 on CUDA).",
        rich_help_panel=_PROMPT,
    ),
]
ShowPromptOpt = Annotated[
    bool,
    typer.Option(
        "--show-prompt", help="Print the exact prompt and exit (loads no weights).", rich_help_panel=_PROMPT
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        "-f",
        help="text streams the completion; json/jsonl add tokens, logprobs, timings.",
        rich_help_panel=_OUT,
    ),
]
InsertOpt = Annotated[
    bool,
    typer.Option(
        "--insert", help="Print the whole buffer with the completion inserted.", rich_help_panel=_OUT
    ),
]
NoServerOpt = Annotated[
    bool,
    typer.Option(
        "--no-server", help="Run the model in this process even if a server is warm.", rich_help_panel=_MODEL
    ),
]
ServerOpt = Annotated[
    str | None,
    typer.Option(help="Use this server: http://HOST:PORT or unix:///path.sock.", rich_help_panel=_MODEL),
]
ClientIdOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SC2_CLIENT_ID",
        help="Editor session id: the server cancels its older request.",
        rich_help_panel=_MODEL,
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Timings and notes on stderr even when it is not a terminal.",
        rich_help_panel=_OUT,
    ),
]


def _completion_options(
    model: ModelOpt = None, revision: RevisionOpt = None, offline: OfflineOpt = None, device: DeviceOpt = None,
    dtype: DtypeOpt = None, attn: AttnOpt = None, quantize: QuantizeOpt = None, max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = None, top_k: TopKOpt = None, seed: SeedOpt = None, stop: StopOpt = None, raw: RawOpt = False,
    no_heal: NoHealOpt = False,
    context: ContextOpt = None, repo_name: RepoNameOpt = None, no_metadata: NoMetadataOpt = False,
    budget: BudgetOpt = None, show_prompt: ShowPromptOpt = False, output: FormatOpt = OutputFormat.text,
    insert: InsertOpt = False, verbose: VerboseOpt = False, no_server: NoServerOpt = False,
    server: ServerOpt = None, client_id: ClientIdOpt = None,
) -> None:  # fmt: skip
    """The options complete and fim share (only the signature is used; see `_with_completion_options`)."""


def _with_completion_options(command):
    """Give `command` the shared options too: Typer reads the merged signature, and the command receives
    them as one dict, `opts`."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
    shared = list(inspect.signature(_completion_options, eval_str=True).parameters.values())

    @functools.wraps(command)
    def wrapper(**values):
        return command(**{p.name: values.pop(p.name) for p in own}, opts=values)

    wrapper.__signature__ = inspect.Signature(own + shared)
    return wrapper


@dataclass
class _Buffer:
    """The text being completed and the cursor's offset in it; `path` is where it lives, if known."""

    text: str
    cursor: int
    path: str | None


@app.command(
    short_help="Complete the code at FILE:LINE[:COL].",
    epilog="Examples:  sc2 complete app.py:42  ·  sc2 complete app.py:42:7 -m 7b  ·  "
    "cat app.py | sc2 complete -:42:7 --path app.py --byte-col",
)
@_with_completion_options
def complete(
    location: Annotated[str, typer.Argument(metavar="FILE:LINE[:COL]", help="File (- for stdin) and 1-based cursor.")],
    byte_col: Annotated[bool, typer.Option("--byte-col", help="COL counts UTF-8 bytes (as Vim and Neovim report it).")] = False,
    path: Annotated[str | None, typer.Option(help="The file's path when it comes from stdin.", rich_help_panel=_PROMPT)] = None,
    opts: dict | None = None,
) -> None:  # fmt: skip
    """Complete the code at a cursor in a file: prints exactly the text to insert."""
    from .prompt import cursor_offset, parse_location
    from .sources import read_stdin, read_text

    where = parse_location("-" + location[1:] if location.startswith("\0") else location)
    text = read_stdin() if where.path == "-" else read_text(where.path)
    file_path = path or (None if where.path == "-" else where.path)
    cursor = cursor_offset(text, where.line, where.column, byte_column=byte_col, name=file_path or "stdin")
    _complete_buffer(_Buffer(text, cursor, file_path), opts)


@app.command(
    short_help="Fill in between a prefix and a suffix.",
    epilog="Examples:  sc2 fim --prefix 'def add(a, b):' --suffix ''  ·  sc2 fim --prefix @head.py --suffix - < tail.py",
)
@_with_completion_options
def fim(
    prefix: Annotated[str, typer.Option(help="Text before the cursor; @PATH reads a file, - reads stdin.")] = "",
    suffix: Annotated[str, typer.Option(help="Text after the cursor; @PATH reads a file, - reads stdin.")] = "",
    path: Annotated[str | None, typer.Option(help="Path of the file being completed (puts it in the repository format).", rich_help_panel=_PROMPT)] = None,
    opts: dict | None = None,
) -> None:  # fmt: skip
    """Fill in the middle between a prefix and a suffix."""
    if prefix == "-" and suffix == "-":
        raise _input_error("only one of --prefix and --suffix can read stdin (-)")
    before, after = _text_option(prefix, "--prefix"), _text_option(suffix, "--suffix")
    _complete_buffer(_Buffer(before + after, len(before), path), opts)


def _input_error(message: str):
    from .errors import InputError

    return InputError(message)


def _text_option(value: str, name: str) -> str:
    from .sources import read_stdin, read_text

    if value == "-":
        return read_stdin()
    if value.startswith("@") and len(value) > 1:
        return read_text(value[1:])
    return value


def _complete_buffer(buffer: _Buffer, opts: dict) -> None:
    """Shared by complete and fim: settings, prompt, model, generation, output."""
    from .settings import load_settings

    settings = load_settings(
        {"model": opts["model"], "device": opts["device"], "dtype": opts["dtype"], "attn": opts["attn"],
         "max_tokens": opts["max_tokens"], "prompt_budget": opts["budget"], "offline": opts["offline"],
         "quantize": opts["quantize"]}
    )  # fmt: skip
    request = _request(buffer, opts, settings)
    if opts["show_prompt"]:
        _show_prompt(request, _model_folder(settings, opts["revision"]), settings, opts["verbose"])
        return
    endpoint = None if opts["no_server"] else _server_for(settings, opts)
    if endpoint is not None:
        from .client import stream_completion

        _note(f"using the server at {endpoint}", opts["verbose"])
        events = stream_completion(endpoint, request.to_json(), opts["client_id"])
    else:
        events = _load_engine(_model_folder(settings, opts["revision"]), settings, opts["verbose"]).stream(
            request
        )
    _print_events(events, opts["output"], buffer if opts["insert"] else None, opts["verbose"])


def _server_for(settings, opts: dict):
    """A warm server for this model (given by --server, or found in the runtime folder), unless the options
    ask for a device, dtype or attention backend it does not run with."""
    from .client import Endpoint, discover, model_key

    if opts["server"]:
        return Endpoint.from_url(opts["server"], os.environ.get("SC2_SERVER_TOKEN"))
    found = discover(model_key(settings.model, opts["revision"]))
    if found is None:
        return None
    endpoint, info = found
    wanted = {"device": settings.device, "dtype": settings.dtype, "attn": settings.attn}
    for key, value in wanted.items():
        if value != "auto" and not str(info.get(key, "")).startswith(_canonical(key, value)):
            return None
    return endpoint


def _canonical(key: str, value: str) -> str:
    if key == "dtype":
        return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(value, value)
    return value


def _request(buffer: _Buffer, opts: dict, settings):
    from .prompt import Document
    from .request import CompletionRequest, Sampling
    from .sources import read_text, relative_path, repository_of

    eol = "\r\n" if "\r\n" in buffer.text else "\n"
    prefix = buffer.text[: buffer.cursor].replace("\r\n", "\n")
    suffix = buffer.text[buffer.cursor :].replace("\r\n", "\n")
    contexts = opts["context"] or []
    anchor = buffer.path or (str(Path.cwd() / "_") if contexts else None)
    repo, root = repository_of(anchor) if anchor else (None, Path.cwd())
    return CompletionRequest(
        prefix=prefix,
        suffix=suffix,
        path=relative_path(buffer.path, root) if buffer.path else None,
        repo=opts["repo_name"] or repo,
        context=tuple(Document(relative_path(c, root), read_text(c).replace("\r\n", "\n")) for c in contexts),
        metadata=not opts["no_metadata"],
        max_tokens=settings.max_tokens,
        sampling=Sampling(opts["temperature"], opts["top_k"], opts["top_p"], opts["seed"]),
        stop=tuple(opts["stop"] or ()),
        raw=opts["raw"],
        heal=not opts["no_heal"],
        budget=settings.prompt_budget,
        eol=eol,
    )


def _model_folder(settings, revision: str | None) -> Path:
    """The checkpoint folder, downloaded if need be, checked to hold a StarCoder2 config."""
    from .config import ModelConfig
    from .hub import resolve_model

    bar = _ProgressBar(f"fetching {settings.model}")
    with bar as progress:
        folder = resolve_model(
            settings.model, revision=revision, offline=settings.offline, progress=progress, notice=bar.notice
        )
    ModelConfig.from_file(folder / "config.json")
    return folder


def _show_prompt(request, folder: Path, settings, verbose: bool) -> None:
    from .config import ModelConfig
    from .device import default_budget, probable_device_type
    from .request import prompt_for
    from .tokenizer import Tokenizer

    config = ModelConfig.from_file(folder / "config.json")
    budget = default_budget(probable_device_type(settings.device))
    prompt = prompt_for(request, Tokenizer.from_folder(folder), budget, config)
    _write(prompt.text)
    healed = f"; the completion must start with {prompt.heal.decode('utf-8', 'replace')!r} (token healing)"
    _note(
        f"{len(prompt.ids)} prompt tokens{_truncation_note(prompt.truncated)}{healed if prompt.heal else ''}",
        verbose,
    )


def _load_engine(folder: Path, settings, verbose: bool, cache_slots: int = 0):
    import time

    from .completion import Engine
    from .device import default_budget
    from .tokenizer import Tokenizer
    from .weights import load_checkpoint

    tokenizer = Tokenizer.from_folder(folder)
    started = time.perf_counter()
    with _ProgressBar(f"loading {settings.model}") as progress:
        model = load_checkpoint(
            folder, device=settings.device, dtype=settings.dtype, attn=settings.attn, quantize=settings.quantize,
            progress=progress,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    _note(
        f"loaded {settings.model} ({model.dtype}, {model.attn_backend}, {model.device}) in {seconds:.1f}s",
        verbose,
    )
    budget = default_budget(model.device.type)
    return Engine(
        model,
        tokenizer,
        name=settings.model,
        default_budget=budget,
        load_seconds=seconds,
        cache_slots=cache_slots,
    )


def _print_events(events, output: OutputFormat, insert: _Buffer | None, verbose: bool) -> None:
    """Stream text as it comes (text), or one object at the end (json), or every event (jsonl)."""
    import json

    done: dict = {}
    for event in events:
        if event["type"] == "done":
            done = {k: v for k, v in event.items() if k != "type"}
            if insert is not None:
                done["buffer"] = insert.text[: insert.cursor] + done["text"] + insert.text[insert.cursor :]
            event = {"type": "done", **done}
        if output is OutputFormat.jsonl:
            _write(json.dumps(event, ensure_ascii=False) + "\n")
        elif output is OutputFormat.text and event["type"] == "token" and insert is None:
            _write(event["text"])
    if output is OutputFormat.json:
        _write(json.dumps(done, ensure_ascii=False) + "\n")
    elif output is OutputFormat.text:
        if insert is not None:
            _write(done["buffer"])
        elif sys.stdout.isatty():
            _write("\n")
    t = done["timings"]
    _note(
        f"{done['completion_tokens']} tokens ({done['stop_reason']}); prompt {done['prompt_tokens']} tokens "
        f"({done['cached_tokens']} cached) in {t['prefill_s']:.2f}s, {t['decode_tokens_per_s']:.1f} tok/s"
        f"{_truncation_note_dict(done['truncated'])}",
        verbose,
    )


def _truncation_note(truncated) -> str:
    from dataclasses import asdict

    return _truncation_note_dict(asdict(truncated))


def _truncation_note_dict(truncated: dict) -> str:
    parts = [f"{n} {part}" for part, n in truncated.items() if n]
    return f"; trimmed to fit the budget, dropping tokens: {', '.join(parts)}" if parts else ""


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _note(message: str, verbose: bool) -> None:
    """Progress and timings: stderr, and only to a terminal unless --verbose."""
    if verbose or sys.stderr.isatty():
        print(f"sc2: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Models and settings: download, models, rm, config
# ---------------------------------------------------------------------------------------------------------


def _quiet_hub_logs() -> None:
    """huggingface_hub logs retries and hints as warnings that would tear through the progress bar; the bar and
    our one-line errors say what matters. HF_HUB_VERBOSITY, if set, still wins; --debug keeps everything."""
    if _state["debug"] or os.environ.get("HF_HUB_VERBOSITY"):
        return
    os.environ["HF_HUB_VERBOSITY"] = "error"  # read when huggingface_hub is imported
    if "huggingface_hub.utils.logging" in sys.modules:  # already imported: set its logger directly
        import logging

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


class _ProgressBar:
    """A progress bar on stderr for downloads and loading (size, speed, time left). `with _ProgressBar(label) as
    progress` gives the `progress(done, total)` callback that the hub and the weight loader take, or None when
    stderr is not a terminal, so logs and pipes stay clean. The bar appears once there are bytes to move."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar = None
        self.task = None

    def __enter__(self):
        _quiet_hub_logs()
        return self.update if sys.stderr.isatty() else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self._start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def _start(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        bar = Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True))
        bar.start()
        return bar

    def notice(self, message: str) -> None:
        """One line from the hub while it works (a file fetched again, a wait for another download): above the
        bar when there is one, else on stderr."""
        if self.bar is not None:
            self.bar.console.print(f"sc2: {message}", markup=False, highlight=False, soft_wrap=True)
        else:
            print(f"sc2: {message}", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command(short_help="Fetch a model into the cache.", rich_help_panel="Models and settings")
def download(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A hub repo id (owner/name) or 3b, 7b, 15b. Default: the configured model.",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[str | None, typer.Option("--revision", "-r", help="A branch, tag or commit.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch every file again, even if cached.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the checksum of every file; fetch again any that differ.")
    ] = False,
) -> None:
    """Fetch a model into the Hugging Face cache, once; after that sc2 works offline.

    Prints the model's folder. Interrupted (Ctrl-C), the same command later continues where it stopped.
    Examples: sc2 download 3b, sc2 download bigcode/starcoder2-7b -r main
    """
    from .hub import download as fetch
    from .hub import download_command
    from .settings import load_settings

    name = model or load_settings().model
    bar = _ProgressBar(f"fetching {name}")
    try:
        with bar as progress:
            folder = fetch(
                name, revision=revision, force=force, verify=verify, progress=progress, notice=bar.notice
            )
    except KeyboardInterrupt:
        start = "\r" if sys.stderr.isatty() else ""  # over the terminal's ^C
        again = download_command(name, revision)
        print(f"{start}sc2: download interrupted; run `{again}` to resume it", file=sys.stderr)
        raise typer.Exit(130) from None
    print(f"sc2: {name} is ready (commit {folder.name[:12]})", file=sys.stderr)
    print(folder)


@app.command("models", short_help="List the cached StarCoder2 models.", rich_help_panel="Models and settings")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, for scripts.")] = False,
) -> None:
    """List the StarCoder2 models in the Hugging Face cache: repo, revision, size on disk, folder."""
    import json

    from .hub import cached_models, hub_cache

    found = cached_models()
    if as_json:
        keys = ("repo_id", "revision", "commit", "refs", "size", "path", "complete")
        print(json.dumps([{k: _jsonable(getattr(m, k)) for k in keys} for m in found], indent=2))
    elif not found:
        print(f"sc2: no StarCoder2 model in {hub_cache()}; fetch one with `sc2 download 3b`", file=sys.stderr)
    else:
        _print_models_table(found)


def _jsonable(value: object) -> object:
    if hasattr(value, "__fspath__"):
        return os.fspath(value)
    return list(value) if isinstance(value, tuple) else value


def _print_models_table(models: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from .hub import format_bytes

    table = Table(box=None, pad_edge=False)
    for column in ("MODEL", "REVISION", "SIZE", "PATH"):
        table.add_column(column, justify="right" if column == "SIZE" else "left", no_wrap=True)
    for m in models:
        revision = m.revision if m.complete else f"{m.revision} (incomplete)"
        table.add_row(m.repo_id, revision, format_bytes(m.size), str(m.path))
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)


@app.command("rm", short_help="Delete a cached model.", rich_help_panel="Models and settings")
def remove(
    model: Annotated[str, typer.Argument(help="A cached hub repo id (owner/name) or 3b, 7b, 15b.")],
    revision: Annotated[
        str | None, typer.Option("--revision", "-r", help="Only this branch, tag or commit. Default: all.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model from the Hugging Face cache, after confirmation."""
    from .hub import find_cached, format_bytes, remove_model

    doomed = find_cached(model, revision)
    if not yes and not _confirm_removal(doomed):
        print("sc2: nothing deleted", file=sys.stderr)
        raise typer.Exit(1)
    removed, freed = remove_model(model, revision)
    for m in removed:
        print(f"sc2: deleted {m.repo_id} ({m.revision})", file=sys.stderr)
    print(f"sc2: freed {format_bytes(freed)}", file=sys.stderr)


def _confirm_removal(doomed: list) -> bool:
    from .errors import InputError
    from .hub import format_bytes

    if not sys.stdin.isatty():
        raise InputError("sc2 rm asks before deleting, but stdin is not a terminal; pass --yes to delete")
    for m in doomed:
        print(f"  {m.repo_id}  {m.revision}  {format_bytes(m.size)}  {m.path}", file=sys.stderr)
    return typer.confirm("Delete from the cache?", default=False, err=True)


config_app = typer.Typer(
    name="config",
    help="Show or change the settings file: model, device, dtype, attn, quantize, max_tokens, prompt_budget, offline.",
    short_help="Show or change the settings.",
    no_args_is_help=True,
)
app.add_typer(config_app, rich_help_panel="Models and settings")


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object, for scripts.")] = False,
) -> None:
    """The settings in force and where each comes from: option, environment (SC2_*), file or default."""
    import dataclasses
    import json

    from .settings import resolve_settings

    settings, sources = resolve_settings()
    values = dataclasses.asdict(settings)
    if as_json:
        print(json.dumps(values, indent=2))
        return
    for key, value in values.items():
        shown = "auto" if value is None else json.dumps(value) if isinstance(value, bool) else value
        source = f"SC2_{key.upper()}" if sources[key] == "environment" else sources[key]
        print(f"{key} = {shown}  ({source})")


@config_app.command("set")
def config_set(
    key: Annotated[
        str, typer.Argument(help="model, device, dtype, attn, max_tokens, prompt_budget or offline.")
    ],
    value: Annotated[str, typer.Argument(help="The new value, checked before it is saved.")],
) -> None:
    """Save a setting in the config file. Example: sc2 config set model 7b"""
    import json

    from .settings import config_path, set_value

    key, stored = set_value(key, value)
    print(f"sc2: {key} = {json.dumps(stored)} saved in {config_path()}", file=sys.stderr)


@config_app.command("unset")
def config_unset(key: Annotated[str, typer.Argument(help="The setting to remove from the file.")]) -> None:
    """Remove a setting from the config file, back to its default."""
    from .settings import config_path, unset_value

    removed = unset_value(key)
    state = "removed from" if removed else "was not set in"
    print(f"sc2: {key} {state} {config_path()}", file=sys.stderr)


@config_app.command("path")
def config_file_path() -> None:
    """Print where the config file lives (SC2_CONFIG_DIR moves it)."""
    from .settings import config_path

    print(config_path())


# ---------------------------------------------------------------------------------------------------------
# Server: serve
# ---------------------------------------------------------------------------------------------------------


@app.command(short_help="Keep a model loaded and serve completions.", rich_help_panel="Server")
def serve(
    model: ModelOpt = None, revision: RevisionOpt = None, offline: OfflineOpt = None, device: DeviceOpt = None,
    dtype: DtypeOpt = None, attn: AttnOpt = None, quantize: QuantizeOpt = None,
    budget: BudgetOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to share the model.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="TCP port (default 8712, or a free one if it is taken; 0: any).")] = None,
    unix_socket: Annotated[bool, typer.Option("--socket/--no-socket", help="Also listen on a Unix socket in the runtime folder.")] = True,
    idle_timeout: Annotated[float, typer.Option(help="Exit after this many seconds without a request (0: never).")] = 900,
    token: Annotated[str | None, typer.Option(envvar="SC2_SERVER_TOKEN", help="Require this bearer token.")] = None,
    cache_slots: Annotated[int, typer.Option(help="Prompt caches kept for reuse (one per file being edited).")] = 4,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 2048,
    verbose: VerboseOpt = False,
) -> None:  # fmt: skip
    """Keep a model loaded and serve completions; sc2 complete/fim use it automatically.

    Endpoints: POST /v1/complete (sc2's own), POST /infill (llama.cpp), POST /v1/completions (OpenAI,
    prompt + suffix), GET /health, GET /v1/models, GET /v1/info.
    """
    from .client import announcement_path, discover, model_key, socket_path
    from .server import DEFAULT_PORT, ServerOptions
    from .server import serve as run_server
    from .settings import load_settings

    settings = load_settings(
        {
            "model": model,
            "device": device,
            "dtype": dtype,
            "attn": attn,
            "prompt_budget": budget,
            "offline": offline,
            "quantize": quantize,
        }
    )
    key = model_key(settings.model, revision)
    if unix_socket and discover(key) is not None:
        raise _input_error(f"a server for {settings.model} is already running ({socket_path(key)})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        _note(f"listening on {host}: reachable from other machines{'' if token else ' with no token'}", True)
    options = ServerOptions(
        host=host,
        port=_free_port(host, DEFAULT_PORT) if port is None else port,
        socket_path=socket_path(key) if unix_socket else None,
        announcement=announcement_path(key) if unix_socket else None,
        key=key,
        token=token,
        idle_timeout=idle_timeout,
        max_tokens_limit=max_tokens_limit,
        log=(lambda message: print(f"sc2 serve: {message}", file=sys.stderr, flush=True))
        if verbose
        else (lambda m: None),
    )
    engine = _load_engine(_model_folder(settings, revision), settings, True, cache_slots=cache_slots)
    if budget is not None or settings.prompt_budget is not None:
        engine.default_budget = settings.prompt_budget

    def ready(details: dict) -> None:
        where = f"http://{details['host']}:{details['port']}" + (
            f" and unix://{details['socket']}" if details["socket"] else ""
        )
        print(f"sc2 serve: {settings.model} on {where} (pid {details['pid']})", file=sys.stderr, flush=True)

    try:
        why = run_server(engine, options, ready)
    except OSError as e:
        raise _input_error(
            f"cannot listen on {host}:{options.port} ({e.strerror or e}); pick another --port"
        ) from None
    print(
        f"sc2 serve: stopped ({'idle for ' + str(int(idle_timeout)) + 's' if why == 'idle' else why})",
        file=sys.stderr,
        flush=True,
    )


def _free_port(host: str, preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, preferred))
            return preferred
        except OSError:
            return 0


# ---------------------------------------------------------------------------------------------------------
# Benchmark: bench
# ---------------------------------------------------------------------------------------------------------


@app.command(
    short_help="Measure speed: prefill, decode, load, memory.",
    rich_help_panel="Server",
    epilog="Example:  sc2 bench --shape 3b --vs transformers --quantize int8",
)
def bench(
    model: Annotated[str | None, typer.Option("--model", "-m", help="A checkpoint (folder, repo id or alias).")] = None,
    shape: Annotated[str | None, typer.Option(help="Random weights of a real shape instead: 3b, 7b, 15b or tiny.")] = None,
    layers: Annotated[int | None, typer.Option(help="With --shape: only this many layers.")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    attn: AttnOpt = None,
    quantize: Annotated[str, typer.Option(help="none or int8 (also reports greedy agreement with unquantized).")] = "none",
    vs: Annotated[str | None, typer.Option("--vs", help="Compare with another engine on the same weights: transformers.")] = None,
    prompt_lengths: Annotated[str, typer.Option(help="Prefill lengths, comma-separated.")] = "128,512,2048",
    decode_tokens: Annotated[int, typer.Option(help="Tokens per decode measurement.")] = 32,
    runs: Annotated[int, typer.Option(help="Runs per figure (the median is reported).")] = 3,
    compile: Annotated[bool, typer.Option("--compile", help="Also time a torch.compile'd decode step.")] = False,
    edits: Annotated[bool, typer.Option("--edits", help="Also time a warm server: cold, repeat, after a one-line edit.")] = False,
    load: Annotated[bool, typer.Option("--load", help="Also time loading from disk and peak memory (fresh processes).")] = False,
    checkpoint_dtype: Annotated[str, typer.Option(help="With --shape --load: the file's dtype (the 3B repo is fp32).")] = "fp32",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:  # fmt: skip
    """Measure load time, prefill and decode speed, time to first token and memory bandwidth."""
    from .bench import REFERENCES, BenchOptions, run_bench

    if vs not in (None, "transformers"):
        raise _input_error(f"--vs {vs}: only transformers can be compared")
    if vs and vs not in REFERENCES:
        raise _input_error(
            f"--vs {vs}: transformers is the test-only reference, which sc2 never imports; from a checkout "
            f'with `pip install -e ".[test]"` run `python -m tests.vs_transformers bench ... --vs {vs}`'
        )
    try:
        lengths = tuple(int(n) for n in prompt_lengths.split(",") if n.strip())
    except ValueError:
        raise _input_error(f"--prompt-lengths {prompt_lengths!r}: give numbers separated by commas") from None
    options = BenchOptions(
        model=model, shape=shape, layers=layers, device=device, dtype=dtype, attn=attn or "auto", quantize=quantize,
        prompt_lengths=lengths, decode_tokens=max(decode_tokens, 3), runs=max(runs, 1),
        vs_transformers=vs == "transformers", compile=compile, edits=edits,
    )  # fmt: skip
    log = (lambda message: None) if as_json else (lambda message: _note(message, True))
    report = run_bench(options, log)
    if load:
        _bench_load(report, options, checkpoint_dtype, log)
    if as_json:
        import json

        _write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print_report(report)


def _bench_load(report, options, checkpoint_dtype: str, log) -> None:
    """Load time and peak RSS from disk, ours and (with --vs) transformers', in fresh processes."""
    from .bench import measure_load, write_random_checkpoint
    from .hub import resolve_model
    from .settings import config_path

    if options.model:
        folder = resolve_model(options.model)
    else:
        folder = (
            config_path().parent / "bench" / f"{options.shape}-{options.layers or 'all'}-{checkpoint_dtype}"
        )
        if not (folder / "model.safetensors").is_file():
            log(f"writing a random {options.shape} checkpoint ({checkpoint_dtype}) to {folder}")
            write_random_checkpoint(options.shape, options.layers, folder, checkpoint_dtype)
    engines = ["sc2"] + (["transformers"] if options.vs_transformers else [])
    dtype = options.dtype if options.dtype not in (None, "auto") else "bf16"
    for engine, figures in measure_load(folder, engines, dtype).items():
        report.add("load_s", engine, round(figures["load_s"], 2))
        report.add("load_peak_rss_growth_gb", engine, round(figures["peak_rss_growth_gb"], 2))
    from .config import ModelConfig

    report.setup["bf16_weight_gb"] = round(
        ModelConfig.from_file(folder / "config.json").weight_bytes(2) / 1e9, 2
    )
    log("load: " + ", ".join(f"{k} {v}" for k, v in report.results["load_s"].items()) + " s")


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    setup = ", ".join(f"{k}={v}" for k, v in report.setup.items())
    machine = ", ".join(f"{k}={v}" for k, v in report.machine.items())
    engines = sorted({e for values in report.results.values() for e in values}, key=lambda e: (e != "sc2", e))
    table = Table(title=f"sc2 bench: {setup}", caption=f"memory: {machine}")
    table.add_column("metric")
    for engine in engines:
        table.add_column(engine, justify="right")
    compare = "transformers" in engines
    if compare:
        table.add_column("sc2 / transformers", justify="right")
    for metric, values in report.results.items():
        row = [metric] + [str(values.get(e, "")) for e in engines]
        if compare:
            a, b = values.get("sc2"), values.get("transformers")
            row.append(f"{a / b:.2f}x" if a and b else "")
        table.add_row(*row)
    Console().print(table)
