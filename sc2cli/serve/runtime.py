"""The runtime folder where warm servers announce themselves: one private JSON file per model (where the
server listens, what it runs, its bearer token) beside its Unix socket. Torch-free: the client reads it.

The client sends the user's code to whatever server an announcement names, so it trusts one only when
the folder, the file and the socket belong to this user and nobody else can write them; anything else is
ignored, with the reason (for `-v`). The server makes the folder private (0700) when it creates it and
refuses one that belongs to someone else.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError


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


def untrusted(path: Path, what: str) -> str | None:
    """Why `path` cannot be trusted (not this user's, a symbolic link, writable by others), or None."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot read the {what} {path} ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"the {what} {path} is a symbolic link"
    if st.st_uid != os.getuid():
        return f"the {what} {path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return f"the {what} {path} can be written by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_runtime_dir() -> Path:
    """The runtime folder, created private (0700) if missing; an `InputError` if it is not this user's
    or others can write it (a server must not announce itself where another user could answer)."""
    folder = runtime_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    problem = untrusted(folder, "runtime folder")
    if problem:
        raise InputError(f"{problem}; set XDG_RUNTIME_DIR or SC2_RUNTIME_DIR to a private folder")
    return folder


@dataclass(frozen=True)
class Announcement:
    """What the server for a model announced, or (info None) why there is nothing to trust."""

    info: dict[str, Any] | None
    reason: str = ""


def read_announcement(key: str) -> Announcement:
    """The announcement for this model, if the folder and the file (and the socket it names) are this
    user's and nobody else can write them."""
    path = announcement_path(key)
    if not path.exists():
        return Announcement(None, f"no server announced in {path.parent}")
    problem = untrusted(path.parent, "runtime folder") or untrusted(path, "announcement")
    if problem:
        return Announcement(None, problem)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Announcement(None, f"the announcement {path} is not readable JSON")
    if not isinstance(info, dict):
        return Announcement(None, f"the announcement {path} is not a server's")
    sock = info.get("socket")
    if isinstance(sock, str) and sock:
        problem = untrusted(Path(sock), "server socket")
        if problem:
            return Announcement(None, problem)
    return Announcement(info)
