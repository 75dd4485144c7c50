"""The Hugging Face cache, read without the network: where a model's snapshot is, which models are
there, and removing them.

A cached model is found by reading the cache folder, without importing huggingface_hub's HTTP stack (only
its constants), so completion on a cached model stays offline and starts fast. Cached files get cheap
checks every time (JSON that parses, safetensors whose size matches their header) and full checksums on
request (`download(verify=True)`): every blob in the cache is named by its sha256 (LFS files) or git blob id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InputError, Sc2Error
from .layout import CONFIG, INDEX, check_snapshot, damaged_files, missing_files
from .names import COMMIT_RE, check_revision, repo_id_of

HASH_CHUNK = 8 << 20


def is_offline(offline: bool | None = None) -> bool:
    """`offline=True` (the --offline flag or setting), or HF_HUB_OFFLINE=1 in the environment."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(offline) or bool(check() if check else constants.HF_HUB_OFFLINE)


def hub_cache() -> Path:
    """The hub cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def repo_cache_dir(repo_id: str) -> Path:
    """Where the hub cache keeps a model repo: `models--owner--name`."""
    return hub_cache() / ("models--" + repo_id.replace("/", "--"))


def _cached_commit(repo_dir: Path, revision: str | None) -> str | None:
    """The commit a branch, tag or (short) commit points to in the cache, or None if it was never fetched."""
    rev = revision or "main"
    if COMMIT_RE.fullmatch(rev):
        return rev
    ref = repo_dir / "refs" / rev
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip() or None
    if re.fullmatch(r"[0-9a-f]{7,39}", rev):
        matches = [p.name for p in (repo_dir / "snapshots").glob(rev + "*")]
        return matches[0] if len(matches) == 1 else None
    return None


def cached_snapshot(repo_id: str, revision: str | None = None, *, name: str | None = None) -> Path | None:
    """The complete cached snapshot of `repo_id` at `revision` (default: main), or None if it is not all
    there. Never touches the network. A damaged file raises CheckpointError saying how to re-download."""
    check_revision(revision)
    repo_dir = repo_cache_dir(repo_id)
    commit = _cached_commit(repo_dir, revision)
    if commit is None:
        return None
    folder = repo_dir / "snapshots" / commit
    if not folder.is_dir() or missing_files(folder):
        return None
    check_snapshot(folder, repo_id, name or repo_id)
    return folder


def _git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    return _digest_file(path, digest)


def _digest_file(path: Path, digest: Any) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_mismatches(folder: Path, files: Iterable[str]) -> list[str]:
    """The files whose content does not hash to their blob's name (sha256 for LFS files, the git blob id for
    the others). Files the cache holds as copies rather than links cannot be checked this way and pass."""
    bad = []
    for name in files:
        path = folder / name
        if not path.is_symlink() or not path.is_file():
            continue
        etag = path.resolve().name
        if re.fullmatch(r"[0-9a-f]{64}", etag):
            actual = _digest_file(path, hashlib.sha256())
        elif COMMIT_RE.fullmatch(etag):
            actual = _git_blob_id(path)
        else:
            continue
        if actual != etag:
            bad.append(name)
    return bad


@dataclass(frozen=True)
class CachedModel:
    """One cached revision of a StarCoder2 repo."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]
    size: int  # bytes on disk
    path: Path
    complete: bool  # every file inference needs is there
    damaged: tuple[str, ...] = ()  # files that fail the cheap checks (layout.damaged_files)

    @property
    def revision(self) -> str:
        """The branches or tags that point here, else the short commit."""
        return ", ".join(self.refs) if self.refs else self.commit[:12]


def _is_starcoder2(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("model_type") == "starcoder2"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _damaged(folder: Path) -> tuple[str, ...]:
    try:
        return tuple(damaged_files(folder))
    except CheckpointError:  # an unreadable shard index
        return (INDEX,)


def cached_models() -> list[CachedModel]:
    """Every cached revision of a StarCoder2 model (whoever downloaded it), by repo."""
    cache = hub_cache()
    if not cache.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    models = [
        CachedModel(
            repo_id=repo.repo_id,
            commit=rev.commit_hash,
            refs=tuple(sorted(rev.refs)),
            size=rev.size_on_disk,
            path=Path(rev.snapshot_path),
            complete=not missing_files(Path(rev.snapshot_path)),
            damaged=_damaged(Path(rev.snapshot_path)),
        )
        for repo in scan_cache_dir(cache).repos
        if repo.repo_type == "model"
        for rev in repo.revisions
        if _is_starcoder2(Path(rev.snapshot_path))
    ]
    return sorted(models, key=lambda m: (m.repo_id.lower(), "main" not in m.refs, not m.refs, m.revision))


def find_cached(name: str, revision: str | None = None) -> list[CachedModel]:
    """The cached revisions of one model (all of them, or those a branch, tag or commit prefix names)."""
    repo_id = repo_id_of(name)
    found = [m for m in cached_models() if m.repo_id.lower() == repo_id.lower()]
    if revision:
        found = [m for m in found if revision in m.refs or m.commit.startswith(revision)]
    if not found:
        at = f" at revision {revision}" if revision else ""
        raise InputError(f"{repo_id}{at} is not in the cache (see `sc2 models`)")
    return found


def remove_model(name: str, revision: str | None = None) -> tuple[list[CachedModel], int]:
    """Delete cached revisions of a model (blobs other revisions still use are kept); returns them and the bytes
    freed. Raises Sc2Error, after deleting what it could, when a revision's snapshot is still there."""
    doomed = find_cached(name, revision)
    from huggingface_hub import scan_cache_dir

    strategy = scan_cache_dir(hub_cache()).delete_revisions(*(m.commit for m in doomed))
    with _hub_warnings() as failures:
        try:
            strategy.execute()
        except OSError as e:
            failures.append(f"{e.strerror or e} ({e.filename})")
    left = [m for m in doomed if m.path.exists()]
    if left:
        why = failures[0] if failures else f"{left[0].path} is still there"
        gone = len(doomed) - len(left)
        raise Sc2Error(
            f"could not delete {left[0].repo_id} ({left[0].revision}): {why}; "
            f"{gone} of {len(doomed)} revisions deleted (is {hub_cache()} writable?)"
        )
    return doomed, strategy.expected_freed_size


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _hub_warnings() -> Iterator[list[str]]:
    """The hub's warnings while the block runs (the paths it could not delete, each with a traceback) as
    one-line messages, instead of on stderr."""
    hub_log = logging.getLogger("huggingface_hub")
    saved = hub_log.handlers, hub_log.propagate, hub_log.level
    messages: list[str] = []
    hub_log.handlers, hub_log.propagate = [_Collect(messages)], False
    hub_log.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        hub_log.handlers, hub_log.propagate = saved[0], saved[1]
        hub_log.setLevel(saved[2])


def format_bytes(n: int) -> str:
    """Decimal units, as the hub shows sizes: 12.1 GB."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
