"""`sc2 complete` and `sc2 fim`: the commands; what they do is in buffer.py."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app
from .options import _PROMPT, CompletionOptions, with_completion_options


@app.command(
    short_help="Complete the code at FILE:LINE[:COL].",
    epilog="Examples:  sc2 complete app.py:42  ·  sc2 complete app.py:42:7 -m 7b  ·  "
    "cat app.py | sc2 complete -:42:7 --path app.py --byte-col",
)
@with_completion_options
def complete(
    location: Annotated[str, typer.Argument(metavar="FILE:LINE[:COL]", help="File (- for stdin) and 1-based cursor.")],
    byte_col: Annotated[bool, typer.Option("--byte-col", help="COL counts UTF-8 bytes (as Vim and Neovim report it).")] = False,
    path: Annotated[str | None, typer.Option(help="The file's path when it comes from stdin.", rich_help_panel=_PROMPT)] = None,
    *,
    opts: CompletionOptions,
) -> None:  # fmt: skip
    """Complete the code at a cursor in a file: prints exactly the text to insert."""
    from .buffer import complete_at  # the library loads when a command runs: `sc2 --help` stays fast

    complete_at(location, byte_col, path, opts)


@app.command(
    short_help="Fill in between a prefix and a suffix.",
    epilog="Examples:  sc2 fim --prefix 'def add(a, b):' --suffix ''  ·  sc2 fim --prefix @head.py --suffix - < tail.py",
)
@with_completion_options
def fim(
    prefix: Annotated[str, typer.Option(help="Text before the cursor; @PATH reads a file, - reads stdin.")] = "",
    suffix: Annotated[str, typer.Option(help="Text after the cursor; @PATH reads a file, - reads stdin.")] = "",
    path: Annotated[str | None, typer.Option(help="Path of the file being completed (puts it in the repository format).", rich_help_panel=_PROMPT)] = None,
    *,
    opts: CompletionOptions,
) -> None:  # fmt: skip
    """Fill in the middle between a prefix and a suffix."""
    from .buffer import fill_in  # the library loads when a command runs: `sc2 --help` stays fast

    fill_in(prefix, suffix, path, opts)
