"""Model names, in one place: local folders, aliases (tiny, 3b, 7b, 15b), hub repo ids and revisions.

Torch-free and network-free: `--show-prompt`, `sc2 models` and the warm server's client use it.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from ..errors import CheckpointError, InputError

TINY_DIR = Path(__file__).parent.parent / "tiny"
ALIASES: dict[str, str] = {
    "3b": "bigcode/starcoder2-3b",
    "7b": "bigcode/starcoder2-7b",
    "15b": "bigcode/starcoder2-15b",
    "tiny": str(TINY_DIR),
}
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")


def parse_model_name(name: str) -> Path | str:
    """A `--model` value as a local folder (a Path) or a hub repo id (a str): an existing folder wins, then an
    alias, then `owner/name`."""
    text = name.strip()
    if not text:
        raise InputError("empty model name; use a folder, a hub repo id (owner/name) or 3b, 7b, 15b, tiny")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    alias = ALIASES.get(text.lower())
    if alias is not None:
        return Path(alias) if os.path.isabs(alias) else alias
    if REPO_ID_RE.fullmatch(text) and ".." not in text and "--" not in text:
        return text
    if text.startswith((".", "/", "~")) or os.sep in text or "/" in text:
        raise CheckpointError(f"{text}: no such model folder")
    raise InputError(
        f"unknown model {text!r}; use a folder, a hub repo id like bigcode/starcoder2-3b, or 3b, 7b, 15b, tiny"
    )


def repo_id_of(name: str) -> str:
    target = parse_model_name(name)
    if isinstance(target, Path):
        raise InputError(f"{name} is a local folder, not a model on the hub")
    return target


def check_revision(revision: str | None) -> None:
    if revision is not None and (
        not revision.strip() or revision.startswith("/") or ".." in revision.split("/") or "\\" in revision
    ):
        raise InputError(f"--revision {revision!r}: not a branch, tag or commit name")


def download_command(name: str, revision: str | None = None, *, force: bool = False) -> str:
    """The exact `sc2 download ...` line that fetches this model, for error messages."""
    parts = ["sc2", "download", shlex.quote(name)]
    if revision:
        parts += ["--revision", shlex.quote(revision)]
    if force:
        parts.append("--force")
    return " ".join(parts)


def model_key(model: str, revision: str | None = None) -> str:
    """One spelling per model: aliases become repo ids, folders absolute paths (names a warm server)."""
    target = parse_model_name(model)
    key = str(Path(target).resolve()) if isinstance(target, Path) else target
    return f"{key}@{revision}" if revision else key
