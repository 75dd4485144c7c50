"""README's "Set up" is what CI runs: each command of its install and test blocks, in order, in .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set up\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [part.strip() for block in blocks for line in block.splitlines() for part in line.split("&&")]


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    commands = _setup_commands()
    torch_tip = [c for c in commands if "download.pytorch.org" in c]
    assert len(torch_tip) == 1 and commands.index(torch_tip[0]) < commands.index("pip install -e .")
    assert commands.index("pip install -e .") < commands.index('pip install -e ".[test]"')
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    wanted = [c for c in commands if c not in torch_tip and not c.startswith(("python3 -m venv", ". "))]
    assert wanted[-1] == "pytest -q" and ci[-1] == "pytest -q"
    found = [next((i for i, line in enumerate(ci) if line.startswith(c)), None) for c in wanted]
    assert None not in found and found == sorted(found), list(zip(wanted, found, strict=True))
    assert "download.pytorch.org" not in "\n".join(ci)  # CI installs from PyPI only
