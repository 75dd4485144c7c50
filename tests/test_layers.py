"""The package's layers, as docs/architecture.md draws them: imports run one way (cli -> session ->
completion / serve -> checkpoint -> model), and what must stay torch-free does."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sc2cli"

LAYERS = {
    "model",
    "checkpoint",
    "completion",
    "serve",
    "cli",
    "session",
    "bench",
    "dev",
    "engines",
    "repo",
    "eval",
    "settings",
}

# layer -> layers it must never import (directly or inside a function)
FORBIDDEN = {
    "model": {"checkpoint", "completion", "serve", "cli", "session", "bench", "dev", "settings", "engines"},
    "checkpoint": {"completion", "serve", "cli", "session", "bench", "dev", "engines"},
    "completion": {"checkpoint", "serve", "cli", "session", "bench", "dev", "engines"},
    "serve": {"cli", "session", "bench", "dev"},  # repo: the chunks editors send (input_extra)
    "session": {"cli", "bench", "dev"},
    "engines": {"cli", "session", "serve", "bench", "dev"},
    "bench": {"cli", "dev", "serve"},
    "repo": {"checkpoint", "serve", "cli", "session", "bench", "dev", "eval", "model", "engines"},
    "eval": {"cli", "serve", "dev", "bench"},
    # the foundations import no other layer (folders.py, errors.py and settings.py are imported by all)
    "settings": LAYERS - {"settings"},
    "errors": LAYERS,
}


def _layer(module: str) -> str:
    """`sc2cli.completion.prompt` -> `completion`; `sc2cli.session` -> `session`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every sc2cli module `path` imports, anywhere in the file, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found |= {n for n in [target, *names] if n.startswith("sc2cli")}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sc2cli")}
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_never_run_back_up(path):
    layer = _layer(_module_name(path))
    wrong = sorted(
        m for m in _imports(path) if _layer(m) in FORBIDDEN.get(layer, set()) and _layer(m) != layer
    )
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {wrong}"


def test_only_dev_imports_dev():
    users = [
        p
        for p in _sources()
        if _layer(_module_name(p)) != "dev" and any(_layer(m) == "dev" for m in _imports(p))
    ]
    assert not users


TORCH_FREE = [
    "sc2cli",
    "sc2cli.settings",
    "sc2cli.session",
    "sc2cli.cli",
    "sc2cli.model.config",
    "sc2cli.model.device",
    "sc2cli.checkpoint.open",
    "sc2cli.checkpoint.cache",
    "sc2cli.checkpoint.gguf",  # bf16 checkpoints convert without torch; others import it to round
    "sc2cli.completion.request",
    "sc2cli.completion.events",
    "sc2cli.completion.cursor",
    "sc2cli.completion.postprocess",
    "sc2cli.completion.assembly",
    "sc2cli.engines.remote",
    "sc2cli.checkpoint.download",
    "sc2cli.completion.sources",
    "sc2cli.serve.client",
    "sc2cli.serve.runtime",
    "sc2cli.serve.server",  # a gateway to a remote engine runs no model
    "sc2cli.repo.context",
]


def test_what_needs_no_model_imports_no_torch():
    """`--help`, `--show-prompt`, `models`, `config` and the warm server's client never pay for torch."""
    code = f"import sys\nfor m in {TORCH_FREE!r}:\n    __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
