"""The runtime folder where warm servers announce themselves: one private JSON file per model (where the
server listens, what it runs, its bearer token) beside its Unix socket. Torch-free: the client reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any


def runtime_dir() -> Path:
    """Where servers leave their sockets and announcements (`SC2_RUNTIME_DIR` moves it, e.g. in tests)."""
    if os.environ.get("SC2_RUNTIME_DIR"):
        return Path(os.environ["SC2_RUNTIME_DIR"])
    import platformdirs

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir("sc2"))


def _slug(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def socket_path(key: str) -> Path:
    return runtime_dir() / f"sc2-{_slug(key)}.sock"


def announcement_path(key: str) -> Path:
    return runtime_dir() / f"sc2-{_slug(key)}.json"


def announce(path: Path, payload: dict[str, Any]) -> None:
    """Tell clients where this server is (and its token): a private file in the runtime folder."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def withdraw(announcement: Path | None, socket: Path | None) -> None:
    """Remove this server's announcement and socket, unless another server took over the name."""
    for path in (announcement, socket):
        if path is not None:
            try:
                if path == announcement and json.loads(path.read_text()).get("pid") != os.getpid():
                    continue
                path.unlink()
            except (OSError, ValueError):
                pass


def read_announcement(key: str) -> dict[str, Any] | None:
    """What the server for this model announced, or None (no file, or not one a server wrote)."""
    try:
        info = json.loads(announcement_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None
