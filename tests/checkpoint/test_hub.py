"""sc2cli.checkpoint (names, cache, download, transfer) end to end: the real huggingface_hub client against a fake hub on 127.0.0.1 (tests/fakehub.py).

Every test gets its own HF_HOME, hub endpoint and config folder. huggingface_hub reads HF_* variables when it is
imported, so the `env` fixture reloads its constants for in-process calls and hands the same environment to
subprocesses, which see it exactly as a user's shell would.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from sc2cli.checkpoint import cache, hub_errors, names, transfer
from sc2cli.checkpoint.download import download
from sc2cli.checkpoint.open import resolve_model
from sc2cli.errors import CheckpointError, InputError, Sc2Error

from ..fakehub import FakeHub, tiny_checkpoint

REPO = "test/tiny-sc2"
EXTRAS = {"README.md": b"# a tiny model\n", "pytorch_model.bin": b"a pickle we must never fetch"}
INFERENCE_FILES = {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"}


# ---------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, bytes]:
    return tiny_checkpoint()


@pytest.fixture
def fake(checkpoint: dict[str, bytes]):
    with FakeHub() as server:
        server.add_commit(REPO, {**checkpoint, **EXTRAS})
        yield server


def _reload_hub_constants() -> None:
    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)


@pytest.fixture
def env(fake: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """This test's private HF_HOME, endpoint and config folder, for this process and for subprocesses."""
    for name in list(os.environ):
        if name.startswith(("HF_", "HUGGING", "SC2_")) or name == "TRANSFORMERS_OFFLINE":
            monkeypatch.delenv(name)
    values = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": fake.endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_VERBOSITY": "error",
        "SC2_CONFIG_DIR": str(tmp_path / "config"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    _reload_hub_constants()
    yield os.environ.copy()
    monkeypatch.undo()
    _reload_hub_constants()


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    _reload_hub_constants()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any in-process attempt to resolve a host other than this machine: no test may reach the hub."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1"):
            raise AssertionError(f"a test tried to reach {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def sc2(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "sc2cli", *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def python(env: dict[str, str], code: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *options, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


RESOLVE = """
import sys
from sc2cli.errors import Sc2Error
from sc2cli.checkpoint.open import resolve_model
try:
    print(resolve_model({name!r}, revision={revision!r}))
except Sc2Error as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    from sc2cli.cli import main

    with pytest.raises(SystemExit) as exit:
        main(list(args))
    captured = capsys.readouterr()
    return exit.value.code, captured.out, captured.err


def cdn_gets(fake: FakeHub) -> list:
    return [
        r for r in fake.requests if r.method == "GET" and "/resolve/" not in r.path and "/api/" not in r.path
    ]


def blob_of(folder: Path, name: str) -> Path:
    return (folder / name).resolve()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def partial_file(data: bytes) -> Path:
    """Where the bytes of `data` received so far wait for the rest: next to the blob they will become."""
    return cache.repo_cache_dir(REPO) / "blobs" / f"{sha256(data)}.incomplete"


def wait_until(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def interrupted_download(fake: FakeHub, weights: bytes, at: int) -> Path:
    """Download in this process and stop as a Ctrl-C would, once `at` bytes of `weights` are on the disk (the
    fake CDN stalls there); returns the partial file."""
    fake.stall(weights, at)
    partial = partial_file(weights)

    def ctrl_c(done: int, total: int) -> None:
        if partial.is_file() and partial.stat().st_size >= at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download(REPO, progress=ctrl_c)
    assert partial.stat().st_size == at
    return partial


def ranges_asked(fake: FakeHub, data: bytes) -> list[str | None]:
    """The Range header of every CDN request for `data`, in order (None: the whole file)."""
    return [r.headers.get("Range") for r in cdn_gets(fake) if sha256(data) in r.path]


# ---------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------


def test_names_are_folders_aliases_or_repo_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert names.parse_model_name("3b") == "bigcode/starcoder2-3b"
    assert names.parse_model_name("15B") == "bigcode/starcoder2-15b"
    assert names.parse_model_name("tiny") == names.TINY_DIR
    assert names.parse_model_name("someone/starcoder2-finetune") == "someone/starcoder2-finetune"
    assert names.parse_model_name(str(tmp_path)) == tmp_path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "local").mkdir(parents=True)
    assert names.parse_model_name("owner/local") == Path("owner/local")  # an existing folder wins
    with pytest.raises(InputError, match="unknown model 'starcoder'"):
        names.parse_model_name("starcoder")
    with pytest.raises(CheckpointError, match="no such model folder"):
        names.parse_model_name("./missing")
    with pytest.raises(InputError, match="not to the folder"):
        resolve_model(str(tmp_path), revision="main")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_download_command_is_quoted_for_the_shell() -> None:
    assert names.download_command("3b") == "sc2 download 3b"
    assert names.download_command("a/b", "v 1", force=True) == "sc2 download a/b --revision 'v 1' --force"


# ---------------------------------------------------------------------------------------------------------
# Download, cache, offline
# ---------------------------------------------------------------------------------------------------------


def test_first_use_downloads_only_inference_files(env, fake: FakeHub, checkpoint) -> None:
    folder = resolve_model(REPO)
    assert folder.parent.name == "snapshots" and folder.name == fake.repos[REPO].refs["main"]
    assert folder.is_relative_to(Path(env["HF_HOME"]) / "hub")
    assert {p.name for p in folder.iterdir()} == INFERENCE_FILES
    for name in INFERENCE_FILES:
        assert (folder / name).read_bytes() == checkpoint[name]
    fetched = {r.path.rsplit("/", 1)[-1] for r in fake.requests if "/resolve/" in r.path}
    assert fetched == INFERENCE_FILES  # never README.md, never the pickle
    assert (folder.parent.parent / "refs" / "main").read_text() == folder.name


def test_cached_model_needs_no_network(env, fake: FakeHub) -> None:
    folder = resolve_model(REPO)
    before = len(fake.requests)
    assert resolve_model(REPO) == folder
    assert len(fake.requests) == before  # not even a metadata request
    fake.stop()
    assert resolve_model(REPO) == folder
    assert resolve_model(REPO, offline=True) == folder
    # a fresh process, configured only by the environment, finds it too, without loading any HTTP client
    done = python(env, RESOLVE.format(name=REPO, revision=None), "-X", "importtime")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(folder)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "huggingface_hub.constants" in imported and not {"httpx2", "httpx", "requests"} & imported


def test_a_model_cached_by_another_tool_is_reused(env, fake: FakeHub) -> None:
    from huggingface_hub import snapshot_download

    theirs = Path(snapshot_download(REPO))  # everything, as other tools fetch it
    fake.stop()
    assert resolve_model(REPO) == theirs


def test_load_model_accepts_a_repo_id(env, fake: FakeHub) -> None:
    import torch

    import sc2cli

    model = sc2cli.load_model(REPO, device="cpu", dtype="fp32")
    assert model.checkpoint_dir == cache.cached_snapshot(REPO)
    logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits).all()


def test_offline_without_the_model_fails_fast_with_the_download_command(
    env, fake: FakeHub, monkeypatch
) -> None:
    with pytest.raises(Sc2Error, match=r"offline mode is on; run `sc2 download test/tiny-sc2` online"):
        resolve_model(REPO, offline=True)
    with pytest.raises(Sc2Error, match=r"run `sc2 download 7b --revision v2` online"):
        resolve_model("7b", revision="v2", offline=True)
    assert fake.requests == []
    env["HF_HUB_OFFLINE"] = "1"
    done = python(env, RESOLVE.format(name=REPO, revision=None))
    assert done.returncode == 1
    assert "run `sc2 download test/tiny-sc2` online" in done.stderr
    done = sc2(env, "download", REPO)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "sc2: error: cannot download test/tiny-sc2: offline mode is on (HF_HUB_OFFLINE); unset it and retry"
    )
    assert fake.requests == []


def test_offline_with_the_model_works(env, fake: FakeHub) -> None:
    folder = download(REPO)
    fake.stop()
    env["HF_HUB_OFFLINE"] = "1"
    done = python(env, RESOLVE.format(name=REPO, revision=None))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder)


def test_revisions_are_pinned_by_branch_tag_or_commit(env, fake: FakeHub, checkpoint) -> None:
    main = fake.repos[REPO].refs["main"]
    v2 = fake.add_commit(REPO, tiny_checkpoint(seed=1, num_hidden_layers=1), ref="v2")
    fake.repos[REPO].refs["release"] = v2  # a tag on the same commit
    assert resolve_model(REPO, revision="v2").name == v2
    assert (
        json.loads((resolve_model(REPO, revision="v2") / "config.json").read_text())["num_hidden_layers"] == 1
    )
    assert resolve_model(REPO).name == main
    assert resolve_model(REPO, revision="release").name == v2
    assert resolve_model(REPO, revision=v2).name == v2
    fake.stop()
    assert resolve_model(REPO, revision="v2", offline=True).name == v2
    assert resolve_model(REPO, revision=v2[:8], offline=True).name == v2  # a short commit, from the cache
    with pytest.raises(Sc2Error, match="--revision v3"):
        resolve_model(REPO, revision="v3", offline=True)


def test_update_moves_to_the_new_commit_only_when_asked(env, fake: FakeHub) -> None:
    old = resolve_model(REPO)
    new = fake.add_commit(REPO, tiny_checkpoint(seed=2))
    assert resolve_model(REPO) == old
    assert resolve_model(REPO, update=True).name == new
    assert resolve_model(REPO).name == new  # main now points at the new commit in the cache
    with pytest.raises(Sc2Error, match="cannot check for updates"):
        resolve_model(REPO, update=True, offline=True)


def test_unknown_revision(env, fake: FakeHub) -> None:
    with pytest.raises(InputError, match="test/tiny-sc2 has no revision 'v9'"):
        download(REPO, revision="v9")


def test_sharded_checkpoint(env, fake: FakeHub) -> None:
    files = tiny_checkpoint(shards=3)
    fake.add_commit("test/sharded", files)
    folder = resolve_model("test/sharded")
    assert {p.name for p in folder.iterdir()} == set(files)
    shard = blob_of(folder, "model-00002-of-00003.safetensors")
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(
        CheckpointError, match=r"cached model-00002-of-00003.safetensors is damaged: truncated"
    ):
        resolve_model("test/sharded")


def test_progress_counts_every_byte(env, fake: FakeHub, checkpoint) -> None:
    reports: list[tuple[int, int]] = []
    download(REPO, progress=lambda done, total: reports.append((done, total)))
    size = sum(
        len(checkpoint[f]) for f in INFERENCE_FILES - {"config.json"}
    )  # config.json comes first, alone
    assert reports[0] == (0, size) and reports[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(reports))


# ---------------------------------------------------------------------------------------------------------
# Failures: one clear line each
# ---------------------------------------------------------------------------------------------------------


def test_repo_not_found(env, fake: FakeHub, capsys) -> None:
    with pytest.raises(
        InputError, match=r"test/nope: no such model on the hub; check the name.*hf auth login"
    ):
        resolve_model("test/nope")
    code, out, err = run_cli(capsys, "download", "test/nope")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sc2: error: test/nope: no such model on the hub")


def test_private_repo_asks_to_log_in_then_works_with_a_token(
    env, fake: FakeHub, checkpoint, monkeypatch
) -> None:
    fake.add_commit("test/private", checkpoint, token="hf_secret")
    with pytest.raises(InputError, match=r"if it is private, log in with `hf auth login`.* or set HF_TOKEN"):
        resolve_model("test/private")
    assert any(r.path.startswith("/api/models/test/private") for r in fake.requests)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert resolve_model("test/private").is_dir()
    assert fake.requests[-1].headers.get("Authorization") is None  # the CDN never sees the token
    assert any(r.headers.get("Authorization") == "Bearer hf_secret" for r in fake.requests_to("/resolve/"))


def test_gated_repo_says_where_to_accept_and_how_to_log_in(
    env, fake: FakeHub, checkpoint, monkeypatch
) -> None:
    fake.add_commit("test/gated", checkpoint, token="hf_secret", gated=True)
    with pytest.raises(Sc2Error) as failure:
        resolve_model("test/gated")
    message = str(failure.value)
    assert message.startswith("test/gated is gated: accept its terms at http://127.0.0.1:")
    assert "/test/gated, then log in with `hf auth login`" in message and "HF_TOKEN" in message
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert resolve_model("test/gated").is_dir()


def test_unreachable_hub(env, monkeypatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_env(monkeypatch, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    with pytest.raises(Sc2Error, match=rf"cannot reach the hub at http://127.0.0.1:{port} to fetch {REPO}"):
        resolve_model(REPO)


def test_not_a_starcoder2_model(env, fake: FakeHub, checkpoint) -> None:
    llama = {**checkpoint, "config.json": json.dumps({"model_type": "llama"}).encode()}
    fake.add_commit("test/llama", llama)
    with pytest.raises(
        CheckpointError, match=r"test/llama is not a StarCoder2 model \(.*model_type 'llama'\)"
    ):
        resolve_model("test/llama")
    assert fake.requests_to("/resolve/") == []  # refused before fetching anything
    # the same model cached by another tool is refused without the network
    from huggingface_hub import snapshot_download

    snapshot_download("test/llama")
    fake.stop()
    with pytest.raises(CheckpointError, match="not a StarCoder2 model"):
        resolve_model("test/llama")


def test_pickled_weights_are_never_fetched(env, fake: FakeHub, checkpoint) -> None:
    files = {k: v for k, v in checkpoint.items() if k != "model.safetensors"}
    fake.add_commit("test/pickles", {**files, "pytorch_model.bin": b"pickle"})
    with pytest.raises(CheckpointError, match=r"only pickled \*.bin weights; sc2 loads safetensors only"):
        download("test/pickles")
    assert fake.requests_to("pytorch_model.bin") == []


def test_refuses_a_download_that_does_not_fit_on_the_disk(
    env, fake: FakeHub, checkpoint, monkeypatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    size = sum(len(checkpoint[f]) for f in INFERENCE_FILES - {"config.json"})
    with pytest.raises(
        Sc2Error,
        match=rf"not enough disk space for {REPO}: it needs {cache.format_bytes(size)}, .* has 1.0 kB free",
    ):
        download(REPO)
    assert cdn_gets(fake) == []


# ---------------------------------------------------------------------------------------------------------
# Interrupted and damaged downloads
# ---------------------------------------------------------------------------------------------------------


def test_an_interrupted_transfer_resumes_where_it_stopped(
    env, fake: FakeHub, checkpoint, monkeypatch
) -> None:
    monkeypatch.setattr(transfer, "RETRY_WAIT", 0)
    weights = checkpoint["model.safetensors"]
    fake.interrupt(weights)  # the connection drops after half the file, once
    reports: list[tuple[int, int]] = []
    folder = download(REPO, progress=lambda done, total: reports.append((done, total)))
    assert (folder / "model.safetensors").read_bytes() == weights
    assert ranges_asked(fake, weights) == [None, f"bytes={len(weights) // 2}-"]  # from the very next byte
    assert fake.served[sha256(weights)] == len(weights)
    assert reports[-1][0] == reports[-1][1]
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(reports))


def test_a_truncated_cached_file_is_detected_and_repaired(
    env, fake: FakeHub, checkpoint, capsys, monkeypatch
) -> None:
    folder = download(REPO)
    blob = blob_of(folder, "model.safetensors")
    blob.write_bytes(checkpoint["model.safetensors"][:5000])
    fake.stop()
    message = rf"{REPO}: cached model.safetensors is damaged: truncated: 5,000 of .* re-download it with `sc2 download {REPO} --force`"
    with pytest.raises(CheckpointError, match=message):
        resolve_model(REPO)
    code, _, err = run_cli(capsys, "download", REPO, "--force")
    assert code == 1 and "cannot reach the hub" in err
    config = blob_of(folder, "config.json")
    config.write_bytes(checkpoint["config.json"][:100])
    with pytest.raises(CheckpointError, match="cached config.json is damaged: not valid JSON"):
        resolve_model(REPO)
    fake.start()
    set_env(monkeypatch, HF_ENDPOINT=fake.endpoint)  # the restarted server has a new port
    assert download(REPO) == folder  # a plain download repairs both
    for name in INFERENCE_FILES:
        assert (folder / name).read_bytes() == checkpoint[name]


def test_a_corrupt_cached_file_is_found_by_its_checksum(env, fake: FakeHub, checkpoint, capsys) -> None:
    folder = download(REPO)
    blob = blob_of(folder, "model.safetensors")
    assert blob.name == hashlib.sha256(checkpoint["model.safetensors"]).hexdigest()
    damaged = bytearray(blob.read_bytes())
    damaged[-10] ^= 0xFF  # same size, valid header: only a checksum can tell
    blob.write_bytes(bytes(damaged))
    assert cache.checksum_mismatches(folder, INFERENCE_FILES) == ["model.safetensors"]
    gets = len(cdn_gets(fake))
    code, out, _ = run_cli(capsys, "download", REPO, "--verify")
    assert code == 0 and out.strip() == str(folder)
    assert len(cdn_gets(fake)) == gets + 1
    assert (folder / "model.safetensors").read_bytes() == checkpoint["model.safetensors"]
    assert cache.checksum_mismatches(folder, INFERENCE_FILES) == []


def test_force_fetches_everything_again(env, fake: FakeHub) -> None:
    download(REPO)
    before = len(fake.requests_to("/resolve/", "GET"))
    download(REPO, force=True)
    assert len(fake.requests_to("/resolve/", "GET")) == before + 3  # the small files
    assert len(cdn_gets(fake)) == 2  # and the weights


# ---------------------------------------------------------------------------------------------------------
# Resuming across runs: the partial file survives Ctrl-C
# ---------------------------------------------------------------------------------------------------------


def test_ctrl_c_keeps_the_partial_file_and_the_next_run_resumes(env, fake: FakeHub, checkpoint) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    weights = checkpoint["model.safetensors"]
    at = len(weights) // 3
    fake.stall(weights, at)
    env["HF_TOKEN"] = "hf_secret"  # sent to the hub, never to the CDN, on the first run or the resumed one
    partial = partial_file(weights)
    first = subprocess.Popen(
        [sys.executable, "-m", "sc2cli", "download", REPO],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: partial.is_file() and partial.stat().st_size >= at, "the first bytes", first)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert out == "" and err.splitlines() == [
        f"sc2: download interrupted; run `sc2 download {REPO}` to resume it"
    ]
    assert partial.stat().st_size == at
    incomplete = scan_cache_dir(cache.hub_cache()).incomplete_files  # what `hf cache` lists and prunes
    assert [f.file_path for f in incomplete] == [partial]

    done = sc2(env, "download", REPO)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert ranges_asked(fake, weights) == [None, f"bytes={at}-"]
    assert fake.served[sha256(weights)] == len(weights)  # every byte sent once
    blob = blob_of(folder, "model.safetensors")
    assert blob.parent.name == "blobs" and blob.name == sha256(weights) == sha256(blob.read_bytes())
    assert not partial.exists()
    assert all("Authorization" not in r.headers for r in cdn_gets(fake))
    assert all(r.headers.get("Authorization") == "Bearer hf_secret" for r in fake.requests_to("/resolve/"))
    # other hub tools see the file exactly as one of their own
    found = hf_hub_download(REPO, "model.safetensors", local_files_only=True, cache_dir=cache.hub_cache())
    assert Path(found) == folder / "model.safetensors"
    scan = scan_cache_dir(cache.hub_cache())
    (revision,) = next(iter(scan.repos)).revisions
    assert {f.file_name for f in revision.files} == INFERENCE_FILES and not scan.incomplete_files
    assert {f.blob_path for f in revision.files if f.file_name == "model.safetensors"} == {blob}


def test_new_weights_on_the_hub_start_over_and_drop_the_old_partial(env, fake: FakeHub, checkpoint) -> None:
    old = checkpoint["model.safetensors"]
    stale = interrupted_download(fake, old, len(old) // 2)
    files = tiny_checkpoint(seed=3)
    new = files["model.safetensors"]
    fake.add_commit(REPO, files)  # main moves on: the weights have another etag
    folder = download(REPO)
    assert (folder / "model.safetensors").read_bytes() == new
    assert ranges_asked(fake, new) == [None]  # nothing of the old file is reused
    assert not stale.exists() and not partial_file(new).exists()


def test_a_damaged_partial_file_is_caught_by_its_checksum_and_fetched_again(
    env, fake: FakeHub, checkpoint, capsys
) -> None:
    weights = checkpoint["model.safetensors"]
    at = len(weights) // 2
    partial = interrupted_download(fake, weights, at)
    damaged = bytearray(partial.read_bytes())
    damaged[at // 2] ^= 0xFF  # as a crash might leave it: same size, wrong bytes
    partial.write_bytes(bytes(damaged))
    code, out, err = run_cli(capsys, "download", REPO)
    assert code == 0 and out.strip() == str(cache.cached_snapshot(REPO))
    assert err.splitlines()[:-1] == [
        "sc2: model.safetensors: the downloaded data does not match its checksum; fetching it again from the start"
    ]
    assert ranges_asked(fake, weights) == [None, f"bytes={at}-", None]
    assert fake.served[sha256(weights)] == 2 * len(weights)
    assert (cache.cached_snapshot(REPO) / "model.safetensors").read_bytes() == weights


def test_bytes_served_are_counted_before_the_test_reads_them(
    env, fake: FakeHub, checkpoint, monkeypatch
) -> None:
    """The CDN thread counts an answer's bytes after sending them, so a client can hold them all, and a test read
    the count, before that thread runs again (as on a busy machine): `served` waits for the count."""
    counted = FakeHub.count_served

    def late(server: FakeHub, sha: str, n: int) -> None:
        time.sleep(0.5)  # the client has the bytes; this thread has yet to count them
        counted(server, sha, n)

    monkeypatch.setattr(FakeHub, "count_served", late)
    weights = checkpoint["model.safetensors"]
    download(REPO)
    assert fake.served[sha256(weights)] == len(weights)


def test_a_file_that_never_matches_its_checksum_is_not_kept(env, fake: FakeHub, checkpoint) -> None:
    weights = checkpoint["model.safetensors"]
    fake.blobs[sha256(weights)] = weights[:-1] + bytes([weights[-1] ^ 1])  # the CDN serves wrong bytes
    with pytest.raises(
        CheckpointError,
        match=rf"^{REPO}: model.safetensors does not match the hub's checksum even when fetched again",
    ):
        download(REPO)
    assert len(ranges_asked(fake, weights)) == 2
    blobs = cache.repo_cache_dir(REPO) / "blobs"
    assert not (blobs / sha256(weights)).exists() and not partial_file(weights).exists()


def test_a_server_that_ignores_the_range_starts_the_file_over(env, fake: FakeHub, checkpoint) -> None:
    weights = checkpoint["model.safetensors"]
    at = len(weights) // 2
    interrupted_download(fake, weights, at)
    fake.honour_ranges = False  # answers 200 with the whole file
    reports: list[tuple[int, int]] = []
    folder = download(REPO, progress=lambda done, total: reports.append((done, total)))
    assert (folder / "model.safetensors").read_bytes() == weights
    assert ranges_asked(fake, weights) == [None, f"bytes={at}-"]
    assert fake.served[sha256(weights)] == at + len(weights)
    assert reports[0] == (at, len(weights)) and reports[-1] == (len(weights), len(weights))
    assert all(done <= total for done, total in reports)


def test_progress_and_the_disk_check_count_only_the_missing_bytes(
    env, fake: FakeHub, checkpoint, monkeypatch
) -> None:
    weights = checkpoint["model.safetensors"]
    at = len(weights) // 2
    interrupted_download(fake, weights, at)
    missing = len(weights) - at  # the other files came before the weights and are cached
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, missing - 1))
    with pytest.raises(
        Sc2Error, match=rf"not enough disk space for {REPO}: it needs {cache.format_bytes(missing)}"
    ):
        download(REPO)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, missing))
    reports: list[tuple[int, int]] = []
    download(REPO, progress=lambda done, total: reports.append((done, total)))
    assert reports[0] == (at, len(weights))  # the bar starts where the last run stopped
    assert reports[-1] == (len(weights), len(weights))
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(reports))


def test_a_download_waits_while_another_one_writes_the_same_file(env, fake: FakeHub, checkpoint) -> None:
    from huggingface_hub.utils import WeakFileLock

    weights = checkpoint["model.safetensors"]
    # the lock huggingface_hub takes around writing this blob: `hf download` and sc2 take turns
    lock = cache.hub_cache() / ".locks" / f"models--{REPO.replace('/', '--')}" / f"{sha256(weights)}.lock"
    lock.parent.mkdir(parents=True)
    notices: list[str] = []
    result: dict[str, Path] = {}
    worker = threading.Thread(target=lambda: result.update(folder=download(REPO, notice=notices.append)))
    with WeakFileLock(lock):
        worker.start()
        wait_until(lambda: notices, "the download to notice the other one")
        assert ranges_asked(fake, weights) == []
    worker.join(timeout=30)
    assert notices == ["another download of model.safetensors is running; waiting for it to finish"]
    assert (result["folder"] / "model.safetensors").read_bytes() == weights


# ---------------------------------------------------------------------------------------------------------
# models and rm
# ---------------------------------------------------------------------------------------------------------


def test_models_lists_cached_starcoder2_models_only(env, fake: FakeHub, checkpoint, capsys) -> None:
    assert run_cli(capsys, "models", "--json")[1].strip() == "[]"
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and out == "" and "no StarCoder2 model" in err
    v2 = fake.add_commit(REPO, tiny_checkpoint(seed=1), ref="v2")
    fake.add_commit("test/llama", {"config.json": b'{"model_type": "llama"}'})
    main = download(REPO)
    download(REPO, revision="v2")
    from huggingface_hub import hf_hub_download

    hf_hub_download("test/llama", "config.json")  # another tool's model: not ours to list
    listed = json.loads(run_cli(capsys, "models", "--json")[1])
    assert [(m["repo_id"], m["revision"], m["commit"], m["complete"]) for m in listed] == [
        (REPO, "main", main.name, True),
        (REPO, "v2", v2, True),
    ]
    assert listed[0]["path"] == str(main) and listed[0]["size"] > len(checkpoint["model.safetensors"])
    code, out, _ = run_cli(capsys, "models")
    header, first, second = out.splitlines()
    assert header.split() == ["MODEL", "REVISION", "SIZE", "PATH"]
    assert first.split()[:2] == [REPO, "main"] and first.split()[-1] == str(main)
    assert second.split()[:2] == [REPO, "v2"]
    (cache.cached_snapshot(REPO, "v2") / "tokenizer.json").unlink()  # as after an interrupted download
    assert [m.complete for m in cache.cached_models()] == [True, False]
    assert "v2 (incomplete)" in run_cli(capsys, "models")[1]


def test_rm_asks_first_and_removes_one_revision_or_all(env, fake: FakeHub, capsys, monkeypatch) -> None:
    fake.add_commit(REPO, tiny_checkpoint(seed=1), ref="v2")
    main = download(REPO)
    v2 = download(REPO, revision="v2")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run_cli(capsys, "rm", REPO)
    assert code == 2 and "stdin is not a terminal; pass --yes" in err
    assert main.exists()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, _, err = run_cli(capsys, "rm", REPO, "--revision", "v2")
    assert code == 1 and "nothing deleted" in err and v2.exists()
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, _, err = run_cli(capsys, "rm", REPO, "--revision", "v2")
    assert code == 0 and "deleted test/tiny-sc2 (v2)" in err
    assert not v2.exists() and main.exists()
    code, _, err = run_cli(capsys, "rm", REPO, "--yes")
    assert code == 0 and not cache.repo_cache_dir(REPO).exists()
    code, _, err = run_cli(capsys, "rm", REPO, "--yes")
    assert code == 2 and "test/tiny-sc2 is not in the cache (see `sc2 models`)" in err


def test_cli_download_models_rm_in_a_fresh_process(env, fake: FakeHub) -> None:
    done = sc2(env, "download", REPO)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.is_relative_to(Path(env["HF_HOME"])) and (folder / "model.safetensors").is_file()
    listed = sc2(env, "models", "--json")
    assert [m["path"] for m in json.loads(listed.stdout)] == [str(folder)]
    removed = sc2(env, "rm", REPO, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(sc2(env, "models", "--json").stdout) == []


def test_listing_models_does_not_import_torch(env, fake: FakeHub) -> None:
    download(REPO)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sc2cli", "models"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and REPO in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported


def test_wrapped_and_http_failures_become_one_line_errors() -> None:
    import httpx2
    from huggingface_hub import errors as hf

    wrapped = ValueError("Force download failed due to the above error.")
    wrapped.__cause__ = httpx2.ConnectError("[Errno 111] Connection refused")
    error = hub_errors.translate(wrapped, REPO, REPO, None)
    assert (
        isinstance(error, Sc2Error)
        and "cannot reach the hub" in str(error)
        and "Connection refused" in str(error)
    )
    assert hub_errors.translate(ValueError("a bug"), REPO, REPO, None) is None  # unknown: keeps its traceback

    for status, message in [
        (403, "access forbidden"),
        (429, "rate-limiting"),
        (503, "answered HTTP 503"),
        (404, "no such model"),
    ]:
        response = httpx2.Response(
            status, request=httpx2.Request("GET", "http://127.0.0.1/api/models/test/x")
        )
        failure = hf.HfHubHTTPError(f"{status} error", response=response)
        assert message in str(hub_errors.translate(failure, REPO, REPO, None))


def test_models_marks_damaged_entries(env, fake: FakeHub, capsys) -> None:
    folder = download(REPO)
    blob = (folder / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-10])  # truncated, as a disk that filled up leaves it
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "main (damaged)" in out
    code, out, _ = run_cli(capsys, "models", "--json")
    [listed] = json.loads(out)
    assert listed["complete"] is True and listed["damaged"] == ["model.safetensors"]


def test_rm_that_cannot_delete_says_so_and_claims_nothing(env, fake: FakeHub, capsys, monkeypatch) -> None:
    """As in a cache the user cannot write (tests run as root, which ignores permissions: the deletions
    themselves fail here, inside huggingface_hub's own deletion code)."""
    folder = download(REPO)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    monkeypatch.setattr(os, "remove", refuse)
    monkeypatch.setattr(Path, "unlink", refuse)
    code, out, err = run_cli(capsys, "rm", REPO, "--yes")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert (
        err.startswith("sc2: error: could not delete test/tiny-sc2 (main): ") and "permission denied" in err
    )
    assert "0 of 1 revisions deleted" in err and "Traceback" not in err
    assert folder.exists() and [m.commit for m in cache.cached_models()] == [folder.name]
