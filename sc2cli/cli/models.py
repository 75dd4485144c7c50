"""`sc2 download`, `sc2 models` and `sc2 rm`: the models in the Hugging Face cache."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from ..errors import InputError
from ..settings import load_settings
from . import completers
from .app import app
from .output import ProgressBar

# The checkpoint modules are imported inside the commands: `sc2 --help` loads none of them.


@app.command(short_help="Fetch a model into the cache.", rich_help_panel="Models and settings")
def download(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A hub repo id (owner/name) or 3b, 7b, 15b. Default: the configured model.",
            show_default=False,
            autocompletion=completers.hub_model_names,
        ),
    ] = None,
    revision: Annotated[str | None, typer.Option("--revision", "-r", help="A branch, tag or commit.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch every file again, even if cached.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the checksum of every file; fetch again any that differ.")
    ] = False,
    tokenizer_only: Annotated[
        bool,
        typer.Option(
            "--tokenizer-only",
            help="Only config.json and the tokenizer: enough to complete through --engine.",
        ),
    ] = False,
) -> None:
    """Fetch a model into the Hugging Face cache, once; after that sc2 works offline.

    Prints the model's folder. Interrupted (Ctrl-C), the same command later continues where it stopped.
    Examples: sc2 download 3b, sc2 download bigcode/starcoder2-7b -r main
    """
    from ..checkpoint.download import download as fetch
    from ..checkpoint.names import download_command

    name = model or load_settings().model
    if tokenizer_only:
        from ..checkpoint.download import fetch_tokenizer

        folder = fetch_tokenizer(name, revision=revision)
        print(f"sc2: {name}'s tokenizer is ready (commit {folder.name[:12]})", file=sys.stderr)
        print(folder)
        return
    bar = ProgressBar(f"fetching {name}")
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
    from ..checkpoint.cache import cached_models, hub_cache

    found = cached_models()
    if as_json:
        keys = ("repo_id", "revision", "commit", "refs", "size", "path", "complete", "damaged")
        print(
            json.dumps(
                [{k: _jsonable(getattr(m, k)) for k in keys} for m in found], indent=2, allow_nan=False
            )
        )
    elif not found:
        print(f"sc2: no StarCoder2 model in {hub_cache()}; fetch one with `sc2 download 3b`", file=sys.stderr)
    else:
        _print_models_table(found)


def _jsonable(value: object) -> object:
    if hasattr(value, "__fspath__"):
        return os.fspath(value)
    return list(value) if isinstance(value, tuple) else value


def _print_models_table(models: list) -> None:
    from rich.console import Console  # rich's table: ~0.1 s of imports, only for this command
    from rich.table import Table

    from ..checkpoint.cache import format_bytes

    table = Table(box=None, pad_edge=False)
    for column in ("MODEL", "REVISION", "SIZE", "PATH"):
        table.add_column(column, justify="right" if column == "SIZE" else "left", no_wrap=True)
    for m in models:
        revision = m.revision if m.complete else f"{m.revision} (incomplete)"
        revision = f"{revision} (damaged)" if m.damaged else revision
        table.add_row(m.repo_id, revision, format_bytes(m.size), str(m.path))
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)


@app.command("rm", short_help="Delete a cached model.", rich_help_panel="Models and settings")
def remove(
    model: Annotated[
        str,
        typer.Argument(
            help="A cached hub repo id (owner/name) or 3b, 7b, 15b.",
            autocompletion=completers.cached_model_names,
        ),
    ],
    revision: Annotated[
        str | None, typer.Option("--revision", "-r", help="Only this branch, tag or commit. Default: all.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model from the Hugging Face cache, after confirmation."""
    from ..checkpoint.cache import find_cached, format_bytes, remove_model

    doomed = find_cached(model, revision)
    if not yes and not _confirm_removal(doomed):
        print("sc2: nothing deleted", file=sys.stderr)
        raise typer.Exit(1)
    removed, freed = remove_model(model, revision)
    for m in removed:
        print(f"sc2: deleted {m.repo_id} ({m.revision})", file=sys.stderr)
    print(f"sc2: freed {format_bytes(freed)}", file=sys.stderr)


def _confirm_removal(doomed: list) -> bool:
    from ..checkpoint.cache import format_bytes

    if not sys.stdin.isatty():
        raise InputError("sc2 rm asks before deleting, but stdin is not a terminal; pass --yes to delete")
    for m in doomed:
        print(f"  {m.repo_id}  {m.revision}  {format_bytes(m.size)}  {m.path}", file=sys.stderr)
    return typer.confirm("Delete from the cache?", default=False, err=True)
