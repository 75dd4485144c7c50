"""The `sc2` Typer app and its entry point: every failure becomes one line on stderr.

The command groups live in their own modules (complete.py, serve.py, models.py, config.py, bench.py) and
register on `app` when the cli package is imported. The cli package is the only one that prints.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import Annotated, NoReturn

import typer

from .. import __version__
from ..errors import Sc2Error

app = typer.Typer(
    name="sc2",
    help="Local code completion with the StarCoder2 models.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's renderer alone costs ~0.2 s of start-up (sc2 --help < 0.3 s)
)

state = {"debug": bool(os.environ.get("SC2_DEBUG"))}


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
    state["debug"] = state["debug"] or debug


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
    # sc2 never uses numpy, but torch (2.13's wheels) warns on import when it is missing: two lines of
    # noise on every command of an install without it
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    command = typer.main.get_command(app)
    argv = _protect_stdin_locations(sys.argv[1:] if argv is None else argv)
    try:
        code = command.main(args=argv, prog_name="sc2", standalone_mode=False)
    except Sc2Error as e:
        if state["debug"]:
            raise
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        _silence_stdout()
        raise SystemExit(141) from None
    except _click_error_types() as e:
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `sc2`, `sc2 config`: as pip does
            print(ctx.get_help())
            raise SystemExit(0) from None
        message = e.format_message()  # type: ignore[attr-defined]
        if not message:  # the help was shown (older click)
            raise SystemExit(getattr(e, "exit_code", 2)) from None
        hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        fail(f"{message}{hint}", getattr(e, "exit_code", 2))
    except (typer.Abort, EOFError):
        fail("aborted", 1)
    except Exception as e:
        if state["debug"]:
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
