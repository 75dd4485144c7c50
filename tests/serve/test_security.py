"""Who the client trusts and how the server takes its token: an announcement is used only when its folder,
the file and its socket are the user's own and nobody else can write them; the token stays out of argv
when it can; a server reachable from other machines needs a token or an explicit --insecure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sc2cli.errors import InputError
from sc2cli.serve import runtime
from sc2cli.serve.client import discover

from ..checkpoints import write_tiny_model
from .live import exchange, start, statuses

KEY = "some/model@main"


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    monkeypatch.setenv("SC2_RUNTIME_DIR", str(rt))
    return rt


def announce(folder: Path, sock: Path | None = None) -> Path:
    path = runtime.announcement_path(KEY)
    runtime.announce(path, {"socket": str(sock or ""), "port": 1, "token": "t", "pid": 1})
    return path


def test_a_private_announcement_is_trusted(folder):
    announce(folder)
    found = runtime.read_announcement(KEY)
    assert found.info is not None and found.info["token"] == "t"


@pytest.mark.parametrize(
    ("spoil", "reason", "needs_root"),
    [
        (lambda folder, path: os.chmod(folder, 0o777), "runtime folder", False),
        (lambda folder, path: os.chmod(path, 0o622), "can be written by other users", False),
        (lambda folder, path: os.chown(path, 4321, -1), "belongs to another user", True),
        (
            lambda folder, path: (path.rename(folder / "real"), path.symlink_to(folder / "real")),
            "symbolic link",
            False,
        ),
    ],
)
def test_an_announcement_others_could_have_written_is_ignored(folder, spoil, reason, needs_root):
    if needs_root and os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")
    path = announce(folder)
    spoil(folder, path)
    found = runtime.read_announcement(KEY)
    assert found.info is None and reason in found.reason
    notes: list[str] = []
    assert discover(KEY, notes.append) is None
    assert notes and reason in notes[0]


def test_a_socket_of_another_user_is_not_trusted(folder):
    if os.getuid() != 0:
        pytest.skip("changing a socket's owner needs root")
    sock_path = folder / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        os.chown(sock_path, 4321, -1)
        announce(folder, sock_path)
        found = runtime.read_announcement(KEY)
    assert found.info is None and "server socket" in found.reason and "another user" in found.reason


def test_the_server_makes_its_folder_private_and_refuses_a_shared_one(tmp_path, monkeypatch):
    rt = tmp_path / "new" / "rt"
    monkeypatch.setenv("SC2_RUNTIME_DIR", str(rt))
    assert runtime.private_runtime_dir() == rt and (rt.stat().st_mode & 0o777) == 0o700
    os.chmod(rt, 0o773)
    with pytest.raises(InputError, match="can be written by other users"):
        runtime.private_runtime_dir()


def serve_cli(model: Path, runtime_dir: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SC2_SERVER_TOKEN"}
    environ["SC2_RUNTIME_DIR"] = str(runtime_dir)
    cmd = [
        sys.executable,
        "-m",
        "sc2cli",
        "serve",
        "-m",
        str(model),
        "--port",
        "0",
        "--idle-timeout",
        "1",
        *args,
    ]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("secmodel"), seed=2)


def test_a_public_host_without_a_token_refuses_to_start(model, tmp_path):
    done = serve_cli(model, tmp_path / "rt", "--host", "0.0.0.0")
    assert done.returncode == 2 and "--insecure" in done.stderr and "SC2_SERVER_TOKEN" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_token_from_argv_warns_and_token_file_works(model, tmp_path):
    with_argv = start(model, tmp_path / "a", "--no-socket", "--token", "abc")
    try:
        assert "shows in `ps`" in "".join(with_argv.log)
    finally:
        with_argv.stop()
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    server = start(model, tmp_path / "b", "--no-socket", "--token-file", str(token_file))
    try:
        ask = "GET /v1/info HTTP/1.1\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n"
        assert statuses(exchange(server.port, ask.format("abc").encode())) == [401]
        assert statuses(exchange(server.port, ask.format("from-file").encode())) == [200]
        assert "shows in `ps`" not in "".join(server.log)
    finally:
        server.stop()


def test_the_announcement_is_private_and_names_the_token(model, tmp_path):
    server = start(model, tmp_path / "rt", env={"SC2_SERVER_TOKEN": "env-token"})
    try:
        (path,) = (tmp_path / "rt").glob("*.json")
        assert (path.stat().st_mode & 0o777) == 0o600 and json.loads(path.read_text())["token"] == "env-token"
        assert ((tmp_path / "rt").stat().st_mode & 0o077) == 0
    finally:
        server.stop()
