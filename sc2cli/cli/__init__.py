"""The `sc2` command line, the only package that prints: the Typer app (app.py) and one module per
command group. Commands stay thin and hand off to the session and the library; stdout carries only the
product (the completion), everything else goes to stderr, and every error is one line."""

from .app import app, main

# isort: off
# Each module registers its commands on `app`, in the order `sc2 --help` lists them.
from . import complete, models, config, serve, bench, eval  # noqa: F401
# isort: on

__all__ = ["app", "main"]
