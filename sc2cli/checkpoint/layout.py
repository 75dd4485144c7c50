"""What a checkpoint folder holds, in one place: the files inference needs, which of them are missing or
damaged, and the safetensors files to load. Torch-free: the cache check runs before any model loads.

A folder is `config.json`, a tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt` on the hub), and
safetensors weights: `model.safetensors`, or `model.safetensors.index.json` and the shards it names.
Pickled `*.bin` weights are never fetched nor loaded: loading them can run code.
"""

from __future__ import annotations

import functools
import json
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..model.config import ModelConfig, read_config_json
from .names import download_command
from .safetensors import safetensors_problem

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER = "tokenizer.json"
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
PARSE_LIMIT = 256 << 10  # JSON files up to this size are parsed in full; larger ones get a tail check


def config_json(folder: Path) -> dict[str, Any]:
    """A folder's config.json as a dict, read and parsed once per version of the file."""
    path = folder / CONFIG
    try:
        stat = path.stat()
    except OSError:
        return read_config_json(path)  # raises its one-line error
    return _config_version(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _config_version(path: Path, size: int, mtime_ns: int) -> dict[str, Any]:
    return read_config_json(path)


def read_config(folder: Path) -> ModelConfig:
    """A folder's config.json as a ModelConfig."""
    return ModelConfig.from_dict(config_json(folder), str(folder / CONFIG))


def shard_names(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return list(dict.fromkeys(str(name) for name in weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: unreadable shard index ({e})") from None


def weight_files(folder: Path) -> list[str]:
    """The safetensors files a snapshot needs: the shards its index names, or model.safetensors."""
    if (folder / INDEX).is_file():
        return [INDEX, *shard_names(folder / INDEX)]
    return [SINGLE]


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files to load from a folder: the shards named by the index, or the single file, or
    (a folder made by hand) whatever safetensors files it holds."""
    if (folder / INDEX).is_file():
        files = [folder / name for name in shard_names(folder / INDEX)]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard named in {INDEX} is missing; re-download the model")
        return files
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CheckpointError(
            f"{folder}: only pickled *.bin weights here; sc2 loads safetensors only (pickles can run code). "
            "Use a revision with model.safetensors"
        )
    raise CheckpointError(f"{folder}: no model.safetensors (or shard index) in this folder")


def missing_files(folder: Path) -> list[str]:
    """Files inference needs that `folder` lacks (a link to a missing blob counts as missing)."""
    missing = [] if (folder / CONFIG).is_file() else [CONFIG]
    with suppress(CheckpointError):  # a damaged index is reported by damaged_files
        missing += [name for name in weight_files(folder) if not (folder / name).is_file()]
    has_bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (folder / TOKENIZER).is_file() and not has_bpe_files:
        missing.append(TOKENIZER)
    return missing


def damaged_files(folder: Path) -> dict[str, str]:
    """Cheap checks of the cached files, run on every use: {file: what is wrong}. JSON files must parse (or, when
    large, end like JSON); safetensors files must be exactly as long as their header says: a truncated
    download fails here, not halfway through loading."""
    problems: dict[str, str] = {}
    for name in (CONFIG, *OPTIONAL_FILES, INDEX):
        path = folder / name
        if name.endswith(".json") and path.is_file():
            problem = json_problem(path)
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


def json_problem(path: Path) -> str | None:
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


def check_model_type(raw: dict[str, Any], repo_id: str) -> None:
    model_type = raw.get("model_type")
    if model_type != "starcoder2":
        raise CheckpointError(
            f"{repo_id} is not a StarCoder2 model (config.json has model_type {model_type!r})"
        )


def check_snapshot(folder: Path, repo_id: str, name: str) -> ModelConfig:
    """A cached snapshot is usable: StarCoder2, no damaged file; else one line saying how to re-download.
    Returns its config (config.json parsed here, once)."""
    problems = damaged_files(folder)
    if problems:
        file, problem = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{repo_id}: cached {file} is damaged: {problem}{more}; "
            f"re-download it with `{download_command(name, force=True)}`"
        )
    raw = config_json(folder)
    check_model_type(raw, repo_id)
    return ModelConfig.from_dict(raw, f"{repo_id} config.json")
