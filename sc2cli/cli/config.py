"""`sc2 config`: show and change the settings file."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated

import typer

from ..settings import KEYS, config_path, resolve_settings, set_value, unset_value
from . import completers
from .app import app

SETTINGS_LISTED = ", ".join(KEYS)  # from the settings themselves, so the help never misses one

config_app = typer.Typer(
    name="config",
    help=f"Show or change the settings file: {SETTINGS_LISTED}.",
    short_help="Show or change the settings.",
    no_args_is_help=True,
)
app.add_typer(config_app, rich_help_panel="Models and settings")


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object, for scripts.")] = False,
) -> None:
    """The settings in force and where each comes from: option, environment (SC2_*), file or default."""
    settings, sources = resolve_settings()
    values = dataclasses.asdict(settings)
    if as_json:
        print(json.dumps(values, indent=2, allow_nan=False))
        return
    for key, value in values.items():
        shown = (
            ("none" if key == "engine" else "auto")
            if value is None
            else json.dumps(value)
            if isinstance(value, bool)
            else value
        )
        source = f"SC2_{key.upper()}" if sources[key] == "environment" else sources[key]
        print(f"{key} = {shown}  ({source})")


@config_app.command("set")
def config_set(
    key: Annotated[
        str, typer.Argument(help=f"One of: {SETTINGS_LISTED}.", autocompletion=completers.setting_keys)
    ],
    value: Annotated[
        str,
        typer.Argument(
            help="The new value, checked before it is saved.", autocompletion=completers.setting_values
        ),
    ],
) -> None:
    """Save a setting in the config file. Example: sc2 config set model 7b"""
    key, stored = set_value(key, value)
    print(f"sc2: {key} = {json.dumps(stored)} saved in {config_path()}", file=sys.stderr)


@config_app.command("unset")
def config_unset(
    key: Annotated[
        str,
        typer.Argument(
            help="The setting to remove from the file.", autocompletion=completers.set_setting_keys
        ),
    ],
) -> None:
    """Remove a setting from the config file, back to its default."""
    removed = unset_value(key)
    state = "removed from" if removed else "was not set in"
    print(f"sc2: {key} {state} {config_path()}", file=sys.stderr)


@config_app.command("path")
def config_file_path() -> None:
    """Print where the config file lives (SC2_CONFIG_DIR moves it)."""
    print(config_path())
