"""Model names to checkpoint folders: local folders, aliases, and repos on the Hugging Face hub.

Downloads go through huggingface_hub into its standard cache, so HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE behave as with every other hub tool, and a model fetched by one of them is reused here. Only what
inference needs is fetched: config.json, generation_config.json, the tokenizer files and the safetensors weights
(one file, or the index and its shards); pickled `*.bin` weights never, since loading them can run code.

A cached model is found by reading the cache folder, without the network and without importing huggingface_hub's
HTTP stack (only its constants), so completion on a cached model stays offline and starts fast. Cached files get
cheap checks every time (JSON that parses, safetensors whose size matches their header) and full checksums on
request (`download(verify=True)`): every blob in the cache is named by its sha256 (LFS files) or git blob id.

A transfer cut off mid-file resumes where it stopped (huggingface_hub retries with a Range request, from the last
whole 10 MB chunk). Files completed before an interrupted run (Ctrl-C) stay in the cache, so running the command
again fetches only the rest; the partly fetched file itself starts over, as huggingface_hub 2.x discards it.

This module never prints: download progress goes to a `progress(bytes_done, bytes_total)` callback.
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .errors import CheckpointError, InputError, Sc2Error

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

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
REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")
PARSE_LIMIT = 256 << 10  # JSON files up to this size are parsed in full; larger ones get a tail check
HASH_CHUNK = 8 << 20


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
    return download(name, revision=revision, progress=progress)


def download(
    name: str,
    *,
    revision: str | None = None,
    force: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Fetch what inference needs of a hub model into the cache and return its snapshot folder. Files already
    cached are kept (all re-fetched with `force`); damaged ones, or with `verify` any whose checksum is wrong,
    are fetched again. Refuses up front when the disk cannot hold the download."""
    repo_id = _repo_id(name)
    _check_revision(revision)
    if is_offline():
        raise Sc2Error(f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE); unset it and retry")
    with _hub_errors(repo_id, name, revision):
        folder = _download(repo_id, name, revision, force=force, verify=verify, progress=progress)
    missing = missing_files(folder)
    if missing:
        raise CheckpointError(f"{repo_id}: {missing[0]} is missing after the download; run the command again")
    _check_snapshot(folder, repo_id, name)
    return folder


def _download(
    repo_id: str, name: str, revision: str | None, *, force: bool, verify: bool, progress: Progress | None
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
    _fetch_all(
        repo_id, info.sha, todo, siblings, force_files=set(todo) if force else stale, progress=progress
    )
    if verify:
        _repair_checksums(repo_id, info.sha, folder, wanted, siblings, progress)
    return folder


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
) -> None:
    """Fetch again every file whose checksum is wrong; fail if a fresh copy is still wrong."""
    bad = checksum_mismatches(folder, files)
    if not bad:
        return
    _fetch_all(repo_id, commit, bad, siblings, force_files=set(bad), progress=progress)
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
) -> None:
    """Download `files` one after the other, after checking they fit on the disk, with one progress total."""
    total = sum(_expected_size(siblings[f]) or 0 for f in files)
    check_disk_space(repo_id, total, hub_cache())
    transfer = _Transfer(total, progress)
    for name in files:
        _fetch(repo_id, name, commit, force=name in force_files, transfer=transfer)


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

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self._lock = threading.Lock()
        self.bar_class = self._make_bar_class()
        if progress is not None and total:
            progress(0, total)

    def add(self, n: float) -> None:
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
