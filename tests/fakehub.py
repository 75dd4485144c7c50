"""A tiny Hugging Face hub on 127.0.0.1, so the real huggingface_hub client can be tested end to end offline.

It serves what the client calls, the way the hub answers:
  GET  /api/models/{repo}[/revision/{rev}]   repo info: `sha` and `siblings` (size, blobId, lfs)
  GET  /api/models/{repo}/tree/{rev}         the file listing (snapshot_download, as other tools use it)
  HEAD /{repo}/resolve/{rev}/{file}          small files: 200 with ETag (git blob id), Content-Length,
                                             X-Repo-Commit; LFS files (*.safetensors, *.bin): 302 to the
                                             "CDN" (a second server, another origin) with X-Linked-Etag
                                             (sha256) and X-Linked-Size
  GET  the same                              the bytes (small files) or the redirect (LFS files)
  GET  {cdn}/{sha256}                        the bytes, with Range requests (206 + Content-Range)
Errors carry the hub's `X-Error-Code` header (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), which
is what the client turns into its exception classes. Every request is logged, and the CDN counts the bytes it
sends of each blob, for the tests to inspect (`served` first waits for the writes under way to be counted). To
exercise resumption, the CDN's next answer for a blob can drop the connection halfway through (`interrupt`) or
stall after byte N until the client hangs up (`stall`), and it can ignore Range headers (`honour_ranges = False`),
answering 200 with the whole file as some servers do.

`tiny_checkpoint()` writes a random StarCoder2 checkpoint in pure Python: a config.json, safetensors weights
with the Hugging Face tensor names (one file or shards plus index) and a tokenizer.json.
"""

from __future__ import annotations

import hashlib
import json
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")
STALL_LIMIT = 30.0  # seconds a stalled answer waits for the client to hang up before the server does
SEND_LIMIT = 30.0  # seconds `served` waits for the writes under way to end


# ---------------------------------------------------------------------------------------------------------
# A tiny random checkpoint
# ---------------------------------------------------------------------------------------------------------


