"""A repository built in the tests: a few commits of Python, one of which adds known lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.repo.conftest import SHAPES, make_repo

ADDED = """

    def perimeter(self):
        return 2 * (self.width + self.height)
"""
MAIN = """from shapes import Rectangle


def describe(rect):
    return rect.area()
"""


def commit(root: Path, files: dict[str, str], message: str) -> None:
    git = ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    for path, content in files.items():
        (root / path).write_text(content)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)


@pytest.fixture
def history(tmp_path):
    root = make_repo(tmp_path / "proj", {"shapes.py": SHAPES, "README.md": "# shapes\nsome words here\n"})
    commit(root, {"main.py": MAIN}, "main")
    commit(root, {"shapes.py": SHAPES + ADDED}, "perimeter")
    commit(root, {"main.py": MAIN.replace("rect.area()", "rect.area() + 0")}, "later edit")
    return root
