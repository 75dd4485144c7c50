"""Fetching a model from the Hugging Face hub into its standard cache.

Downloads go through huggingface_hub, so HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE
behave as with every other hub tool, and a model fetched by one of them is reused here. Only what inference
needs is fetched (see layout.py); the weights go through transfer.py, which resumes across processes.

This module never prints: download progress goes to a `progress(bytes_done, bytes_total)` callback (bytes
kept from an interrupted run count as done), one-line messages to a `notice(text)` callback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, Sc2Error
from .cache import _cached_commit, checksum_mismatches, format_bytes, hub_cache, is_offline, repo_cache_dir
from .hub_errors import hub_errors
from .layout import (
    CONFIG,
    INDEX,
    OPTIONAL_FILES,
    PICKLE_SUFFIXES,
    SINGLE,
    TOKENIZER,
    check_model_type,
    check_snapshot,
    damaged_files,
    json_problem,
    missing_files,
    shard_names,
)
from .names import check_revision, repo_id_of
from .transfer import (
    Notice,
    Progress,
    Transfer,
    drop_stale_partials,
    expected_size,
    fetch_resumable,
    is_resumable,
    lfs_sha256,
    partial_size,
)


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
    repo_id = repo_id_of(name)
    check_revision(revision)
    if is_offline():
        raise Sc2Error(f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE); unset it and retry")
    with hub_errors(repo_id, name, revision):
        folder = _download(
            repo_id, name, revision, force=force, verify=verify, progress=progress, notice=notice or _ignore
        )
    missing = missing_files(folder)
    if missing:
        raise CheckpointError(f"{repo_id}: {missing[0]} is missing after the download; run the command again")
    check_snapshot(folder, repo_id, name)
    return folder


TOKENIZER_FILES = (TOKENIZER, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def fetch_tokenizer(name: str, *, revision: str | None = None, offline: bool | None = None) -> Path:
    """A hub model's config.json and tokenizer files, without its weights: enough to build prompts for an
    engine that runs the weights elsewhere. From the cache when they are there (no network), else fetched
    into the same snapshot folder a full download uses."""
    repo_id = repo_id_of(name)
    check_revision(revision)
    cached = _cached_tokenizer(repo_id, revision)
    if cached is not None:
        return cached
    if is_offline(offline):
        raise Sc2Error(
            f"{repo_id}'s tokenizer is not in the cache and offline mode is on; "
            f"run `sc2 download {name} --tokenizer-only` online"
        )
    with hub_errors(repo_id, name, revision):
        info = _repo_info(repo_id, revision)
        siblings = {s.rfilename for s in info.siblings or []}
        _check_declared_type(info, repo_id)
        if CONFIG not in siblings or TOKENIZER not in siblings:
            missing = CONFIG if CONFIG not in siblings else TOKENIZER
            raise CheckpointError(f"{repo_id} has no {missing}: sc2 cannot build prompts for it")
        config = _fetch_json(repo_id, CONFIG, revision or "main", force=False)  # by name: records the ref
        check_model_type(_read_config(config, repo_id), repo_id)
        for filename in TOKENIZER_FILES:
            if filename in siblings:
                _fetch_json(repo_id, filename, info.sha, force=False)
    return config.parent


def _cached_tokenizer(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot holding config.json and an intact tokenizer.json, weights or not."""
    commit = _cached_commit(repo_cache_dir(repo_id), revision)
    folder = repo_cache_dir(repo_id) / "snapshots" / (commit or "-")
    if commit is None or any(json_problem(folder / f) for f in (CONFIG, TOKENIZER) if (folder / f).is_file()):
        return None
    return folder if (folder / CONFIG).is_file() and (folder / TOKENIZER).is_file() else None


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
    check_model_type(_read_config(config, repo_id), repo_id)
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
    if not force and json_problem(path):
        path = _fetch(repo_id, filename, revision, force=True)
    problem = json_problem(path)
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
        shards = shard_names(fetch(INDEX))
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


def _wrong_size(folder: Path, files: Iterable[str], siblings: dict[str, Any]) -> set[str]:
    """Cached files whose size differs from the hub's record: truncated or corrupt, to fetch again."""
    wrong = set()
    for name in files:
        expected = expected_size(siblings[name])
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
    one progress total. Weight files go through `fetch_resumable`, the rest through huggingface_hub."""
    total = sum(expected_size(siblings[f]) or 0 for f in files)
    resumable = [f for f in files if is_resumable(f, siblings[f])]
    if resumable:
        drop_stale_partials(repo_id, keep={lfs_sha256(siblings[f]) for f in resumable})
    kept = {f: partial_size(repo_id, siblings[f]) for f in resumable if f not in force_files}
    check_disk_space(repo_id, total - sum(kept.values()), hub_cache())
    transfer = Transfer(total, progress, done=sum(kept.values()))
    for name in files:
        force = name in force_files
        if name in resumable:
            fetch_resumable(
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
    repo_id: str, filename: str, revision: str, *, force: bool, transfer: Transfer | None = None
) -> Path:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=hub_cache(),
        force_download=force,
        tqdm_class=(transfer or Transfer(0, None)).bar_class,  # type: ignore[arg-type]
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


def _check_declared_type(info: Any, repo_id: str) -> None:
    """Refuse another architecture before fetching anything, when the hub's listing says which it is."""
    declared = (getattr(info, "config", None) or {}).get("model_type")
    if declared is not None:
        check_model_type({"model_type": declared}, repo_id)
