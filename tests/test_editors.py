"""The editor hooks in completions/, driven in the real editors: each one opens a file, puts the cursor on a
line whose text before the cursor is not ASCII (so byte and character columns differ), runs the hook, saves,
and the file must hold exactly what `sc2 complete FILE:LINE:COL` prints, inserted at the cursor. Greedy
decoding makes that reference the same for any model. The hooks' finer behaviour (ghost text, cancelling,
multi-line insertion, errors) runs against a stand-in `sc2` that answers at once. Editors that are not
installed skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .checkpoints import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"
TINY = ROOT / "sc2cli" / "tiny" / "model.safetensors"

SOURCE = '''import os


def greet(name):
    """Say hello to someone ✓."""
    message = "héllo ✓ " + name
    print(message)
    return message


def add(a, b):
    total = a + b
    label = "✓ total: " + str(total)
    return label
'''
# (line, character column): where a model has something to say, the first that gets a completion is used
CURSORS = [(13, 27), (6, 26), (14, 5)]
# the stand-in's completion: two lines, a tab, non-ASCII
FAKE_TEXT = "first ✓\n\tsecond"
FAKE_SC2 = """#!{python}
import json, os, sys, time
argv, buffer = sys.argv[1:], sys.stdin.read()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": argv, "stdin": buffer}}) + "\\n")
if os.environ.get("FAKE_ERROR"):
    sys.exit("sc2: error: " + os.environ["FAKE_ERROR"])
text = os.environ["FAKE_COMPLETION"]
for piece in text:
    if "jsonl" in argv:
        piece = json.dumps({{"type": "token", "text": piece}}) + "\\n"
    print(piece, end="", flush=True)
    time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
if "jsonl" in argv:
    print(json.dumps({{"type": "done", "text": text}}))
open(os.environ["FAKE_LOG"] + ".finished", "w").close()
"""


@dataclass(frozen=True)
class Case:
    path: Path
    line: int
    column: int  # characters, 1-based
    byte_column: int  # UTF-8 bytes, 1-based, as Vim, Neovim and Kakoune count
    completion: str

    @property
    def offset(self) -> int:
        lines = SOURCE.split("\n")
        return sum(len(s) + 1 for s in lines[: self.line - 1]) + self.column - 1

    @property
    def expected(self) -> str:
        return SOURCE[: self.offset] + self.completion + SOURCE[self.offset :]

    @property
    def byte_after(self) -> int:
        """The byte column (1-based) after the character under the cursor: where normal mode completes."""
        return self.byte_column + len(SOURCE[self.offset].encode())


def _byte_column(line: int, column: int) -> int:
    return len(SOURCE.split("\n")[line - 1][: column - 1].encode()) + 1


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """An environment of its own (config, cache, no network; sc2 of this interpreter first on PATH) for every
    program these tests start: a module fixture can't lean on conftest's per-test one."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SC2_")}
    env.update(
        SC2_CONFIG_DIR=str(home / "config"),
        HF_HOME=str(home / "hf"),
        HF_HUB_CACHE=str(home / "hf" / "hub"),
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_OFFLINE="1",
        SC2_MAX_TOKENS="24",
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home),
        SC2_RUNTIME_DIR=str(home / "run"),  # where a warm server would be found: none here
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _models(tmp: Path):
    if TINY.exists():
        yield "tiny"  # the small model shipped in the package
    yield str(write_tiny_model(tmp / "random", seed=4))


