"""User settings: the config file, `SC2_*` environment variables and the built-in defaults, in one place.

Precedence, highest first: a command-line option, then `SC2_<KEY>` (e.g. `SC2_MAX_TOKENS=64`), then the config
file, then the default. Every value goes through the same parser wherever it comes from, and a bad one is an
error naming the key and its source.

The file is JSON (`config.json` in the platformdirs user config folder, or in `$SC2_CONFIG_DIR`). JSON is read
and written by the standard library on every Python we support (TOML writing is not, and `tomllib` arrives only
in 3.11), round-trips exactly, and `sc2 config set` means few people edit it by hand. This module never
imports torch: `sc2 config ...` must stay instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, Sc2Error

CONFIG_FILENAME = "config.json"
ENV_PREFIX = "SC2_"


@dataclass(frozen=True)
class Settings:
    """What the user chose. `prompt_budget=None` means "chosen per device"."""

    model: str = "bigcode/starcoder2-3b"
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "auto"
    max_tokens: int = 128
    prompt_budget: int | None = None
    offline: bool = False
    quantize: str = "none"
    engine: str | None = None  # an external engine's URL (engines/address.py); None: sc2 runs the model


class _Invalid(ValueError):
    """A value a parser rejects; the message says what is expected (the caller adds key and source)."""


def _parse_model(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a folder, a hub repo id (owner/name) or an alias (3b, 7b, 15b)")
    return value.strip()


def _choice(*choices: str, pattern: str | None = None) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = value.strip().lower() if isinstance(value, str) else None
        if text in choices or (text and pattern and re.fullmatch(pattern, text)):
            return text  # type: ignore[return-value]
        raise _Invalid(f"must be one of {', '.join(choices)}")

    return parse


def _whole_number(minimum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            number = int(value)
        else:
            raise _Invalid(f"must be a whole number ≥ {minimum}")
        if number < minimum:
            raise _Invalid(f"must be a whole number ≥ {minimum}")
        return number

    return parse


def _parse_prompt_budget(value: object) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        return _whole_number(16)(value)
    except _Invalid:
        raise _Invalid("must be a whole number ≥ 16 or auto") from None


ENGINE_SCHEMES = ("openai+http://", "openai+https://", "llama+http://", "llama+https://")


def _parse_engine(value: object) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str) and value.strip().lower().startswith(ENGINE_SCHEMES):
        return value.strip()
    raise _Invalid("must be none, openai+http(s)://HOST:PORT/v1 or llama+http(s)://HOST:PORT")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid("must be true or false")


# The settable keys, each with the parser that checks and normalises a value from any source.
KEYS: dict[str, Callable[[object], Any]] = {
    "model": _parse_model,
    "device": _choice("auto", "cpu", "cuda", "mps", pattern=r"cuda:\d+"),
    "dtype": _choice("auto", "bf16", "fp16", "fp32"),
    "attn": _choice("auto", "sdpa", "flash", "eager"),
    "max_tokens": _whole_number(1),
    "prompt_budget": _parse_prompt_budget,
    "offline": _parse_bool,
    "quantize": _choice("none", "int8", "int4"),
    "engine": _parse_engine,
}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
assert set(KEYS) == set(DEFAULTS), "every setting needs a parser"


def normalize_key(key: str) -> str:
    """`max-tokens` and `MAX_TOKENS` name `max_tokens`; an unknown key is an error listing the known ones."""
    name = key.strip().lower().replace("-", "_")
    if name not in KEYS:
        raise InputError(f"unknown setting {key!r}; known settings: {', '.join(KEYS)}")
    return name


@dataclass(frozen=True)
class Given:
    """A setting's value as a command-line option gave it: `option` is what the user typed (`--budget` for
    prompt_budget), which errors name."""

    value: object
    option: str


def _checked(key: str, value: object, named: str) -> Any:
    try:
        return KEYS[key](value)
    except _Invalid as e:
        shown = value if isinstance(value, str) else json.dumps(value)
        raise InputError(f"{named} {e}, got {shown!r}") from None


def parse_value(key: str, value: object, source: str) -> Any:
    """Check and normalise `value` for `key`; `source` (a variable, a file) goes into the error with the key."""
    return _checked(key, value, f"{source}: {key}")


def config_path() -> Path:
    """The config file: `$SC2_CONFIG_DIR/config.json`, else in the platformdirs user config folder."""
    folder = os.environ.get("SC2_CONFIG_DIR")
    if folder:
        return Path(folder).expanduser() / CONFIG_FILENAME
    import platformdirs

    return platformdirs.user_config_path("sc2") / CONFIG_FILENAME


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The file's raw key/value pairs (not validated); an absent file is empty, an unreadable one an error."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the config file ({e})") from None
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON (line {e.lineno}: {e.msg}); fix or delete the file"
        ) from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object of settings; fix or delete the file")
    return raw


def _file_values(path: Path) -> dict[str, Any]:
    values = {}
    for key, value in read_config_file(path).items():
        if key not in KEYS:
            raise InputError(
                f"{path}: unknown setting {key!r}; remove it with `sc2 config unset {key}` "
                f"(known settings: {', '.join(KEYS)})"
            )
        values[key] = parse_value(key, value, str(path))
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            values[key] = parse_value(key, environ[name], name)
    return values


def parse_options(overrides: Mapping[str, object]) -> dict[str, Any]:
    """The options given (not None), checked; an error names the option as `Given` spells it, else `--the-key`."""
    values = {}
    for key, given in overrides.items():
        if key not in KEYS:
            raise ValueError(f"load_settings: {key!r} is not a setting")  # a caller's bug, not the user's
        value, option = (given.value, given.option) if isinstance(given, Given) else (given, None)
        if value is not None:
            values[key] = _checked(key, value, option or "--" + key.replace("_", "-"))
    return values


def resolve_settings(overrides: Mapping[str, object] | None = None) -> tuple[Settings, dict[str, str]]:
    """The settings and, for each key, where its value came from: option, environment, file or default."""
    layers = [
        ("default", DEFAULTS),
        ("file", _file_values(config_path())),
        ("environment", _env_values(os.environ)),
        ("option", parse_options(overrides or {})),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            values[key] = value
            sources[key] = source
    return Settings(**values), sources


def load_settings(overrides: Mapping[str, object] | None = None) -> Settings:
    """The settings in force: non-None `overrides` (command-line options, plain or `Given`), then `SC2_*`, then
    file, then default."""
    return resolve_settings(overrides)[0]


def _write_config_file(path: Path, values: Mapping[str, Any]) -> None:
    """Replace the file atomically, so an interrupted write never leaves half a config behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(dict(values), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise Sc2Error(
            f"cannot write the config file {path}: {e.strerror or e}; nothing saved (SC2_CONFIG_DIR moves it)"
        ) from None


def set_value(key: str, value: str) -> tuple[str, Any]:
    """Check `value` and store it under `key` in the config file; returns the key and the stored value."""
    key = normalize_key(key)
    parsed = parse_value(key, value, f"sc2 config set {key}")
    stored = "auto" if key == "prompt_budget" and parsed is None else parsed
    path = config_path()
    values = read_config_file(path)
    values[key] = stored
    _write_config_file(path, values)
    return key, stored


def unset_value(key: str) -> bool:
    """Remove `key` from the config file (unknown keys too, to clean up a file); False if it was not there."""
    name = key.strip().lower().replace("-", "_")
    path = config_path()
    values = read_config_file(path)
    found = next((k for k in (key, name) if k in values), None)
    if found is None:
        if name not in KEYS:
            normalize_key(key)  # raises: neither in the file nor a known setting
        return False
    del values[found]
    _write_config_file(path, values)
    return True
