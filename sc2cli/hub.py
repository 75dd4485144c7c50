"""Model names to checkpoint folders: local folders, aliases, and repos on the Hugging Face hub.

Downloads go through huggingface_hub into its standard cache, so HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE behave as with every other hub tool, and a model fetched by one of them is reused here. Only what
inference needs is fetched: config.json, generation_config.json, the tokenizer files and the safetensors weights
(one file, or the index and its shards); pickled `*.bin` weights never, since loading them can run code.

A cached model is found by reading the cache folder, without the network and without importing huggingface_hub's
HTTP stack (only its constants), so completion on a cached model stays offline and starts fast. Cached files get
cheap checks every time (JSON that parses, safetensors whose size matches their header) and full checksums on
request (`download(verify=True)`): every blob in the cache is named by its sha256 (LFS files) or git blob id.

Interrupted downloads resume, even across processes (Ctrl-C, a killed process, a reboot). Small files go through
`hf_hub_download`; the weights (every safetensors file, and any other LFS file of 16 MB or more) are transferred
here, because huggingface_hub 2.x streams each file into a temporary file with a random name that it deletes when
the process stops, so a 12 GB checkpoint interrupted at 90% would start over. Here the bytes received so far stay in
`blobs/<etag>.incomplete` next to the blob they will become (the name older huggingface_hub versions used for the
same purpose; `hf cache` still lists and prunes such files), and the next run asks for the rest with
`Range: bytes=<size>-`. A 200 answer (range ignored) starts the file over; new weights on the hub have a new etag,
so they start from an empty file, and partial files that no wanted file names any more are deleted. The whole file
must hash to its etag (sha256 for LFS files, else the git blob id); one that does not is fetched once more from the
start. Only then is it renamed into `blobs/<etag>` and linked from `snapshots/<commit>/<file>` as huggingface_hub
links its own, so `hf_hub_download(..., local_files_only=True)`, `scan_cache_dir()` and every hub tool find it.

Everything but the byte transfer still comes from huggingface_hub: the metadata request (redirect target, etag,
commit, size), the headers (token, user agent), its HTTP client (HF_HUB_OFFLINE, HF_ENDPOINT, timeouts, proxies),
its symlink helper and its lock file per blob, so two downloads of one file (sc2 or `hf download`) take turns
instead of writing the same partial file. The token goes only to the hub's own origin, never to the CDN a
redirect points to. Within one run a dropped connection is retried from the last byte received.

This module never prints: download progress goes to a `progress(bytes_done, bytes_total)` callback (bytes kept
from an interrupted run count as done), one-line messages to a `notice(text)` callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

from .config import ModelConfig
from .errors import CheckpointError, InputError, Sc2Error

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)
Notice = Callable[[str], None]  # one line for the user, while a download goes on

TINY_DIR = Path(__file__).parent / "tiny"
ALIASES: dict[str, str] = {
    "3b": "bigcode/starcoder2-3b",
    "7b": "bigcode/starcoder2-7b",
    "15b": "bigcode/starcoder2-15b",
    "tiny": str(TINY_DIR),
}

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
OPTIONAL_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")
PARSE_LIMIT = 256 << 10  # JSON files up to this size are parsed in full; larger ones get a tail check
HASH_CHUNK = 8 << 20
RESUMABLE_SIZE = 16 << 20  # LFS files this big (and every safetensors file) are fetched resumably, here
PARTIAL_SUFFIX = ".incomplete"  # blobs/<etag>.incomplete: the bytes of blobs/<etag> received so far
STREAM_RETRIES = 5  # attempts in a row without progress before a transfer gives up (as huggingface_hub)
RETRY_WAIT = 1.0  # seconds between them
LOCK_PROBE = 0.2  # seconds to wait for a blob's lock before saying another download holds it


# ---------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------


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


def _repo_id(name: str) -> str:
    target = parse_model_name(name)
    if isinstance(target, Path):
        raise InputError(f"{name} is a local folder, not a model on the hub")
    return target


def _check_revision(revision: str | None) -> None:
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


def format_bytes(n: int) -> str:
    """Decimal units, as the hub shows sizes: 12.1 GB."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# ---------------------------------------------------------------------------------------------------------
# The cache, read without the network
# ---------------------------------------------------------------------------------------------------------


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


