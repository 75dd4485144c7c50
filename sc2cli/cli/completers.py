"""Shell-completion candidates for sc2's model names and settings, cheap enough to compute at every TAB.

The bash, zsh and fish scripts run `sc2` with `_SC2_COMPLETE=...` at each TAB, and Typer calls these functions
(the `autocompletion=` of an option or argument) with the text typed so far. Each returns `(value, help)` pairs;
zsh and fish show the help next to the value, bash only the values.

This module imports only the standard library at import time (`sc2 --help` loads it), then
`sc2cli.checkpoint.names` for the aliases and `sc2cli.settings` for the settings, both torch-free: never torch,
and not huggingface_hub (its cache folder is worked out from the same environment variables here). The hub cache
is read by listing its `models--owner--name` folders and reading each snapshot's small config.json, never with
`scan_cache_dir`.

A name that looks like a path (`./`, `/`, `~`) gets no candidates, so each shell falls back to completing file
names, which it does better (bash's `complete -o default`, zsh's `_files`, fish's own file completion).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

Candidates = list[tuple[str, str]]  # (value, one line of help)

TINY_HELP = "the small model shipped with sc2, offline"


def _hub_aliases() -> dict[str, str]:
    """The aliases of hub repos (3b, 7b, 15b), from checkpoint.names (stdlib only: no torch, no hub client)."""
    from ..checkpoint.names import ALIASES

    return {alias: target for alias, target in ALIASES.items() if alias != "tiny"}


# One line of help per setting (tests check every key of sc2cli.settings.KEYS has one). Help text here has no
# quotes or apostrophes: Typer's zsh script passes it through `eval`, which drops them.
KEY_HELP: dict[str, str] = {
    "model": "checkpoint folder, hub repo id or alias: tiny, 3b, 7b, 15b",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "dtype": "auto, bf16, fp16 or fp32",
    "attn": "attention kernel: auto, sdpa, flash or eager",
    "max_tokens": "most tokens to generate, a whole number",
    "prompt_budget": "most prompt tokens, a whole number of at least 16, or auto",
    "offline": "true: use the local cache only, never the network",
    "quantize": "none, or int8 weights",
    "engine": "none, or a serving engine: openai+http://HOST:PORT/v1 or llama+http://HOST:PORT",
}

# The values offered for each setting (tests check each one passes sc2cli.settings.parse_value). No entry:
# nothing sensible to offer (a number), and the shell falls back to its default completion.
VALUES: dict[str, Candidates] = {
    "device": [
        ("auto", "the best available device"),
        ("cpu", "the processor"),
        ("cuda", "the first NVIDIA GPU, cuda:N for another"),
        ("mps", "Apple silicon GPU"),
    ],
    "dtype": [
        ("auto", "chosen per device"),
        ("bf16", "bfloat16"),
        ("fp16", "float16"),
        ("fp32", "float32"),
    ],
    "attn": [
        ("auto", "chosen per device"),
        ("sdpa", "torch scaled_dot_product_attention"),
        ("flash", "the flash-attn package"),
        ("eager", "plain PyTorch, the reference"),
    ],
    "quantize": [
        ("none", "the weights as the checkpoint has them"),
        ("int8", "int8 weights, faster decode on CPUs"),
    ],
    "offline": [("true", "use the local cache only"), ("false", "fetch from the hub when needed")],
    "prompt_budget": [("auto", "chosen per device")],
    "engine": [("none", "run the model in this process or a warm server")],
}

# A model's config.json is a few kB; anything bigger is not worth reading at a TAB.
_CONFIG_MAX_BYTES = 1 << 20


def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub.constants computes it (HF_HUB_CACHE, else the legacy
    HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/...), read
    from the environment at each call."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    home = os.path.expandvars(os.path.expanduser(home))
    cache = (
        os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    )
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def _is_starcoder2(config: Path) -> bool:
    try:
        with config.open("rb") as f:
            raw = f.read(_CONFIG_MAX_BYTES + 1)
        if len(raw) > _CONFIG_MAX_BYTES:
            return False
        data = json.loads(raw)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "starcoder2"


def _has_starcoder2_snapshot(repo_folder: Path) -> bool:
    try:
        snapshots = sorted(os.scandir(repo_folder / "snapshots"), key=lambda e: e.name)
    except OSError:
        return False
    return any(_is_starcoder2(Path(s.path) / "config.json") for s in snapshots)


def cached_repos(prefix: str = "") -> list[str]:
    """Repo ids (owner/name) of the StarCoder2 models in the hub cache whose id starts with `prefix` (any
    case); other models' folders are skipped by their config.json's model_type."""
    try:
        entries = list(os.scandir(hub_cache()))
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.name.startswith("models--"):
            continue
        repo_id = entry.name.removeprefix("models--").replace("--", "/")
        if repo_id.lower().startswith(prefix.lower()) and _has_starcoder2_snapshot(Path(entry.path)):
            found.append(repo_id)
    return sorted(found, key=str.lower)


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in text)


def _alias_help(repo_id: str, cached: set[str]) -> str:
    return f"{repo_id}, cached" if repo_id.lower() in cached else repo_id


def model_names(incomplete: str) -> Candidates:
    """`--model`/`-m` and `sc2 config set model`: the aliases, then the StarCoder2 repos in the hub cache.
    A path gets nothing, so the shell completes file names."""
    if _looks_like_path(incomplete):
        return []
    cached = cached_repos()
    cached_lower = {r.lower() for r in cached}
    found: Candidates = [("tiny", TINY_HELP)] if "tiny".startswith(incomplete.lower()) else []
    found += [
        (alias, _alias_help(repo_id, cached_lower))
        for alias, repo_id in _hub_aliases().items()
        if alias.startswith(incomplete.lower())
    ]
    found += [(r, "in the Hugging Face cache") for r in cached if r.startswith(incomplete)]
    return found


def hub_model_names(incomplete: str) -> Candidates:
    """`sc2 download`: the hub aliases and the cached repos (fetch again, --verify); not tiny, which is local."""
    return [(name, note) for name, note in model_names(incomplete) if name != "tiny"]


def cached_model_names(incomplete: str) -> Candidates:
    """`sc2 rm`: only what is in the cache: its repos, and the aliases of those that are."""
    cached = cached_repos()
    cached_lower = {r.lower() for r in cached}
    found: Candidates = [
        (alias, f"{repo_id}, cached")
        for alias, repo_id in _hub_aliases().items()
        if repo_id.lower() in cached_lower and alias.startswith(incomplete.lower())
    ]
    found += [(r, "in the Hugging Face cache") for r in cached if r.startswith(incomplete)]
    return found


def _key(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def setting_keys(incomplete: str) -> Candidates:
    """`sc2 config set <TAB>`: every setting, with one line of help."""
    from ..settings import KEYS

    return [(key, KEY_HELP.get(key, "")) for key in KEYS if key.startswith(_key(incomplete))]


def _shown(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def set_setting_keys(incomplete: str) -> Candidates:
    """`sc2 config unset <TAB>`: every setting, its help saying what the file holds, and any unknown key the
    file has (unset removes those too)."""
    from ..errors import InputError
    from ..settings import KEYS, read_config_file

    try:
        stored = read_config_file()
    except (InputError, OSError):  # a broken file: complete the keys anyway; `sc2 config` reports it
        stored = {}
    found = [
        (key, f"set to {_shown(stored[key])} in the file" if key in stored else KEY_HELP.get(key, ""))
        for key in KEYS
        if key.startswith(_key(incomplete))
    ]
    found += [
        (key, "unknown setting in the file")
        for key in stored
        if key not in KEYS and key.startswith(incomplete)
    ]
    return found


def setting_values(ctx: Any, incomplete: str) -> Candidates:
    """`sc2 config set KEY <TAB>`: the choices for KEY (model names for model); nothing for a number."""
    key = _key(str((getattr(ctx, "params", None) or {}).get("key") or ""))
    if key == "model":
        return model_names(incomplete)
    return [(v, note) for v, note in VALUES.get(key, []) if v.startswith(incomplete.lower())]


def values_of(key: str) -> Callable[[str], Candidates]:
    """A completer for an option that takes one setting's values (`--device`, `--dtype`, ...)."""
    if key not in VALUES:
        raise KeyError(f"no values to complete for {key!r}")

    def complete(incomplete: str) -> Candidates:
        return [(v, note) for v, note in VALUES[key] if v.startswith(incomplete.lower())]

    complete.__name__ = f"complete_{key}"
    return complete
