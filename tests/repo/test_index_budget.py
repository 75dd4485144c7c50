"""Indexing within a time budget: a completion indexes part of a large repository (the files modified
last first), keeps what it indexed for the next, and the finished index searches as one built at once;
`git ls-files` runs only when git's index changed; a process trusts an index it just found whole."""

from __future__ import annotations

import os
import subprocess

import pytest

from sc2cli.repo import context
from sc2cli.repo import index as index_module
from sc2cli.repo.context import auto_context
from sc2cli.repo.index import RepoIndex

from .conftest import make_repo

FILES = 12


@pytest.fixture
def repo(tmp_path):
    files = {f"pkg/mod_{i}.py": f"def function_{i}(value):\n    return value * {i} + shared_helper(value)\n"
             for i in range(FILES)}  # fmt: skip
    files["pkg/__init__.py"] = "from .mod_0 import function_0\n"
    root = make_repo(tmp_path / "big", files)
    os.utime(root / "pkg/__init__.py", (1_600_000_000, 1_600_000_000))
    for i in range(FILES):  # mod_5 was modified last, mod_4 before it, ...
        stamp = 1_700_000_000 + (i if i <= 5 else -i)
        os.utime(root / f"pkg/mod_{i}.py", (stamp, stamp))
    return root


def test_a_zero_budget_indexes_one_file_a_call_newest_first_and_the_next_process_goes_on(repo, tmp_path):
    index = RepoIndex(repo, tmp_path / "a.sqlite")
    first = index.refresh(budget_s=0)
    assert (first.indexed, first.pending, first.files) == (1, FILES, FILES + 1)
    assert [h.path for h in index.search(["shared_helper"], 20)] == ["pkg/mod_5.py"]
    assert index.refresh(budget_s=0).indexed == 1
    assert {h.path for h in index.search(["shared_helper"], 20)} == {"pkg/mod_5.py", "pkg/mod_4.py"}
    index.close()
    again = RepoIndex(repo, tmp_path / "a.sqlite")  # another process: what was indexed stays indexed
    calls = 0
    while again.refresh(budget_s=0).pending:
        calls += 1
    assert calls == FILES - 2


def test_an_index_built_in_steps_searches_as_one_built_at_once(repo, tmp_path):
    stepped, whole = RepoIndex(repo, tmp_path / "s.sqlite"), RepoIndex(repo, tmp_path / "w.sqlite")
    while stepped.refresh(budget_s=0).pending:
        pass
    assert whole.refresh().pending == 0
    query = ["function_3", "shared_helper", "value"]
    assert stepped.search(query, 8) == whole.search(query, 8)


def test_a_generous_budget_indexes_everything_in_one_call(repo, tmp_path):
    refreshed = RepoIndex(repo, tmp_path / "g.sqlite").refresh(budget_s=60)
    assert refreshed.indexed == FILES + 1 and refreshed.pending == 0


def test_imports_come_before_the_index_is_whole(repo):
    text = "from pkg.mod_7 import function_7\n\nx = function_7(shared_helper(2))\n"
    (repo / "main.py").write_text(text)
    subprocess.run(["git", "-C", str(repo), "add", "main.py"], check=True)
    chosen = auto_context(repo / "main.py", text, "", 2000, index_budget_s=0)
    assert chosen.documents[0].path == "pkg/mod_7.py" and chosen.documents[0].origin == "import"
    assert chosen.indexed_files == 1 and chosen.pending_files == FILES + 1


def test_git_ls_files_runs_only_when_the_git_index_changed(repo, tmp_path, monkeypatch):
    listed = []
    real = index_module.tracked_paths
    monkeypatch.setattr(index_module, "tracked_paths", lambda root: listed.append(root) or real(root))
    RepoIndex(repo, tmp_path / "l.sqlite").refresh()
    RepoIndex(repo, tmp_path / "l.sqlite").refresh()  # a new process: the stored list serves
    assert len(listed) == 1
    (repo / "pkg/extra.py").write_text("def brand_new_name():\n    pass\n")
    subprocess.run(["git", "-C", str(repo), "add", "pkg/extra.py"], check=True)
    later = RepoIndex(repo, tmp_path / "l.sqlite")
    assert later.refresh().indexed == 1 and len(listed) == 2
    assert [h.path for h in later.search(["brand_new_name"], 3)] == ["pkg/extra.py"]
    (repo / "pkg/mod_1.py").write_text("def renamed_function():\n    pass\n")  # edited, not staged
    assert later.refresh().indexed == 1 and len(listed) == 2  # the stat of each file still sees edits


def test_a_process_trusts_an_index_it_found_whole_a_moment_ago(repo, monkeypatch):
    text = (repo / "pkg/mod_2.py").read_text()
    auto_context(repo / "pkg/mod_2.py", text, "", 2000, index_budget_s=None)
    checks = []
    real = RepoIndex.refresh
    monkeypatch.setattr(RepoIndex, "refresh", lambda self, *a, **k: checks.append(1) or real(self, *a, **k))
    auto_context(repo / "pkg/mod_2.py", text, "", 2000)
    assert not checks
    monkeypatch.setattr(context, "TRUST_S", 0.0)
    auto_context(repo / "pkg/mod_2.py", text, "", 2000)
    assert checks == [1]