def _shard_names(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return list(dict.fromkeys(str(name) for name in weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: unreadable shard index ({e})") from None


def weight_files(folder: Path) -> list[str]:
    """The safetensors files a snapshot needs: the shards its index names, or model.safetensors."""
    if (folder / INDEX).is_file():
        return [INDEX, *_shard_names(folder / INDEX)]
    return [SINGLE]


def missing_files(folder: Path) -> list[str]:
    """Files inference needs that `folder` lacks (a link to a missing blob counts as missing)."""
    missing = [] if (folder / CONFIG).is_file() else [CONFIG]
    with suppress(CheckpointError):  # a damaged index is reported by damaged_files
        missing += [name for name in weight_files(folder) if not (folder / name).is_file()]
    has_bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (folder / "tokenizer.json").is_file() and not has_bpe_files:
        missing.append("tokenizer.json")
    return missing


def damaged_files(folder: Path) -> dict[str, str]:
    """Cheap checks of the cached files, run on every use: {file: what is wrong}. JSON files must parse (or, when
    large, end like JSON); safetensors files must be exactly as long as their header says: a truncated
    download fails here, not halfway through loading."""
    problems: dict[str, str] = {}
    for name in (CONFIG, *OPTIONAL_FILES, INDEX):
        path = folder / name
        if name.endswith(".json") and path.is_file():
            problem = _json_problem(path)
            if problem:
                problems[name] = problem
    if INDEX in problems:
        return problems
    for name in weight_files(folder):
        path = folder / name
        if name.endswith(".safetensors") and path.is_file():
            problem = safetensors_problem(path)
            if problem:
                problems[name] = problem
    return problems


def _json_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size <= PARSE_LIMIT:
                json.loads(f.read())
                return None
            f.seek(size - 64)
            tail = f.read().rstrip()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"not valid JSON ({e})"
    return None if tail.endswith((b"}", b"]")) else "truncated JSON"


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (truncated, corrupt header, trailing bytes), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(size - 8, 100 << 20):
                return f"truncated or corrupt safetensors header ({size:,} bytes)"
            header = json.loads(f.read(n))
        ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
        expected = 8 + n + max(ends, default=0)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "corrupt safetensors header"
    if size < expected:
        return f"truncated: {size:,} of {expected:,} bytes"
    if size > expected:
        return f"{size - expected:,} stray bytes after the tensors"
    return None


def _check_model_type(raw: dict[str, Any], repo_id: str) -> None:
    model_type = raw.get("model_type")
    if model_type != "starcoder2":
        raise CheckpointError(
            f"{repo_id} is not a StarCoder2 model (config.json has model_type {model_type!r})"
        )


def _check_declared_type(info: Any, repo_id: str) -> None:
    """Refuse another architecture before fetching anything, when the hub's listing says which it is."""
    declared = (getattr(info, "config", None) or {}).get("model_type")
    if declared is not None:
        _check_model_type({"model_type": declared}, repo_id)


def _check_snapshot(folder: Path, repo_id: str, name: str) -> None:
    """A cached snapshot is usable: StarCoder2, no damaged file; else one line saying how to re-download."""
    problems = damaged_files(folder)
    if problems:
        file, problem = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{repo_id}: cached {file} is damaged: {problem}{more}; "
            f"re-download it with `{download_command(name, force=True)}`"
        )
    raw = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    _check_model_type(raw, repo_id)
    ModelConfig.from_dict(raw, f"{repo_id} config.json")


def cached_snapshot(repo_id: str, revision: str | None = None, *, name: str | None = None) -> Path | None:
    """The complete cached snapshot of `repo_id` at `revision` (default: main), or None if it is not all
    there. Never touches the network. A damaged file raises CheckpointError saying how to re-download."""
    _check_revision(revision)
    repo_dir = repo_cache_dir(repo_id)
    commit = _cached_commit(repo_dir, revision)
    if commit is None:
        return None
    folder = repo_dir / "snapshots" / commit
    if not folder.is_dir() or missing_files(folder):
        return None
    _check_snapshot(folder, repo_id, name or repo_id)
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


# ---------------------------------------------------------------------------------------------------------
# Resolving and downloading
# ---------------------------------------------------------------------------------------------------------


def resolve_model(
    name: str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    update: bool = False,
    progress: Progress | None = None,
    notice: Notice | None = None,
) -> Path:
    """The checkpoint folder for a `--model` value: a folder as is, an alias or repo id from the cache (no
    network) when it is complete there and `update` is off, else downloaded. Offline and not cached: an error
    with the `sc2 download` line to run."""
    target = parse_model_name(name)
    if isinstance(target, Path):
        if revision:
            raise InputError(f"--revision applies to models on the hub, not to the folder {target}")
        return target
    if not update:
        folder = cached_snapshot(target, revision, name=name)
        if folder is not None:
            return folder
    if is_offline(offline):
        what = "cannot check for updates" if update else "is not in the cache"
        raise Sc2Error(
            f"{target} {what} and offline mode is on; run `{download_command(name, revision)}` online"
        )
    return download(name, revision=revision, progress=progress, notice=notice)


def download(
    name: str,
    *,
    revision: str | None = None,
    force: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
    notice: Notice | None = None,
) -> Path:
    """Fetch what inference needs of a hub model into the cache and return its snapshot folder. Files already
    cached are kept (all re-fetched with `force`); damaged ones, or with `verify` any whose checksum is wrong,
    are fetched again; a weight file an interrupted run left half done continues where it stopped. Refuses up
    front when the disk cannot hold what is still missing."""
    repo_id = _repo_id(name)
    _check_revision(revision)
    if is_offline():
        raise Sc2Error(f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE); unset it and retry")
    with _hub_errors(repo_id, name, revision):
        folder = _download(
            repo_id, name, revision, force=force, verify=verify, progress=progress, notice=notice or _ignore
        )
    missing = missing_files(folder)
    if missing:
        raise CheckpointError(f"{repo_id}: {missing[0]} is missing after the download; run the command again")
    _check_snapshot(folder, repo_id, name)
    return folder


def _download(
    repo_id: str,
    name: str,
    revision: str | None,
    *,
    force: bool,
    verify: bool,
    progress: Progress | None,
    notice: Notice,
) -> Path:
    info = _repo_info(repo_id, revision)
    siblings = {s.rfilename: s for s in info.siblings or []}
    _check_declared_type(info, repo_id)
    if CONFIG not in siblings:
        raise CheckpointError(f"{repo_id} has no config.json: not a StarCoder2 model")
    config = _fetch_json(
        repo_id, CONFIG, revision or "main", force=force
    )  # by name: the cache records the ref
    folder = config.parent
    if folder.name != info.sha:
        raise Sc2Error(f"{repo_id} changed on the hub during the download; run the command again")
    _check_model_type(_read_config(config, repo_id), repo_id)
    wanted = _inference_files(repo_id, siblings, lambda f: _fetch_json(repo_id, f, info.sha, force=force))
    done = {CONFIG, INDEX}  # fetched and checked above
    stale = (set(damaged_files(folder)) | _wrong_size(folder, wanted, siblings)) - done
    todo = [f for f in wanted if f not in done and (force or f in stale or not (folder / f).is_file())]
    force_files = set(todo) if force else stale
    _fetch_all(repo_id, info.sha, todo, siblings, force_files=force_files, progress=progress, notice=notice)
    if verify:
        _repair_checksums(repo_id, info.sha, folder, wanted, siblings, progress, notice)
    return folder


def _ignore(message: str) -> None:
    pass


def _repo_info(repo_id: str, revision: str | None) -> Any:
    from huggingface_hub import HfApi, constants

    return HfApi().model_info(
        repo_id, revision=revision, files_metadata=True, timeout=constants.HF_HUB_ETAG_TIMEOUT
    )


def _fetch_json(repo_id: str, filename: str, revision: str, *, force: bool) -> Path:
    """A small JSON file from the cache or the hub, fetched again if the cached copy is damaged."""
    path = _fetch(repo_id, filename, revision, force=force)
    if not force and _json_problem(path):
        path = _fetch(repo_id, filename, revision, force=True)
    problem = _json_problem(path)
    if problem:
        raise CheckpointError(f"{repo_id}: {filename} on the hub is {problem}")
    return path


def _read_config(path: Path, repo_id: str) -> dict[str, Any]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise CheckpointError(f"{repo_id}: config.json is not a JSON object: not a StarCoder2 model")
    return raw


def _repair_checksums(
    repo_id: str,
    commit: str,
    folder: Path,
    files: list[str],
    siblings: dict[str, Any],
    progress: Progress | None,
    notice: Notice,
) -> None:
    """Fetch again every file whose checksum is wrong; fail if a fresh copy is still wrong."""
    bad = checksum_mismatches(folder, files)
    if not bad:
        return
    _fetch_all(repo_id, commit, bad, siblings, force_files=set(bad), progress=progress, notice=notice)
    still_bad = checksum_mismatches(folder, bad)
    if still_bad:
        raise CheckpointError(
            f"{repo_id}: {still_bad[0]} does not match the hub's checksum even when fetched again"
        )


def _inference_files(repo_id: str, siblings: dict[str, Any], fetch: Callable[[str], Path]) -> list[str]:
    """The repo's files that inference needs, config first and weights last; never pickles."""
    wanted = [CONFIG, *(f for f in OPTIONAL_FILES if f in siblings)]
    if "tokenizer.json" not in siblings and not {"vocab.json", "merges.txt"} <= set(siblings):
        raise CheckpointError(f"{repo_id} has no tokenizer.json: sc2 cannot tokenize for it")
    if INDEX in siblings:
        shards = _shard_names(fetch(INDEX))
        absent = [s for s in shards if s not in siblings]
        if absent:
            raise CheckpointError(f"{repo_id}: {INDEX} names {absent[0]}, which is not in the repo")
        return [*wanted, INDEX, *shards]
    if SINGLE in siblings:
        return [*wanted, SINGLE]
    if any(f.endswith(PICKLE_SUFFIXES) for f in siblings):
        raise CheckpointError(
            f"{repo_id} has only pickled *.bin weights; sc2 loads safetensors only (pickles can run code)"
        )
    raise CheckpointError(f"{repo_id} has no model.safetensors weights")


def _expected_size(sibling: Any) -> int | None:
    lfs = getattr(sibling, "lfs", None)
    if lfs is not None:
        return int(lfs.size)
    size = getattr(sibling, "size", None)
    return int(size) if size is not None else None


def _wrong_size(folder: Path, files: Iterable[str], siblings: dict[str, Any]) -> set[str]:
    """Cached files whose size differs from the hub's record: truncated or corrupt, to fetch again."""
    wrong = set()
    for name in files:
        expected = _expected_size(siblings[name])
        path = folder / name
        if expected is not None and path.is_file() and path.stat().st_size != expected:
            wrong.add(name)
    return wrong


def _fetch_all(
    repo_id: str,
    commit: str,
    files: list[str],
    siblings: dict[str, Any],
    *,
    force_files: set[str],
    progress: Progress | None,
    notice: Notice,
) -> None:
    """Download `files` one after the other, after checking that what is still missing fits on the disk, with
    one progress total. Weight files go through `_fetch_resumable`, the rest through huggingface_hub."""
    total = sum(_expected_size(siblings[f]) or 0 for f in files)
    resumable = [f for f in files if _is_resumable(f, siblings[f])]
    if resumable:
        _drop_stale_partials(repo_id, keep={_lfs_sha256(siblings[f]) for f in resumable})
    kept = {f: _partial_size(repo_id, siblings[f]) for f in resumable if f not in force_files}
    check_disk_space(repo_id, total - sum(kept.values()), hub_cache())
    transfer = _Transfer(total, progress, done=sum(kept.values()))
    for name in files:
        force = name in force_files
        if name in resumable:
            _fetch_resumable(
                repo_id,
                name,
                commit,
                force=force,
                transfer=transfer,
                credited=kept.get(name, 0),
                notice=notice,
            )
        else:
            _fetch(repo_id, name, commit, force=force, transfer=transfer)


def _fetch(
    repo_id: str, filename: str, revision: str, *, force: bool, transfer: _Transfer | None = None
) -> Path:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=hub_cache(),
        force_download=force,
        tqdm_class=(transfer or _Transfer(0, None)).bar_class,  # type: ignore[arg-type]
    )
    return Path(path)


def check_disk_space(repo_id: str, needed: int, folder: Path) -> None:
    """Refuse a download that cannot fit, naming both numbers, before any byte is written."""
    if needed <= 0:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise Sc2Error(
            f"not enough disk space for {repo_id}: it needs {format_bytes(needed)}, {probe} has "
            f"{format_bytes(free)} free; free some space or set HF_HUB_CACHE to a bigger disk"
        )


class _Transfer:
    """Bytes received across the files of one download, reported as `progress(done, total)`. Its `bar_class`
    stands in for the tqdm class huggingface_hub instantiates for each file it streams."""

    def __init__(self, total: int, progress: Progress | None, *, done: int = 0) -> None:
        self.total = total
        self.done = done  # bytes kept from an interrupted run count as done from the start
        self.progress = progress
        self._lock = threading.Lock()
        self.bar_class = self._make_bar_class()
        if progress is not None and total:
            progress(done, total)

    def add(self, n: float) -> None:
        """Count `n` more bytes (fewer, when negative: a file that starts over)."""
        with self._lock:
            self.done += int(n)
            done = self.done
        if self.progress is not None:
            self.progress(done, max(self.total, done))

    def _make_bar_class(self) -> type:
        transfer = self

        class Bar:
            """The part of tqdm's interface huggingface_hub uses while streaming a file."""

            def __init__(self, *args: object, initial: int = 0, **kwargs: object) -> None:
                if initial:  # bytes of a resumed file that an earlier attempt already wrote
                    transfer.add(initial)

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, n: float | None = 1) -> None:
                transfer.add(n or 0)

            def close(self) -> None:
                pass

            def refresh(self, *args: object, **kwargs: object) -> None:
                pass

            def set_description(self, *args: object, **kwargs: object) -> None:
                pass

            def set_postfix_str(self, *args: object, **kwargs: object) -> None:
                pass

        return Bar