@pytest.fixture(scope="module")
def case(tmp_path_factory, env) -> Case:
    """The file, the cursor and the reference completion, from `sc2 complete FILE:LINE:COL` (the first model
    and cursor that complete to something). The hooks run on the same path, so the prompt is the same."""
    root = tmp_path_factory.mktemp("editors")
    path = root / "proj" / "src" / "app.py"
    path.parent.mkdir(parents=True)
    (root / "proj" / ".git").mkdir()
    path.write_text(SOURCE)
    for model in _models(root):
        env["SC2_MODEL"] = model
        for line, column in CURSORS:
            result = subprocess.run(
                ["sc2", "complete", f"{path}:{line}:{column}"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            if result.stdout:
                return Case(path, line, column, _byte_column(line, column), result.stdout)
    raise AssertionError("no model completed anything at any of the test cursors")


@pytest.fixture
def buffer(case) -> Case:
    """The case, with the file restored as an earlier test may have changed it."""
    case.path.write_text(SOURCE)
    return case


@pytest.fixture
def fake(tmp_path, env) -> tuple[dict[str, str], Path]:
    """A stand-in `sc2` answering FAKE_TEXT at once, and the file where it logs its arguments and stdin."""
    program = tmp_path / "fake-sc2"
    program.write_text(FAKE_SC2.format(python=sys.executable))
    program.chmod(0o755)
    log = tmp_path / "fake.json"
    return env | {"FAKE_LOG": str(log), "FAKE_COMPLETION": FAKE_TEXT, "FAKE_SC2": str(program)}, log


def _run(argv: list, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=120)
    assert not check or result.returncode == 0, f"{argv[0]} failed ({result.returncode}): {result.stderr}"
    return result


def _calls(log: Path) -> list[dict]:
    """What the stand-in sc2 got, call by call: its arguments and stdin."""
    return [json.loads(line) for line in log.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# Vim
# ---------------------------------------------------------------------------------------------------------

needs_vim = pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")


def _vim(tmp_path: Path, file: Path, env: dict[str, str], commands: str) -> str:
    """Run Vim silently (-es) on `file` with the hook sourced and `commands`; return v:errmsg."""
    errors = tmp_path / "vim-errors"
    script = tmp_path / "test.vim"
    script.write_text(
        f"source {COMPLETIONS / 'sc2.vim'}\n{commands}\n"
        f"call writefile([v:errmsg], '{errors}')\nwrite\nqall!\n"
    )
    _run(["vim", "-Nu", "NONE", "-i", "NONE", "-n", "-es", "-S", script, file], env, check=False)
    return errors.read_text().strip()  # -es exits 1 after any error: the message says which


@needs_vim
def test_vim_inserts_the_completion_at_the_cursor(tmp_path, buffer, env):
    keys = r'call feedkeys("i\<C-x>\<C-a>\<Esc>", "xt")'
    assert _vim(tmp_path, buffer.path, env, f"call cursor({buffer.line}, {buffer.byte_column})\n{keys}") == ""
    assert buffer.path.read_text() == buffer.expected


@needs_vim
def test_vim_multiline_insert_modes_and_what_it_sends(tmp_path, buffer, fake):
    env, log = fake
    commands = (
        f"let g:sc2_command = '{env['FAKE_SC2']}'\nlet g:sc2_args = ['-m', 'tiny']\n"
        f"call cursor({buffer.line}, {buffer.byte_column})\n"
        'call feedkeys("i\\<C-x>\\<C-a>!\\<Esc>", "xt")\n'  # insert mode: typing goes on after the completion
        "1\nSc2Complete\nnormal! aZ"  # normal mode: after the character under the cursor, cursor on its end
    )
    assert _vim(tmp_path, buffer.path, env, commands) == ""
    first = SOURCE[: buffer.offset] + FAKE_TEXT + "!" + SOURCE[buffer.offset :]
    tail = ["--byte-col", "--path", str(buffer.path), "-m", "tiny"]
    assert _calls(log) == [
        {"argv": ["complete", f"-:{buffer.line}:{buffer.byte_column}", *tail], "stdin": SOURCE},
        {"argv": ["complete", "-:1:2", *tail], "stdin": first},
    ]
    assert buffer.path.read_text() == "i" + FAKE_TEXT + "Z" + first[1:]


@needs_vim
def test_vim_shows_the_error_line_and_keeps_the_buffer(tmp_path, buffer, env):
    commands = "let g:sc2_args = ['-m', '/nonexistent/model']\nSc2Complete"
    error = _vim(tmp_path, buffer.path, env, commands)
    assert error.startswith("sc2: error: ") and "/nonexistent/model" in error
    assert buffer.path.read_text() == SOURCE


# ---------------------------------------------------------------------------------------------------------
# Neovim
# ---------------------------------------------------------------------------------------------------------

needs_nvim = pytest.mark.skipif(
    shutil.which("nvim") is None, reason="nvim is not installed (.ci/run installs it where it can)"
)


def _nvim(tmp_path: Path, file: Path, env: dict[str, str], lua: str) -> dict:
    """Run headless Neovim on `file` with the hook installed as README says (lua/sc2.lua on the runtimepath)
    and `lua`, which calls `report(table)` then quits; return that table."""
    runtime = tmp_path / "runtime"
    (runtime / "lua").mkdir(parents=True)
    shutil.copy(COMPLETIONS / "sc2.lua", runtime / "lua" / "sc2.lua")
    out = tmp_path / "report.json"
    script = tmp_path / "test.lua"
    script.write_text(
        f"vim.opt.runtimepath:prepend('{runtime}')\n"
        "vim.defer_fn(function() vim.cmd('cquit 3') end, 90000)  -- never hang the test run\n"
        "local ns = vim.api.nvim_create_namespace('sc2')\n"
        "local function marks() return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true }) end\n"
        f"local function report(t) vim.fn.writefile({{ vim.fn.json_encode(t) }}, '{out}') end\n"
        f"{lua}\n"
    )
    _run(["nvim", "--headless", "--clean", "-n", "-c", f"luafile {script}", file], env)
    return json.loads(out.read_text())


def _on_done(lua: str) -> str:
    """Lua that runs `lua` once the request finished (User Sc2Done), then saves and quits."""
    return (
        "vim.api.nvim_create_autocmd('User', { pattern = 'Sc2Done', once = true, callback = function()\n"
        f"  vim.schedule(function() {lua}; vim.cmd('stopinsert'); vim.cmd('wq') end)\n"
        "end })\n"
    )


@needs_nvim
def test_neovim_inserts_the_completion_at_the_cursor(tmp_path, buffer, env):
    """Typed as a user would: `i`, then CTRL-X CTRL-A; the job runs while Neovim waits for keys."""
    lua = (
        "local sc2 = require('sc2')\nsc2.setup{}\n"
        f"vim.fn.cursor({buffer.line}, {buffer.byte_column})\n"
        + _on_done("report({ last = sc2.last, mode = vim.api.nvim_get_mode().mode, marks = #marks() })")
        + "vim.api.nvim_input('i<C-x><C-a>')\n"
    )
    report = _nvim(tmp_path, buffer.path, env, lua)
    assert report == {"last": {"text": buffer.completion}, "mode": "i", "marks": 0}
    assert buffer.path.read_text() == buffer.expected


@needs_nvim
def test_neovim_streams_ghost_text_then_accepts_it(tmp_path, buffer, fake):
    env, log = fake
    env = env | {"FAKE_DELAY": "0.02"}
    lua = (
        f"local sc2 = require('sc2')\nsc2.setup{{ cmd = {{ '{env['FAKE_SC2']}' }}, model = 'tiny' }}\n"
        f"vim.fn.cursor({buffer.line}, {buffer.byte_column})\n"
        "sc2.suggest()\n"
        "local seen = {}\n"
        "vim.wait(20000, function()\n"
        "  local s = sc2.suggestion()\n"
        "  if s and seen[#seen] ~= s then table.insert(seen, s) end\n"
        "  return not sc2.busy()\n"
        "end, 5)\n"
        "local shown = marks()\n"
        "local accepted = sc2.accept()\n"
        "report({ seen = seen, shown = shown, accepted = accepted, left = #marks(), ts = vim.bo.tabstop,\n"
        "  cursor = vim.api.nvim_win_get_cursor(0), last = sc2.last })\n"
        "vim.cmd('wq')\n"
    )
    report = _nvim(tmp_path, buffer.path, env, lua)
    assert len(report["seen"]) >= 3 and report["seen"][-1] == FAKE_TEXT  # it streamed
    assert all(FAKE_TEXT.startswith(s) for s in report["seen"])
    [[_, row, col, details]] = report["shown"]
    at = buffer.byte_after  # normal mode: after the character under the cursor, as `a` would
    assert (row, col) == (buffer.line - 1, at - 1)
    assert details["virt_text"] == [["first ✓", "Comment"]]
    assert details["virt_lines"] == [[[" " * report["ts"] + "second", "Comment"]]]  # the tab as spaces
    assert report["accepted"] is True and report["left"] == 0 and report["last"] == {"text": FAKE_TEXT}
    offset = buffer.offset + 1
    assert buffer.path.read_text() == SOURCE[:offset] + FAKE_TEXT + SOURCE[offset:]
    assert report["cursor"] == [buffer.line + 1, len("\tsecon")]  # on the last inserted character
    [sent] = _calls(log)
    assert sent["stdin"] == SOURCE
    tail = ["--byte-col", "--format", "jsonl", "--path", str(buffer.path), "-m", "tiny"]
    assert sent["argv"] == ["complete", f"-:{buffer.line}:{at}", *tail]


@needs_nvim
def test_neovim_typing_cancels_the_request(tmp_path, buffer, fake):
    env, log = fake
    env = env | {"FAKE_DELAY": "0.1"}  # 1.4 s for the whole answer: typing comes first, the check after it
    lua = (
        f"local sc2 = require('sc2')\nsc2.setup{{ cmd = {{ '{env['FAKE_SC2']}' }} }}\n"
        f"vim.fn.cursor({buffer.line}, {buffer.byte_column})\n"
        "vim.api.nvim_input('i<C-x><C-a>')\n"
        "vim.defer_fn(function() vim.api.nvim_input('typed') end, 400)\n"
        "vim.defer_fn(function()\n"
        "  report({ busy = sc2.busy(), marks = #marks(), last = sc2.last or vim.NIL })\n"
        "  vim.cmd('stopinsert'); vim.cmd('wq')\n"
        "end, 2500)\n"
    )
    report = _nvim(tmp_path, buffer.path, env, lua)
    assert report == {"busy": False, "marks": 0, "last": None}
    assert buffer.path.read_text() == SOURCE[: buffer.offset] + "typed" + SOURCE[buffer.offset :]
    assert log.exists() and not Path(f"{log}.finished").exists()  # the job was stopped, not left to finish


@needs_nvim
def test_neovim_reports_the_error_line_and_keeps_the_buffer(tmp_path, buffer, env):
    lua = (
        "local sc2 = require('sc2')\nsc2.setup{ model = '/nonexistent/model' }\n"
        "local notes = {}\n"
        "vim.notify = function(message, level) table.insert(notes, { message, level }) end\n"
        + _on_done("report({ last = sc2.last, notes = notes })")
        + "sc2.complete()\n"
    )
    report = _nvim(tmp_path, buffer.path, env, lua)
    error = report["last"]["error"]
    assert error.startswith("sc2: error: ") and "/nonexistent/model" in error
    assert report["notes"] == [[error, 4]]  # vim.log.levels.ERROR
    assert buffer.path.read_text() == SOURCE


# ---------------------------------------------------------------------------------------------------------
# Emacs, Kakoune, VS Code
# ---------------------------------------------------------------------------------------------------------


def _emacs(file: Path, env: dict[str, str], lisp: str) -> subprocess.CompletedProcess:
    program = (
        f'(progn (setq make-backup-files nil) (find-file "{file}") {lisp}'
        ' (condition-case err (sc2-complete) (user-error (message "ERROR=%s" (cadr err)))) (save-buffer))'
    )
    return _run(["emacs", "--batch", "-Q", "-l", COMPLETIONS / "sc2.el", "--eval", program], env)


@pytest.mark.skipif(shutil.which("emacs") is None, reason="emacs is not installed")
def test_emacs_inserts_the_completion_at_point(buffer, env):
    # Emacs counts columns from 0 and by display width; the hook counts characters itself
    point = f"(goto-char (point-min)) (forward-line {buffer.line - 1}) (forward-char {buffer.column - 1})"
    result = _emacs(buffer.path, env, point)
    assert "ERROR=" not in result.stderr
    assert buffer.path.read_text() == buffer.expected


@pytest.mark.skipif(shutil.which("emacs") is None, reason="emacs is not installed")
def test_emacs_sends_the_region_and_shows_errors(buffer, fake):
    env, log = fake
    region = (
        f'(setq sc2-program "{env["FAKE_SC2"]}") (transient-mark-mode 1)'
        '(goto-char (point-min)) (search-forward "def add") (push-mark (match-beginning 0) t t)'
        '(search-forward "total = a") (activate-mark)'
    )
    _emacs(buffer.path, env, region)
    # point ends the region: the model sees the region before point, and nothing after it
    assert _calls(log) == [
        {"argv": ["complete", "-:2:14", "--path", str(buffer.path)], "stdin": "def add(a, b):\n    total = a"}
    ]
    assert "total = a" + FAKE_TEXT + " + b" in buffer.path.read_text()
    buffer.path.write_text(SOURCE)
    result = _emacs(
        buffer.path, env | {"FAKE_ERROR": "no such model"}, f'(setq sc2-program "{env["FAKE_SC2"]}")'
    )
    assert "ERROR=sc2: error: no such model" in result.stderr
    assert buffer.path.read_text() == SOURCE


@pytest.mark.skipif(shutil.which("kak") is None, reason="kakoune is not installed")
def test_kakoune_inserts_the_completion_at_the_cursor(tmp_path, buffer, env):
    errors = tmp_path / "kak-errors"
    at = f"{buffer.line}.{buffer.byte_column}"
    commands = (
        f"try %{{ source {COMPLETIONS / 'sc2.kak'}; select {at},{at}; sc2-complete; write }}"
        f" catch %{{ echo -to-file {errors} %val{{error}} }}; quit!"
    )
    _run(["kak", "-n", "-ui", "dummy", "-e", commands, buffer.path], env)
    assert not errors.exists(), errors.read_text()
    assert buffer.path.read_text() == buffer.expected


def _vscode_task(label: str, case: Case) -> list[str]:
    """The task's command line as VS Code runs it: variables substituted, no shell in between."""
    tasks = json.loads((COMPLETIONS / "vscode-tasks.json").read_text())["tasks"]
    [task] = [t for t in tasks if t["label"] == label]
    assert task["type"] == "process"
    values = {"${file}": str(case.path), "${lineNumber}": str(case.line), "${columnNumber}": str(case.column)}
    argv = [task["command"], *task["args"]]
    for variable, value in values.items():
        argv = [a.replace(variable, value) for a in argv]
    return argv


def test_vscode_tasks_show_and_insert_the_completion(buffer, env):
    # the show task runs the very command that made the reference completion
    shown = _vscode_task("sc2: show the completion at the cursor", buffer)
    assert shown == ["sc2", "complete", f"{buffer.path}:{buffer.line}:{buffer.column}"]
    _run(_vscode_task("sc2: insert the completion at the cursor", buffer), env)
    assert buffer.path.read_text() == buffer.expected
