"""Shell completion: the checked-in scripts are what completions/generate.py writes, and real bash, zsh and
fish offer sc2's subcommands, model names (aliases and StarCoder2 repos in the hub cache) and settings with
them; `sc2 --install-completion` still works as Typer provides it."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import typer

from sc2cli import settings
from sc2cli.checkpoint.names import ALIASES
from sc2cli.cli import app, completers

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


@functools.cache
def _sc2_bin() -> Path:
    """A folder holding an `sc2` that runs this checkout's CLI with this interpreter (not whatever `sc2` the
    environment installed, which may be another checkout)."""
    folder = Path(tempfile.mkdtemp(prefix="sc2-bin-"))
    atexit.register(shutil.rmtree, folder, True)
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from sc2cli.cli import main; main()"
    script = folder / "sc2"
    script.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(str(ROOT))} "$@"\n'
    )
    script.chmod(0o755)
    return folder


def _shell_env(**extra: str) -> dict[str, str]:
    """The test's environment with this checkout's `sc2` first on PATH, as the shells must find it."""
    env = dict(os.environ) | extra
    env["PATH"] = f"{_sc2_bin()}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_checked_in_scripts_are_current(tmp_path):
    generate = _generator()
    for path in generate.write_all(tmp_path):
        shipped = COMPLETIONS / path.name
        assert shipped.exists(), f"completions/{path.name} is missing: run `python completions/generate.py`"
        assert shipped.read_text() == path.read_text(), (
            f"completions/{path.name} is stale: run `python completions/generate.py`"
        )


def _bash_complete(words: list[str], env: dict[str, str] | None = None) -> list[str]:
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
        env=env or _shell_env(),
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
    paired with it, and return everything it drew until the last text awaited."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the program
        os.execvpe(argv[0], argv, env)
    screen = drawn = b""
    try:
        for wait_for, send in keys:
            deadline = time.monotonic() + timeout
            while wait_for.encode() not in screen:
                assert time.monotonic() < deadline, f"never saw {wait_for!r}; screen: {screen[-500:]!r}"
                if select.select([fd], [], [], 0.1)[0]:
                    chunk = os.read(fd, 65536)
                    screen += chunk
                    drawn += chunk
            screen = screen.split(wait_for.encode(), 1)[1]  # look for the next text in what comes after
            os.write(fd, send.encode())
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return drawn.decode(errors="replace")


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


# ---------------------------------------------------------------------------------------------------------
# Model names and settings
# ---------------------------------------------------------------------------------------------------------

STARCODER2_REPOS = ["acme/coder-sc2", "bigcode/starcoder2-3b"]
OTHER_REPO = "acme/coder-llama"  # in the cache, but not a StarCoder2 model: never offered
MODELS = ["tiny", "3b", "7b", "15b", *STARCODER2_REPOS]


def _fake_hub_cache(folder: Path) -> Path:
    """A hub cache laid out as huggingface_hub writes it (snapshot files link to blobs) with two StarCoder2
    repos, a llama one and a dataset."""
    repos = {"acme/coder-sc2": "starcoder2", "bigcode/starcoder2-3b": "starcoder2", OTHER_REPO: "llama"}
    for repo, model_type in repos.items():
        repo_folder = folder / f"models--{repo.replace('/', '--')}"
        blob = repo_folder / "blobs" / "0f1e2d3c"
        blob.parent.mkdir(parents=True)
        blob.write_text(json.dumps({"architectures": ["X"], "model_type": model_type}))
        snapshot = repo_folder / "snapshots" / "4b5a6978"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").symlink_to(Path("..", "..", "blobs", blob.name))
    (folder / "datasets--acme--code" / "snapshots" / "4b5a6978").mkdir(parents=True)
    return folder


@pytest.fixture
def completion_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A fake hub cache and an empty config folder, in this process's environment and the shells'."""
    cache = _fake_hub_cache(tmp_path / "hub")
    config = tmp_path / "config"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("SC2_CONFIG_DIR", str(config))
    return _shell_env(HF_HUB_CACHE=str(cache), SC2_CONFIG_DIR=str(config))


def _values(candidates: list[tuple[str, str]]) -> list[str]:
    return [value for value, _ in candidates]


class _Ctx:
    def __init__(self, **params: str) -> None:
        self.params = params


def test_completers_offer_models_and_settings(completion_env):
    assert _values(completers.model_names("")) == MODELS
    assert dict(completers.model_names(""))["3b"] == "bigcode/starcoder2-3b, cached"
    assert _values(completers.model_names("acme/")) == ["acme/coder-sc2"]
    assert _values(completers.model_names("1")) == ["15b"]
    assert completers.model_names("./") == completers.model_names("~/ck") == []  # the shell completes paths
    assert _values(completers.hub_model_names("")) == MODELS[1:]
    assert _values(completers.cached_model_names("")) == ["3b", *STARCODER2_REPOS]
    assert _values(completers.setting_keys("")) == list(settings.KEYS)
    assert _values(completers.setting_keys("max-")) == ["max_tokens"]
    assert _values(completers.setting_values(_Ctx(key="dtype"), "")) == ["auto", "bf16", "fp16", "fp32"]
    assert _values(completers.setting_values(_Ctx(key="DEVICE"), "c")) == ["cpu", "cuda"]
    assert _values(completers.setting_values(_Ctx(key="model"), "")) == MODELS
    assert completers.setting_values(_Ctx(key="max_tokens"), "") == []
    assert completers.setting_values(_Ctx(), "") == []
    config = settings.config_path()
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"dtype": "bf16", "old_key": 1}))
    unset = dict(completers.set_setting_keys(""))
    assert list(unset) == [*settings.KEYS, "old_key"]
    assert unset["dtype"] == "set to bf16 in the file"
    config.write_text("{not json")
    assert _values(completers.set_setting_keys("")) == list(settings.KEYS)  # a broken file: keys anyway