# ---------------------------------------------------------------------------------------------------------
# Weights: a transfer that survives the process (see the module docstring)
# ---------------------------------------------------------------------------------------------------------


def _is_resumable(name: str, sibling: Any) -> bool:
    """Weight files, and other big LFS files, are fetched by `_fetch_resumable`; the rest by huggingface_hub."""
    is_big_lfs = (
        getattr(sibling, "lfs", None) is not None and (_expected_size(sibling) or 0) >= RESUMABLE_SIZE
    )
    return name.endswith(".safetensors") or is_big_lfs


def _lfs_sha256(sibling: Any) -> str | None:
    """The etag the hub will give an LFS file (its sha256), known from the repo listing before any request."""
    return getattr(getattr(sibling, "lfs", None), "sha256", None)


def _partial_path(repo_id: str, etag: str) -> Path:
    return repo_cache_dir(repo_id) / "blobs" / (etag + PARTIAL_SUFFIX)


def _lock_path(repo_id: str, etag: str) -> Path:
    """The lock file huggingface_hub takes while it writes this blob: sharing it keeps sc2 and other hub tools
    from writing the same blob at once."""
    return hub_cache() / ".locks" / repo_cache_dir(repo_id).name / f"{etag}.lock"


def _partial_size(repo_id: str, sibling: Any) -> int:
    """Bytes of this file that an interrupted run left in the cache (0 when none, or not known to be its)."""
    etag = _lfs_sha256(sibling)
    if etag is None:
        return 0
    try:
        return min(_partial_path(repo_id, etag).stat().st_size, _expected_size(sibling) or 0)
    except OSError:
        return 0


