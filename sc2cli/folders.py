"""Where sc2 keeps what it can rebuild (kernel measurements, packed weights, GGUF files, repository
indexes), for every layer: `$SC2_CACHE_DIR`, else the platformdirs user cache folder; and the two rules
every entry there follows: keyed by the files it was built from, trusted only when the current user's.
Torch-free, no sc2cli imports."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path


def cache_folder() -> Path:
    folder = os.environ.get("SC2_CACHE_DIR")
    if folder:
        return Path(folder).expanduser()
    import platformdirs  # only when no SC2_CACHE_DIR: its import costs a few ms

    return platformdirs.user_cache_path("sc2")


def cache_key(files: Iterable[Path], **description: object) -> str:
    """A key (hex SHA-256) for what is built from `files`: each file's name, size and modification time,
    and `description` (what was built from them, and how). A changed file makes a new key, so an entry
    built from an older version is never read."""
    stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(files)]
    what = {"files": stamps, **description}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def owned_by_user(info: os.stat_result) -> bool:
    """Whether a cached file is the current user's: another user's file is never trusted (it could have
    been put there to be read in our place)."""
    return not hasattr(os, "getuid") or info.st_uid == os.getuid()
