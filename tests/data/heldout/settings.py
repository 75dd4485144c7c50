"""Application settings from defaults, a TOML file and environment variables, in that order of precedence."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import tomllib

ENV_PREFIX = "MYAPP_"
TRUE_VALUES = {"1", "true", "yes", "on"}
FALSE_VALUES = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///app.db"
    pool_size: int = 5
    echo: bool = False


@dataclass(frozen=True)
class Settings:
    debug: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    allowed_hosts: list[str] = field(default_factory=lambda: ["localhost"])
    timeout: float = 30.0
    database: DatabaseSettings = field(default_factory=DatabaseSettings)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"port must be between 1 and 65535, not {self.port}")
        if self.workers < 1:
            raise SettingsError("workers must be at least 1")
        if self.log_level not in {"debug", "info", "warning", "error"}:
            raise SettingsError(f"unknown log level {self.log_level!r}")

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise SettingsError(f"expected a boolean, got {text!r}")


def convert(value: Any, kind: Any, name: str) -> Any:
    """Coerce a value from TOML or the environment to the type a field declares."""
    try:
        if kind is bool:
            return parse_bool(value) if isinstance(value, str) else bool(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind == list[str]:
            if isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            return [str(item) for item in value]
        return str(value)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{name}: {e}") from None


def apply(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(type(obj))
    changes = {}
    for f in fields(obj):
        if f.name not in values:
            continue
        kind = hints[f.name]
        if hasattr(kind, "__dataclass_fields__"):
            changes[f.name] = apply(getattr(obj, f.name), values[f.name], f"{prefix}{f.name}.")
        else:
            changes[f.name] = convert(values[f.name], kind, prefix + f.name)
    unknown = set(values) - {f.name for f in fields(obj)}
    if unknown:
        raise SettingsError(f"unknown setting {prefix}{sorted(unknown)[0]}")
    return replace(obj, **changes)


def from_environment(environ: dict[str, str]) -> dict[str, Any]:
    """MYAPP_PORT=9000 sets `port`; MYAPP_DATABASE__URL=... sets `database.url`."""
    values: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        target = values
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return values


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    if path is None and f"{ENV_PREFIX}CONFIG" in environ:
        path = Path(environ.pop(f"{ENV_PREFIX}CONFIG"))
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise SettingsError(f"{path}: no such settings file") from None
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"{path}: {e}") from None
    values = merge(values, from_environment(environ))
    return apply(Settings(), values)


if __name__ == "__main__":
    settings = load_settings(environ={"MYAPP_PORT": "9000", "MYAPP_DATABASE__ECHO": "yes"})
    print(settings.address, settings.database)