def _drop_stale_partials(repo_id: str, keep: set[str | None]) -> None:
    """Delete the partial files of this repo that no file of this download continues (the hub has other
    weights now), unless another running download holds them."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    for path in (repo_cache_dir(repo_id) / "blobs").glob("*" + PARTIAL_SUFFIX):
        etag = path.name.removesuffix(PARTIAL_SUFFIX)  # huggingface_hub's own are <etag>.<id>.incomplete
        if etag in keep or not SHA256_RE.fullmatch(etag):
            continue
        with suppress(Timeout), WeakFileLock(_lock_path(repo_id, etag), timeout=LOCK_PROBE):
            path.unlink(missing_ok=True)


@dataclass
class _Source:
    """Where a file's bytes come from (the URL the hub redirects to, with the headers for that host) and what the
    hub says they are."""

    url: str
    headers: dict[str, str]
    etag: str
    commit: str
    size: int | None


def _file_source(repo_id: str, filename: str, commit: str) -> _Source:
    """Ask the hub about one file, as hf_hub_download does (a HEAD request that stops at the first redirect off
    the hub). The token goes with the GET only when it stays on the hub's origin."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, filename, revision=commit)
    meta = get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, retry_on_errors=True)
    if not meta.commit_hash or not meta.etag or not re.fullmatch(r"[0-9A-Za-z._-]{1,128}", meta.etag):
        raise Sc2Error(
            f"{_endpoint()} sent no usable commit or etag for {repo_id}/{filename}; "
            "check that HF_ENDPOINT points to a Hugging Face hub"
        )
    location = urljoin(url, meta.location)
    headers = build_hf_headers()
    if _origin(location) != _origin(url):
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return _Source(location, headers, meta.etag, meta.commit_hash, meta.size)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (
        parts.scheme,
        (parts.hostname or "").lower(),
        parts.port or {"http": 80, "https": 443}.get(parts.scheme),
    )


