"""Automatic context from a git repository built in the test: imports across files, similar chunks,
and files git ignores (a secret among them) that never reach a prompt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sc2cli.repo.context import auto_context
from sc2cli.repo.files import eligible, tracked_files
from sc2cli.repo.imports import imported_files
from sc2cli.repo.index import RepoIndex, chunk_spans

from .conftest import SHAPES, make_repo

SECRET = "sk-live-7f3a9c1e5b"

GEOMETRY = "".join(f"def helper_{i}(x):\n    return x + {i}\n\n" for i in range(30)) + (
    "def rectangle_perimeter(rect):\n    return 2 * (rect.width + rect.height)\n"
)
MAIN = """from pkg.shapes import Rectangle
from . import settings_local
from .units import metres


def describe(rect):
    perimeter = rectangle_perimeter(rect)
    return perimeter
"""


@pytest.fixture
def repo(tmp_path):
    return make_repo(
        tmp_path / "proj",
        {
            "pkg/__init__.py": "",
            "pkg/shapes.py": SHAPES,
            "pkg/units.py": "def metres(x):\n    return x\n",
            "pkg/geometry.py": GEOMETRY,
            "pkg/main.py": MAIN,
            "pkg/settings_local.py": f"TOKEN = '{SECRET}'\n",  # ignored below: never committed
            ".env": f"API_KEY={SECRET}\n",
            "vendor/lib/rect.py": "def rectangle_perimeter(rect): return 0\n",
            "logo.png": b"\x89PNG\r\n\x1a\n\0\0rectangle_perimeter",
            "web/app.ts": "import { area } from './geom';\nconst x = require('../lib/util');\n",
            "web/geom.ts": "export function area() {}\n",
            "lib/util.js": "module.exports = {};\n",
        },
        ignore=".env\npkg/settings_local.py\n",
    )


def _select(repo: Path, tokens: int = 2000):
    text = (repo / "pkg/main.py").read_text()
    cursor = text.index("rectangle_perimeter(rect)")
    return auto_context(repo / "pkg/main.py", text[:cursor], text[cursor:], tokens)


def test_imports_come_first_then_similar_chunks(repo):
    chosen = _select(repo)
    paths = [d.path for d in chosen.documents]
    assert paths[:2] == ["pkg/shapes.py", "pkg/units.py"]
    assert [d.origin for d in chosen.documents[:2]] == ["import", "import"]
    similar = [d for d in chosen.documents if d.origin.startswith("similar")]
    assert similar and similar[0].path == "pkg/geometry.py" and "def rectangle_perimeter" in similar[0].text
    assert "pkg/main.py" not in paths  # the file itself is in the prompt already


def test_ignored_vendored_and_binary_files_never_enter(repo):
    tracked = {f.path for f in tracked_files(repo)}
    assert ".env" not in tracked and "pkg/settings_local.py" not in tracked  # git ignores them
    assert "vendor/lib/rect.py" not in tracked and "logo.png" not in tracked
    everything = "".join(d.text for d in _select(repo, 100_000).documents)
    assert SECRET not in everything  # even though main.py imports settings_local


def test_the_secret_never_reaches_the_prompt_through_the_cli(repo, tmp_path):

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run(
        [sys.executable, "-m", "sc2cli", "complete", "pkg/main.py:7:17", "-m", "tiny", "--show-prompt", "-v"],
        cwd=repo, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "<file_sep>pkg/shapes.py" in out.stdout and SECRET not in out.stdout + out.stderr
    assert "context pkg/shapes.py (import):" in out.stderr and "tokens" in out.stderr
    off = subprocess.run(
        [sys.executable, "-m", "sc2cli", "complete", "pkg/main.py:7:17", "-m", "tiny", "--show-prompt",
         "--no-auto-context"],
        cwd=repo, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "pkg/shapes.py" not in off.stdout


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("pkg/main.py", MAIN, ["pkg/shapes.py", "pkg/units.py"]),
        ("web/app.ts", "import { area } from './geom';\nconst x = require('../lib/util');\n", ["web/geom.ts", "lib/util.js"]),
        ("src/a.c", '#include "b.h"\n#include <stdio.h>\n', ["include/b.h"]),
        ("src/lib.rs", "mod parser;\npub mod util;\n", ["src/parser.rs", "src/util/mod.rs"]),
        ("docs/notes.md", "import pkg.shapes", []),
    ],
)  # fmt: skip
def test_import_rules(path, text, expected):
    tracked = ["pkg/shapes.py", "pkg/units.py", "web/geom.ts", "lib/util.js", "include/b.h", "src/parser.rs",
               "src/util/mod.rs", "pkg/__init__.py"]  # fmt: skip
    assert imported_files(path, text, tracked) == expected


def test_src_layout_and_submodules_resolve():
    tracked = ["src/app/__init__.py", "src/app/db.py", "src/app/models/user.py", "tests/test_db.py"]
    text = "import app.db\nfrom app.models import user\n"
    assert imported_files("tests/test_db.py", text, tracked) == ["src/app/db.py", "src/app/models/user.py"]


def test_the_index_updates_only_what_changed(repo):
    index = RepoIndex(repo)
    first = index.refresh()
    assert first.indexed == first.files > 5
    assert index.refresh().indexed == 0  # nothing changed: nothing read again
    (repo / "pkg/units.py").write_text("def kilometres_to_miles(x):\n    return x * 0.621\n")
    (repo / "pkg/units.py").touch()
    (repo / "pkg/geometry.py").unlink()
    again = index.refresh()
    assert again.indexed == 1 and again.removed == 1
    hits = index.search(["kilometres_to_miles"], 5)
    assert [h.path for h in hits] == ["pkg/units.py"]
    assert not index.search(["rectangle_perimeter"], 5, exclude={"pkg/main.py"})
    reopened = RepoIndex(repo)  # the cache on disk: a new process reads nothing again
    assert reopened.refresh().indexed == 0
    assert reopened.db_path == index.db_path and reopened.db_path.is_relative_to(
        Path(os.environ["SC2_CACHE_DIR"])
    )


def test_outside_git_or_without_git_there_is_no_context(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("X = 1\n")
    assert auto_context(tmp_path / "a.py", "import b\n", "", 1000).documents == ()
    repo = make_repo(tmp_path / "r", {"a.py": "import b\n", "b.py": "X = 1\n"})
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # git missing
    assert auto_context(repo / "a.py", "import b\n", "", 1000).documents == ()


def test_chunks_cover_every_line():
    for n in [0, 1, 23, 24, 25, 37, 100]:
        spans = chunk_spans(n)
        covered = {i for s, e in spans for i in range(s, e)}
        assert covered == set(range(n)) and all(e - s <= 24 for s, e in spans)


@pytest.mark.parametrize(
    "path",
    [
        "node_modules/x/index.js",
        "third_party/a.c",
        ".env.local",
        "certs/server.pem",
        "a/id_rsa",
        ".gitignore",
        "x.min.js",
    ],
)
def test_paths_never_indexed(path):
    assert not eligible(path)


def test_format_json_reports_the_documents(repo):
    from sc2cli.completion.prompt import Document, FimTask, build_prompt, context_report
    from sc2cli.completion.tokenizer import Tokenizer

    from ..fixtures import require_tokenizer_fixture

    real = Tokenizer.from_folder(require_tokenizer_fixture())
    task = FimTask("x = ", "\n", "m.py", "r", (Document("a.py", "A = 1\n", "import"),))
    report = context_report(build_prompt(task, real, 500))
    assert report == [{"path": "a.py", "origin": "import", "tokens": 1 + len(real.encode("a.py\nA = 1\n"))}]
    assert json.dumps(report)


def test_an_index_from_another_version_is_rebuilt(repo, tmp_path):
    import sqlite3

    db_path = tmp_path / "old.sqlite"
    old = sqlite3.connect(db_path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema', '0');"
        "CREATE TABLE postings (token TEXT, chunk_id INTEGER, file_id INTEGER, tf INTEGER);"
        "INSERT INTO postings VALUES ('stale', 1, 1, 1);"
    )
    old.commit()
    old.close()
    index = RepoIndex(repo, db_path)
    assert index.refresh().indexed > 5
    assert [h.path for h in index.search(["rectangle_perimeter"], 3, exclude={"pkg/main.py"})] == [
        "pkg/geometry.py"
    ]
    assert not index.search(["stale"], 3)
