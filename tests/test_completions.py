"""Shell completion: the checked-in scripts are what completions/generate.py writes, and real bash, zsh and
fish offer sc2's subcommands with them; `sc2 --install-completion` still works as Typer provides it."""

from __future__ import annotations

import importlib.util
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from sc2cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"


def _generator():
    spec = importlib.util.spec_from_file_location("sc2_completions_generate", COMPLETIONS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommands() -> set[str]:
    group = typer.main.get_command(app)
    return {name for name, command in group.commands.items() if not command.hidden}


def _shell_env() -> dict[str, str]:
    """The test's environment with this interpreter's `sc2` first on PATH, as the shells must find it."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_checked_in_scripts_are_current(tmp_path):
    generate = _generator()
    for path in generate.write_all(tmp_path):
        shipped = COMPLETIONS / path.name
        assert shipped.exists(), f"completions/{path.name} is missing: run `python completions/generate.py`"
        assert shipped.read_text() == path.read_text(), (
            f"completions/{path.name} is stale: run `python completions/generate.py`"
        )


def _bash_complete(words: list[str]) -> list[str]:
    """COMPREPLY after bash runs the completion function for `words`, the last one being completed."""
    script = (
        f"source {COMPLETIONS / 'sc2.bash'}\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))\n'
        'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        "complete -p sc2 >/dev/null || exit 3\n"
        "_sc2_completion sc2\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script, "bash", *words],
        capture_output=True,
        text=True,
        env=_shell_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_offers_the_subcommands():
    assert set(_bash_complete(["sc2", ""])) >= _subcommands() >= {"complete", "fim", "config"}
    assert set(_bash_complete(["sc2", "co"])) == {"complete", "config"}
    assert "--byte-col" in _bash_complete(["sc2", "complete", "--by"])
    assert set(_bash_complete(["sc2", "complete", "--format", ""])) == {"text", "json", "jsonl"}


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_offers_the_subcommands():
    script = f"source {COMPLETIONS / 'sc2.fish'}; complete -C 'sc2 '; complete -C 'sc2 complete --by'"
    result = subprocess.run(
        ["fish", "--no-config", "-c", script], capture_output=True, text=True, env=_shell_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    offered = {line.split("\t")[0] for line in result.stdout.splitlines()}
    assert offered >= _subcommands() | {"--byte-col"}


def _type_in_pty(
    argv: list[str], env: dict[str, str], keys: list[tuple[str, str]], timeout: float = 30
) -> str:
    """Run an interactive program on a terminal, send each key sequence once the screen shows the text
    paired with it, and return everything it drew."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the program
        os.execvpe(argv[0], argv, env)
    screen = b""
    try:
        for wait_for, send in keys:
            deadline = time.monotonic() + timeout
            while wait_for.encode() not in screen:
                assert time.monotonic() < deadline, f"never saw {wait_for!r}; screen: {screen[-500:]!r}"
                if select.select([fd], [], [], 0.1)[0]:
                    screen += os.read(fd, 65536)
            screen = b""  # look for the next text in what comes after
            os.write(fd, send.encode())
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return screen.decode(errors="replace")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_on_the_first_tab(tmp_path):
    """_sc2 autoloaded from $fpath by compinit, as README says to install it: one TAB completes."""
    functions = tmp_path / "functions"
    functions.mkdir()
    shutil.copy(COMPLETIONS / "_sc2", functions / "_sc2")
    env = _shell_env() | {"TERM": "xterm", "HOME": str(tmp_path), "PS1": "READY> "}
    compinit = f"autoload -Uz compinit; compinit -u -d {tmp_path}/zcompdump"
    setup = f"fpath=({functions} $fpath); {compinit}; PS1='READY> '\n"
    _type_in_pty(
        ["zsh", "-f", "-i"],
        env,
        [("> ", setup), ("READY> ", "sc2 con\t"), ("sc2 config", "\x15exit\n")],
    )


def test_install_completion_still_works(tmp_path):
    """Typer's own `--install-completion`: writes its bash script and sources it from ~/.bashrc."""
    env = _shell_env() | {"HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", "--norc", "-c", "sc2 --install-completion; exit $?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    installed = tmp_path / ".bash_completions" / "sc2.sh"
    assert installed.read_text().strip() in (COMPLETIONS / "sc2.bash").read_text()
    assert f"source '{installed}'" in (tmp_path / ".bashrc").read_text()