def _check_repo_path(repo_id: str, filename: str) -> None:
    """A file name from the repo (or its shard index) that stays inside the snapshot folder."""
    path = PurePosixPath(filename)
    if path.is_absolute() or ".." in path.parts or "\\" in filename or not path.parts:
        raise CheckpointError(
            f"{repo_id}: refusing the file name {filename!r}, which points outside the model"
        )


def _fetch_resumable(
    repo_id: str,
    filename: str,
    commit: str,
    *,
    force: bool,
    transfer: _Transfer,
    credited: int,
    notice: Notice,
) -> Path:
    """One weight file into the cache, continuing what an interrupted run left; returns its snapshot path.
    `credited`: the bytes of it that `transfer` already counts as done."""
    _check_repo_path(repo_id, filename)
    source = _file_source(repo_id, filename, commit)
    storage = repo_cache_dir(repo_id)
    blob = storage / "blobs" / source.etag
    pointer = storage / "snapshots" / source.commit / filename
    blob.parent.mkdir(parents=True, exist_ok=True)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    with _blob_lock(repo_id, source.etag, filename, notice):
        if force or not blob.is_file():  # else another process finished it while we waited
            partial = _partial_path(repo_id, source.etag)
            if force:
                partial.unlink(missing_ok=True)
            _receive(source, partial, repo_id, filename, transfer=transfer, credited=credited, notice=notice)
            os.replace(partial, blob)
        else:
            _partial_path(repo_id, source.etag).unlink(missing_ok=True)
            transfer.add((source.size or 0) - credited)
        if not pointer.exists():
            from huggingface_hub.file_download import _create_symlink

            _create_symlink(str(blob), str(pointer), new_blob=True)
    return pointer


