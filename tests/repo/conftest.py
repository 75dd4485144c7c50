"""Repositories built in the tests: git init in a temporary folder, files committed, an index cache of
their own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

# a small class the context tests and the evaluation's repositories both commit
SHAPES = """class Rectangle:
    def __init__(self, width, height):
        self.width = width
        self.height = height

    def area(self):
        return self.width * self.height
"""


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SC2_CACHE_DIR", str(folder))
    return folder


def make_repo(root: Path, files: dict[str, str | bytes], ignore: str = "") -> Path:
    """A git repository at `root` with `files` committed, and `.gitignore` holding `ignore`."""
    root.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    if ignore:
        (root / ".gitignore").write_text(ignore)
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    return root