def test_completer_tables_agree_with_settings():
    assert _values(completers.model_names(""))[:4] == ["tiny", *(a for a in ALIASES if a != "tiny")]
    assert list(completers.KEY_HELP) == list(settings.KEYS)
    assert set(completers.VALUES) <= set(settings.KEYS)
    for key, candidates in completers.VALUES.items():
        for value, _ in candidates:
            settings.parse_value(key, value, "test")  # raises if a value offered would be refused
    helps = [completers.TINY_HELP, *completers.KEY_HELP.values()]
    helps += [note for candidates in completers.VALUES.values() for _, note in candidates]
    assert not [note for note in helps if set(note) & set("'\"`$")], "zsh's eval would mangle these"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"HF_HOME": "~/hf-home"},
        {"XDG_CACHE_HOME": "/tmp/xdg"},
        {"HF_HOME": "/tmp/home", "HUGGINGFACE_HUB_CACHE": "/tmp/legacy"},
        {"HF_HOME": "/tmp/home", "HUGGINGFACE_HUB_CACHE": "/tmp/legacy", "HF_HUB_CACHE": "$HOME/hub-cache"},
    ],
)
def test_hub_cache_is_where_huggingface_hub_looks(env):
    """completers.hub_cache reads the environment itself (no huggingface_hub import at a TAB): same folder."""
    names = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME")
    clean = {k: v for k, v in os.environ.items() if k not in names} | env
    code = (
        "from sc2cli.cli import completers; from sc2cli.checkpoint import cache; "
        "print(completers.hub_cache()); print(cache.hub_cache())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    ours, theirs = result.stdout.splitlines()
    assert ours == theirs


def test_completing_a_model_imports_neither_torch_nor_the_hub(completion_env):
    env = completion_env | {
        "_SC2_COMPLETE": "complete_bash",
        "COMP_WORDS": "sc2 complete -m ",
        "COMP_CWORD": "3",
    }
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from sc2cli.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == MODELS
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "sc2cli.cli.completers" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "huggingface_hub", "safetensors")}


def test_bash_completes_models_and_settings(completion_env):
    def offered(*words: str) -> list[str]:
        return _bash_complete(["sc2", *words], completion_env)

    for command in ("complete", "fim", "serve", "bench"):
        assert offered(command, "-m", "") == MODELS, command
    assert offered("complete", "--model", "acme/") == ["acme/coder-sc2"]
    assert offered("download", "") == MODELS[1:]
    assert offered("rm", "") == ["3b", *STARCODER2_REPOS]
    assert offered("config", "set", "") == list(settings.KEYS)
    assert offered("config", "set", "dtype", "") == ["auto", "bf16", "fp16", "fp32"]
    assert offered("config", "set", "model", "") == MODELS
    assert offered("config", "set", "max_tokens", "") == []
    assert offered("config", "unset", "") == list(settings.KEYS)
    assert offered("complete", "--device", "") == ["auto", "cpu", "cuda", "mps"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_models_and_settings(completion_env):
    lines = ["sc2 complete -m ", "sc2 config set ", "sc2 config set dtype "]
    script = f"source {COMPLETIONS / 'sc2.fish'}; " + "; ".join(
        f"echo '== {line}'; complete -C '{line}'" for line in lines
    )
    result = subprocess.run(
        ["fish", "--no-config", "-c", script], capture_output=True, text=True, env=completion_env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    offered: dict[str, list[str]] = {}
    for out in result.stdout.splitlines():
        if out.startswith("== "):
            current = offered.setdefault(out[3:], [])
        else:
            current.append(out.split("\t")[0])
    # fish sorts the candidates itself
    assert sorted(offered["sc2 complete -m "]) == sorted(MODELS)
    assert "3b\tbigcode/starcoder2-3b, cached" in result.stdout.splitlines()  # the help shown next to 3b
    assert sorted(offered["sc2 config set "]) == sorted(settings.KEYS)
    assert sorted(offered["sc2 config set dtype "]) == ["auto", "bf16", "fp16", "fp32"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_models_and_settings(tmp_path, completion_env):
    """Three TABs in one session, _sc2 autoloaded: each lists its candidates (none is a prefix of all the
    others), and an `echo` after each marks where its listing ends."""
    functions = tmp_path / "functions"
    functions.mkdir()
    shutil.copy(COMPLETIONS / "_sc2", functions / "_sc2")
    env = completion_env | {"TERM": "xterm", "HOME": str(tmp_path), "PS1": "READY> "}
    compinit = f"autoload -Uz compinit; compinit -u -d {tmp_path}/zcompdump"
    keys = [("> ", f"fpath=({functions} $fpath); {compinit}; PS1='READY> '\n")]
    lines = {
        "sc2 complete -m ": "acme/coder-sc2",
        "sc2 config set ": "quantize",
        "sc2 config set dtype ": "fp32",
    }
    for n, (line, shown) in enumerate(lines.items()):
        keys += [("READY> ", f"{line}\t"), (shown, f"\x15echo END-$((100+{n}))\n"), (f"END-{100 + n}", "")]
    screen = _type_in_pty(["zsh", "-f", "-i"], env, [*keys, ("READY> ", "exit\n")])
    models, keys_listed, dtypes = re.split(r"END-10\d", screen)[:3]
    assert all(model in models for model in MODELS), models
    assert OTHER_REPO not in models
    assert "bigcode/starcoder2-3b, cached" in models  # the help shown next to 3b
    assert all(key in keys_listed for key in settings.KEYS), keys_listed
    assert all(dtype in dtypes for dtype in ("auto", "bf16", "fp16", "fp32")), dtypes