@contextmanager
def _blob_lock(repo_id: str, etag: str, filename: str, notice: Notice) -> Iterator[None]:
    """Hold huggingface_hub's lock for this blob; when another download holds it, say so and wait."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    path = _lock_path(repo_id, etag)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            stack.enter_context(WeakFileLock(path, timeout=LOCK_PROBE))
        except Timeout:
            notice(f"another download of {filename} is running; waiting for it to finish")
            stack.enter_context(WeakFileLock(path))
        yield


def _receive(
    source: _Source,
    partial: Path,
    repo_id: str,
    filename: str,
    *,
    transfer: _Transfer,
    credited: int,
    notice: Notice,
) -> None:
    """Bring `partial` to the whole file with the etag's checksum: continue it, and once more from the start if
    the result does not match (bytes damaged on the disk or on the way)."""
    for attempt in (1, 2):
        with open(partial, "ab") as file:  # "ab": every write lands at the end, even after a truncate
            receiver = _Receiver(file, source, transfer)
            receiver.resume(partial, credited)
            _stream_all(source, receiver)
        if receiver.verified():
            return
        partial.unlink()
        transfer.add(-receiver.have)
        credited = 0
        if attempt == 2:
            raise CheckpointError(
                f"{repo_id}: {filename} does not match the hub's checksum even when fetched again; "
                "try again later"
            )
        notice(
            f"{filename}: the downloaded data does not match its checksum; fetching it again from the start"
        )


def _checksum(etag: str, size: int | None) -> Any:
    """A running hash that must end equal to `etag`: sha256 for LFS files, the git blob id for the others; None
    when the etag is neither (or the size a git blob id starts with is unknown)."""
    if SHA256_RE.fullmatch(etag):
        return hashlib.sha256()
    if COMMIT_RE.fullmatch(etag) and size is not None:
        return hashlib.sha1(f"blob {size}\0".encode())
    return None


class _Receiver:
    """Appends a blob's bytes to its partial file, counting them and keeping a running checksum of the whole."""

    def __init__(self, file: BinaryIO, source: _Source, transfer: _Transfer) -> None:
        self.file = file
        self.source = source
        self.transfer = transfer
        self.have = 0  # bytes in the file
        self.received = 0  # bytes received in this run, never decreasing
        self.digest = _checksum(source.etag, source.size)

    def resume(self, path: Path, credited: int) -> None:
        """Keep the bytes an earlier run wrote (at most the file's size), hash them, and count them as done."""
        have = path.stat().st_size
        if self.source.size is not None:
            have = min(have, self.source.size)
        self.file.truncate(have)
        if self.digest is not None:
            with open(path, "rb") as f:
                while chunk := f.read(min(HASH_CHUNK, have - f.tell())):
                    self.digest.update(chunk)
        self.have = have
        self.transfer.add(have - credited)

    def restart(self) -> None:
        self.file.truncate(0)
        self.transfer.add(-self.have)
        self.have = 0
        self.digest = _checksum(self.source.etag, self.source.size)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.file.flush()  # on disk before it counts: what progress reports is what a Ctrl-C leaves
        if self.digest is not None:
            self.digest.update(chunk)
        self.have += len(chunk)
        self.received += len(chunk)
        self.transfer.add(len(chunk))

    @property
    def complete(self) -> bool:
        return self.source.size is not None and self.have >= self.source.size

    def verified(self) -> bool:
        whole = self.have == self.source.size
        return whole and (self.digest is None or self.digest.hexdigest() == self.source.etag)