def tiny_config(**overrides: object) -> dict:
    """A StarCoder2 config.json small enough to write and load in milliseconds."""
    config = {
        "architectures": ["Starcoder2ForCausalLM"],
        "model_type": "starcoder2",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": 128,
        "norm_epsilon": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "use_bias": True,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The Hugging Face names and shapes of a StarCoder2 checkpoint's tensors (tied head: no lm_head)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes |= {f"{p}{norm}.weight": (h,), f"{p}{norm}.bias": (h,)}
        for proj, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
            shapes |= {f"{p}self_attn.{proj}.weight": (rows, h), f"{p}self_attn.{proj}.bias": (rows,)}
        shapes |= {f"{p}mlp.c_fc.weight": (i, h), f"{p}mlp.c_fc.bias": (i,)}
        shapes |= {f"{p}mlp.c_proj.weight": (h, i), f"{p}mlp.c_proj.bias": (h,)}
    shapes |= {"model.norm.weight": (h,), "model.norm.bias": (h,)}
    return shapes


def safetensors_bytes(tensors: dict[str, tuple[tuple[int, ...], bytes]]) -> bytes:
    """A safetensors file of float32 tensors: 8-byte header length, JSON header, then the data."""
    header, offset = {}, 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(data for _, data in tensors.values())


def _random_tensor(name: str, shape: tuple[int, ...], rng: random.Random) -> bytes:
    count = 1
    for dim in shape:
        count *= dim
    if name.endswith("norm.weight"):
        values = [1.0] * count
    elif name.endswith(".bias"):
        values = [0.0] * count
    else:
        values = [rng.gauss(0.0, 0.02) for _ in range(count)]
    return struct.pack(f"<{count}f", *values)


def tokenizer_json(vocab_size: int) -> bytes:
    """A byte-level BPE tokenizer.json with `vocab_size` tokens, made with the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<file_sep>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    alphabet.sort()
    vocab = {token: i for i, token in enumerate(specials + alphabet[: vocab_size - len(specials)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    return tokenizer.to_str().encode()


def tiny_checkpoint(*, seed: int = 0, shards: int = 1, **config_overrides: object) -> dict[str, bytes]:
    """The files of a random StarCoder2 checkpoint: {filename: content}."""
    config = tiny_config(**config_overrides)
    rng = random.Random(seed)
    tensors = {
        name: (shape, _random_tensor(name, shape, rng)) for name, shape in tensor_shapes(config).items()
    }
    files = {
        "config.json": json.dumps(config, indent=2).encode(),
        "generation_config.json": json.dumps({"bos_token_id": 0, "eos_token_id": 0}).encode(),
        "tokenizer.json": tokenizer_json(config["vocab_size"]),
    }
    if shards == 1:
        files["model.safetensors"] = safetensors_bytes(tensors)
        return files
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = names[k::shards]
        files[shard] = safetensors_bytes({n: tensors[n] for n in part})
        weight_map |= dict.fromkeys(part, shard)
    total = sum(len(data) for _, data in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    return files


# ---------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    token: str | None = None  # private: only this token sees it
    gated: bool = False  # gated: files need this token (the info page is public)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


class FakeHub:
    """Two threaded HTTP servers on 127.0.0.1: the hub (API and /resolve) and a CDN for LFS blobs."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content, what the CDN serves
        self.requests: list[Request] = []
        self.interrupt_once: set[str] = set()  # sha256 of blobs whose next GET stops halfway
        self.stall_once: dict[str, int] = {}  # sha256 -> the byte at which the blob's next GET stalls
        self.honour_ranges = True  # False: the CDN answers every GET with the whole file (200)
        self._served: dict[str, int] = {}  # see `served`
        self._sending = 0  # writes under way: sent, or being sent, and not yet counted
        self._sent = threading.Condition()
        self.released = threading.Event()  # set when the server stops: stalled answers end
        self._servers: list[ThreadingHTTPServer] = []

    # -- content --------------------------------------------------------------------------------------

    def add_commit(self, repo_id: str, files: dict[str, bytes], *, ref: str = "main", **repo_options) -> str:
        """Publish `files` as a new commit of `repo_id` and point `ref` at it; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, Repo(**repo_options))
        commit = hashlib.sha1(f"{repo_id}:{len(repo.commits)}:{sorted(files)}".encode()).hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[ref] = commit
        for name, data in files.items():
            if name.endswith(LFS_SUFFIXES):
                self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def interrupt(self, data: bytes) -> None:
        """Make the next download of `data` drop the connection halfway through."""
        self.interrupt_once.add(hashlib.sha256(data).hexdigest())

    def stall(self, data: bytes, at: int) -> None:
        """Make the next download of `data` send the bytes before `at`, then nothing, as a stalled network does,
        until the client hangs up (or the server stops)."""
        self.stall_once[hashlib.sha256(data).hexdigest()] = at

    def count_served(self, sha: str, n: int) -> None:
        with self._sent:
            self._served[sha] = self._served.get(sha, 0) + n

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Around a write and its count: `served` waits for it to end."""
        with self._sent:
            self._sending += 1
        try:
            yield
        finally:
            with self._sent:
                self._sending -= 1
                self._sent.notify_all()

    @property
    def served(self) -> dict[str, int]:
        """sha256 -> bytes of the blob the CDN has sent, all requests together. A client can hold every byte of
        an answer while the server thread that wrote them has yet to count them (a busy machine may not run it
        for a while), so this waits for the writes under way to end: what a client has received is counted."""
        with self._sent:
            if not self._sent.wait_for(lambda: self._sending == 0, timeout=SEND_LIMIT):
                raise AssertionError(f"the fake CDN was still sending after {SEND_LIMIT:.0f} s")
            return dict(self._served)

    def requests_to(self, fragment: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    # -- life cycle -----------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        self.released.clear()
        for role in ("hub", "cdn"):
            handler = type(f"{role}Handler", (_Handler,), {"hub": self, "role": role})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        self.released.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    role: str
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped server really is gone

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    # -- routing --------------------------------------------------------------------------------------

    def _route(self, body: bool) -> None:
        headers = {key.title(): value for key, value in self.headers.items()}  # Range, Authorization, ...
        self.hub.requests.append(Request(self.command, self.path, headers))
        path = urlsplit(self.path).path
        if self.role == "cdn":
            return self._cdn(path.strip("/"), body)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            if len(parts) >= 6 and parts[4] == "tree":
                return self._tree("/".join(parts[2:4]), unquote(parts[5]))
            rev = unquote(parts[5]) if len(parts) >= 6 and parts[4] == "revision" else "main"
            return self._info("/".join(parts[2:4]), rev)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:])), body)
        self._error(404, "EntryNotFound", "no such route")

    def _authorized(self, repo: Repo) -> bool:
        return self.headers.get("Authorization") == f"Bearer {repo.token}"

    def _find(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
        """The repo and commit, or None after answering with the hub's error."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.token and not repo.gated and not self._authorized(repo):
            self._error(401, "RepoNotFound", "Invalid username or password.")
            return None
        commit = repo.refs.get(rev) or next(
            (c for c in repo.commits if len(rev) >= 7 and c.startswith(rev)), None
        )
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, commit

    # -- endpoints ------------------------------------------------------------------------------------

    def _info(self, repo_id: str, rev: str) -> None:
        found = self._find(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        siblings = []
        for name, data in repo.commits[commit].items():
            entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "pointerSize": 134,
                }
            siblings.append(entry)
        info = {
            "_id": commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit,
            "private": bool(repo.token) and not repo.gated,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }
        config = repo.commits[commit].get("config.json")
        if config is not None:
            info["config"] = {"model_type": json.loads(config).get("model_type")}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body=True)

    def _tree(self, repo_id: str, rev: str) -> None:
        """The file listing other tools (snapshot_download) ask for; all files sit at the repo's root."""
        found = self._find(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        entries = []
        for name, data in repo.commits[commit].items():
            entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body=True)

    def _resolve(self, repo_id: str, rev: str, filename: str, body: bool) -> None:
        found = self._find(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        if repo.gated and not self._authorized(repo):
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return
        data = repo.commits[commit].get(filename)
        if data is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": commit})
            return
        headers = {"X-Repo-Commit": commit}
        if filename.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            headers |= {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"'}
            headers["Location"] = f"{self.hub.cdn}/{sha}"
            self._send(302, b"", headers, body=body)
            return
        headers["ETag"] = f'"{git_blob_id(data)}"'
        self._send_range(data, headers, body)

    def _cdn(self, sha: str, body: bool) -> None:
        data = self.hub.blobs.get(sha)
        if data is None:
            self._send(404, b"", {}, body=body)
        elif body and sha in self.hub.interrupt_once:
            self.hub.interrupt_once.discard(sha)
            self._send_truncated(data, sha)
        elif body and sha in self.hub.stall_once:
            self._send_stalled(data, self.hub.stall_once.pop(sha), sha)
        else:
            self._send_range(data, {"ETag": f'"{sha}"'}, body, sha=sha)

    # -- responses ------------------------------------------------------------------------------------

    def _send_range(self, data: bytes, headers: dict[str, str], body: bool, sha: str | None = None) -> None:
        start = _range_start(self.headers.get("Range")) if self.hub.honour_ranges else None
        if start is None:
            self._send(200, data, headers | {"Accept-Ranges": "bytes"}, body=body, sha=sha)
            return
        rest = data[start:]
        headers |= {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        self._send(206, rest, headers, body=body, sha=sha)

    def _send_stalled(self, data: bytes, stop: int, sha: str) -> None:
        """Answer as `_send_range` would, but send only the bytes before `stop`, then wait for the client to hang
        up, and hang up too."""
        start = _range_start(self.headers.get("Range")) or 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self._write(data[start:stop], sha)
        self.wfile.flush()
        deadline = time.monotonic() + STALL_LIMIT
        while not self.hub.released.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([self.connection], [], [], 0.05)
            if ready and not self.connection.recv(1, socket.MSG_PEEK):
                break  # the client hung up
        self.close_connection = True

    def _send_truncated(self, data: bytes, sha: str) -> None:
        """Announce the whole file, send half of it, and hang up."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._write(data[: len(data) // 2], sha)
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(status, json.dumps({"error": message}).encode(), headers | (extra or {}), body=True)

    def _send(
        self, status: int, data: bytes, headers: dict[str, str], *, body: bool, sha: str | None = None
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and self.command != "HEAD":
            self._write(data, sha)

    def _write(self, data: bytes, sha: str | None) -> None:
        """Send `data`, counting it as served of blob `sha`; a client that hung up is no error here."""
        with self.hub.sending():
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            if sha is not None:
                self.hub.count_served(sha, len(data))


def _range_start(header: str | None) -> int | None:
    """The first byte of a `Range: bytes=N-` request (the only form the client sends)."""
    if not header or not header.startswith("bytes="):
        return None
    start, _, _end = header[len("bytes=") :].partition("-")
    return int(start) if start else None