def _stream_all(source: _Source, receiver: _Receiver) -> None:
    """GET what the file lacks until it is whole. A dropped connection is retried from the last byte received,
    up to STREAM_RETRIES times in a row without progress (huggingface_hub's rule for its own transfers)."""
    failures = 0
    while not receiver.complete:
        received, error = receiver.received, None
        try:
            _stream_rest(source, receiver)
        except _network_errors() as e:
            error = e
        if receiver.complete:
            return
        failures = 0 if receiver.received > received else failures + 1
        if failures > STREAM_RETRIES:
            size = format_bytes(source.size or 0)
            raise error or OSError(f"the server keeps stopping at {format_bytes(receiver.have)} of {size}")
        time.sleep(RETRY_WAIT)


def _stream_rest(source: _Source, receiver: _Receiver) -> None:
    """One GET for the bytes the file lacks: `Range: bytes=<have>-` when it has some. A whole file in answer
    (200: the server ignored the range) restarts it; a range past the end (416) too. huggingface_hub's client
    follows the redirects (dropping the token on the way to another origin) and retries 429 and 5xx answers."""
    from huggingface_hub import constants
    from huggingface_hub.utils import http_stream_backoff

    headers = {**source.headers, "Accept-Encoding": "identity"}  # byte offsets must be the file's own
    if receiver.have:
        headers["Range"] = f"bytes={receiver.have}-"
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    with http_stream_backoff(
        "GET", source.url, headers=headers, timeout=timeout, retry_on_exceptions=()
    ) as response:
        if response.status_code == 416:
            receiver.restart()
            return
        if response.status_code >= 400:  # access was checked by the metadata request: a CDN or server fault
            raise OSError(f"{urlsplit(source.url).hostname} answered HTTP {response.status_code}")
        _check_start(response, receiver)
        if source.size is None:
            source.size = _announced_size(response)
        for chunk in response.iter_bytes():
            receiver.write(chunk)
    if source.size is None:  # no length announced: what came is the file
        source.size = receiver.have


def _check_start(response: Any, receiver: _Receiver) -> None:
    """Make the file match where the response starts: restart on a whole file, refuse any other range."""
    if response.status_code != 206:
        if receiver.have:
            receiver.restart()
        return
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != receiver.have:
        raise OSError(
            f"asked for bytes from {receiver.have:,}, the server sent {response.headers.get('Content-Range')}"
        )


def _announced_size(response: Any) -> int | None:
    """The whole file's size as a 200 or 206 response gives it, if it does."""
    if response.status_code == 206:
        size = response.headers.get("Content-Range", "").rpartition("/")[2]
    else:
        size = response.headers.get("Content-Length", "")
    return int(size) if size.isdigit() else None


# ---------------------------------------------------------------------------------------------------------
# Errors from the hub, as one line each
# ---------------------------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP library this huggingface_hub uses: httpx2 (2.x), httpx (1.x), requests."""
    names = {
        "httpx2": ("TransportError",),
        "httpx": ("TransportError",),
        "requests": ("ConnectionError", "Timeout"),
    }
    found = []
    for module_name, classes in names.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, c) for c in classes if module is not None and hasattr(module, c)]
    return tuple(found)


def _has_token() -> bool:
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:
        return False


def _login_hint() -> str:
    return "log in with `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN"


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _not_found(repo_id: str) -> Sc2Error:
    if _has_token():
        return InputError(f"{repo_id}: no such model on the hub, or your token cannot see it; check the name")
    return InputError(
        f"{repo_id}: no such model on the hub; check the name, or if it is private, {_login_hint()}"
    )


def _gated(repo_id: str) -> Sc2Error:
    page = f"{_endpoint()}/{repo_id}"
    if _has_token():
        return Sc2Error(f"{repo_id} is gated and your account has no access yet; request it at {page}")
    return Sc2Error(f"{repo_id} is gated: accept its terms at {page}, then {_login_hint()}")


def _unreachable(repo_id: str, error: BaseException) -> Sc2Error:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return Sc2Error(
        f"cannot reach the hub at {_endpoint()} to fetch {repo_id} ({reason}); check the network connection "
        "(or HF_ENDPOINT), or use a model already in the cache"
    )


def _http_error(repo_id: str, error: Any) -> Sc2Error:
    status = error.response.status_code if getattr(error, "response", None) is not None else None
    if status == 401:
        if "invalid credentials" in str(error).lower():
            return Sc2Error(f"the hub rejected your token for {repo_id}; {_login_hint()} again")
        return _not_found(repo_id)
    if status == 403:
        return Sc2Error(f"{repo_id}: access forbidden; your token lacks read access to it ({_login_hint()})")
    if status == 404:
        return _not_found(repo_id)
    if status == 429:
        return Sc2Error(
            f"the hub is rate-limiting downloads of {repo_id}; wait a minute and run the command again"
        )
    return Sc2Error(f"the hub answered HTTP {status or '(no status)'} for {repo_id}; try again later")


@contextmanager
def _hub_errors(repo_id: str, name: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line Sc2Errors that say what to do."""
    try:
        yield
    except Exception as e:
        error = _translate(e, repo_id, name, revision)
        if error is None:
            raise
        raise error from None


def _translate(error: BaseException, repo_id: str, name: str, revision: str | None) -> Sc2Error | None:
    """The Sc2Error for a huggingface_hub failure, or None for one we do not know (a bug: keep the traceback)."""
    from huggingface_hub import errors as hf

    if isinstance(error, hf.GatedRepoError):
        return _gated(repo_id)
    if isinstance(error, hf.RevisionNotFoundError):
        return InputError(f"{repo_id} has no revision {revision!r} (expected a branch, tag or commit)")
    if isinstance(error, hf.RepositoryNotFoundError):
        return _not_found(repo_id)
    if isinstance(error, hf.OfflineModeIsEnabled):
        return Sc2Error(f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE); unset it and retry")
    if isinstance(error, hf.HfHubHTTPError):
        return _http_error(repo_id, error)
    if isinstance(error, (hf.LocalEntryNotFoundError, ValueError)) and error.__cause__ is not None:
        return _translate(error.__cause__, repo_id, name, revision)  # a failed request, wrapped
    if isinstance(error, (hf.LocalEntryNotFoundError, *_network_errors())):
        return _unreachable(repo_id, error)
    if isinstance(error, OSError):  # the size check after retries, a full disk, an unwritable cache
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Sc2Error(
            f"download of {repo_id} failed: {reason}; run `{download_command(name, revision)}` again"
        )
    return None


# ---------------------------------------------------------------------------------------------------------
# Listing and removing cached models
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedModel:
    """One cached revision of a StarCoder2 repo."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]
    size: int  # bytes on disk
    path: Path
    complete: bool  # every file inference needs is there

    @property
    def revision(self) -> str:
        """The branches or tags that point here, else the short commit."""
        return ", ".join(self.refs) if self.refs else self.commit[:12]


def _is_starcoder2(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("model_type") == "starcoder2"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


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
        )
        for repo in scan_cache_dir(cache).repos
        if repo.repo_type == "model"
        for rev in repo.revisions
        if _is_starcoder2(Path(rev.snapshot_path))
    ]
    return sorted(models, key=lambda m: (m.repo_id.lower(), "main" not in m.refs, not m.refs, m.revision))


def find_cached(name: str, revision: str | None = None) -> list[CachedModel]:
    """The cached revisions of one model (all of them, or those a branch, tag or commit prefix names)."""
    repo_id = _repo_id(name)
    found = [m for m in cached_models() if m.repo_id.lower() == repo_id.lower()]
    if revision:
        found = [m for m in found if revision in m.refs or m.commit.startswith(revision)]
    if not found:
        at = f" at revision {revision}" if revision else ""
        raise InputError(f"{repo_id}{at} is not in the cache (see `sc2 models`)")
    return found


def remove_model(name: str, revision: str | None = None) -> tuple[list[CachedModel], int]:
    """Delete cached revisions of a model (blobs other revisions still use are kept); returns them and the bytes
    freed."""
    doomed = find_cached(name, revision)
    from huggingface_hub import scan_cache_dir

    strategy = scan_cache_dir(hub_cache()).delete_revisions(*(m.commit for m in doomed))
    strategy.execute()
    return doomed, strategy.expected_freed_size
