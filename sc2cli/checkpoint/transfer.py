"""Moving a model's bytes: one progress total across the files of a download, and weight files fetched
by a transfer that survives the process.

Interrupted downloads resume, even across processes (Ctrl-C, a killed process, a reboot). Small files go
through `hf_hub_download`; the weights (every safetensors file, and any other LFS file of 16 MB or more)
are transferred here, because huggingface_hub 2.x streams each file into a temporary file with a random
name that it deletes when the process stops, so a 12 GB checkpoint interrupted at 90% would start over.
Here the bytes received so far stay in `blobs/<etag>.incomplete` next to the blob they will become (the
name older huggingface_hub versions used for the same purpose; `hf cache` still lists and prunes such
files), and the next run asks for the rest with `Range: bytes=<size>-`. A 200 answer (range ignored)
starts the file over; new weights on the hub have a new etag, so they start from an empty file, and
partial files that no wanted file names any more are deleted. The whole file must hash to its etag
(sha256 for LFS files, else the git blob id); one that does not is fetched once more from the start. Only
then is it renamed into `blobs/<etag>` and linked from `snapshots/<commit>/<file>` as huggingface_hub links
its own, so `hf_hub_download(..., local_files_only=True)`, `scan_cache_dir()` and every hub tool find it.

Everything but the byte transfer still comes from huggingface_hub: the metadata request (redirect target,
etag, commit, size), the headers (token, user agent), its HTTP client (HF_HUB_OFFLINE, HF_ENDPOINT,
timeouts, proxies), its symlink helper and its lock file per blob, so two downloads of one file (sc2 or
`hf download`) take turns instead of writing the same partial file. The token goes only to the hub's own
origin, never to the CDN a redirect points to. Within one run a dropped connection is retried from the
last byte received.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

from ..errors import CheckpointError, Sc2Error
from .cache import HASH_CHUNK, format_bytes, hub_cache, repo_cache_dir
from .hub_errors import endpoint, network_errors
from .names import COMMIT_RE

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)
Notice = Callable[[str], None]  # one line for the user, while a download goes on

SHA256_RE = re.compile(r"[0-9a-f]{64}")
RESUMABLE_SIZE = 16 << 20  # LFS files this big (and every safetensors file) are fetched resumably, here
PARTIAL_SUFFIX = ".incomplete"  # blobs/<etag>.incomplete: the bytes of blobs/<etag> received so far
STREAM_RETRIES = 5  # attempts in a row without progress before a transfer gives up (as huggingface_hub)
RETRY_WAIT = 1.0  # seconds between them
LOCK_PROBE = 0.2  # seconds to wait for a blob's lock before saying another download holds it


def expected_size(sibling: Any) -> int | None:
    lfs = getattr(sibling, "lfs", None)
    if lfs is not None:
        return int(lfs.size)
    size = getattr(sibling, "size", None)
    return int(size) if size is not None else None


class Transfer:
    """Bytes received across the files of one download, reported as `progress(done, total)`. Its `bar_class`
    stands in for the tqdm class huggingface_hub instantiates for each file it streams."""

    def __init__(self, total: int, progress: Progress | None, *, done: int = 0) -> None:
        self.total = total
        self.done = done  # bytes kept from an interrupted run count as done from the start
        self.progress = progress
        self._lock = threading.Lock()
        self.bar_class = self._make_bar_class()
        if progress is not None and total:
            progress(done, total)

    def add(self, n: float) -> None:
        """Count `n` more bytes (fewer, when negative: a file that starts over)."""
        with self._lock:
            self.done += int(n)
            done = self.done
        if self.progress is not None:
            self.progress(done, max(self.total, done))

    def _make_bar_class(self) -> type:
        transfer = self

        class Bar:
            """The part of tqdm's interface huggingface_hub uses while streaming a file."""

            def __init__(self, *args: object, initial: int = 0, **kwargs: object) -> None:
                if initial:  # bytes of a resumed file that an earlier attempt already wrote
                    transfer.add(initial)

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, n: float | None = 1) -> None:
                transfer.add(n or 0)

            def close(self) -> None:
                pass

            def refresh(self, *args: object, **kwargs: object) -> None:
                pass

            def set_description(self, *args: object, **kwargs: object) -> None:
                pass

            def set_postfix_str(self, *args: object, **kwargs: object) -> None:
                pass

        return Bar


def is_resumable(name: str, sibling: Any) -> bool:
    """Weight files, and other big LFS files, are fetched by `fetch_resumable`; the rest by huggingface_hub."""
    is_big_lfs = getattr(sibling, "lfs", None) is not None and (expected_size(sibling) or 0) >= RESUMABLE_SIZE
    return name.endswith(".safetensors") or is_big_lfs


def lfs_sha256(sibling: Any) -> str | None:
    """The etag the hub will give an LFS file (its sha256), known from the repo listing before any request."""
    return getattr(getattr(sibling, "lfs", None), "sha256", None)


def _partial_path(repo_id: str, etag: str) -> Path:
    return repo_cache_dir(repo_id) / "blobs" / (etag + PARTIAL_SUFFIX)


def _lock_path(repo_id: str, etag: str) -> Path:
    """The lock file huggingface_hub takes while it writes this blob: sharing it keeps sc2 and other hub tools
    from writing the same blob at once."""
    return hub_cache() / ".locks" / repo_cache_dir(repo_id).name / f"{etag}.lock"


def partial_size(repo_id: str, sibling: Any) -> int:
    """Bytes of this file that an interrupted run left in the cache (0 when none, or not known to be its)."""
    etag = lfs_sha256(sibling)
    if etag is None:
        return 0
    try:
        return min(_partial_path(repo_id, etag).stat().st_size, expected_size(sibling) or 0)
    except OSError:
        return 0


def drop_stale_partials(repo_id: str, keep: set[str | None]) -> None:
    """Delete the partial files of this repo that no file of this download continues (the hub has other
    weights now), unless another running download holds them."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    for path in (repo_cache_dir(repo_id) / "blobs").glob("*" + PARTIAL_SUFFIX):
        etag = path.name.removesuffix(PARTIAL_SUFFIX)  # huggingface_hub's own are <etag>.<id>.incomplete
        if etag in keep or not SHA256_RE.fullmatch(etag):
            continue
        with suppress(Timeout), WeakFileLock(_lock_path(repo_id, etag), timeout=LOCK_PROBE):
            path.unlink(missing_ok=True)


@dataclass
class _Source:
    """Where a file's bytes come from (the URL the hub redirects to, with the headers for that host) and what the
    hub says they are."""

    url: str
    headers: dict[str, str]
    etag: str
    commit: str
    size: int | None


def _file_source(repo_id: str, filename: str, commit: str) -> _Source:
    """Ask the hub about one file, as hf_hub_download does (a HEAD request that stops at the first redirect off
    the hub). The token goes with the GET only when it stays on the hub's origin."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, filename, revision=commit)
    meta = get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, retry_on_errors=True)
    if not meta.commit_hash or not meta.etag or not re.fullmatch(r"[0-9A-Za-z._-]{1,128}", meta.etag):
        raise Sc2Error(
            f"{endpoint()} sent no usable commit or etag for {repo_id}/{filename}; "
            "check that HF_ENDPOINT points to a Hugging Face hub"
        )
    location = urljoin(url, meta.location)
    headers = build_hf_headers()
    if _origin(location) != _origin(url):
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return _Source(location, headers, meta.etag, meta.commit_hash, meta.size)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (
        parts.scheme,
        (parts.hostname or "").lower(),
        parts.port or {"http": 80, "https": 443}.get(parts.scheme),
    )


def _check_repo_path(repo_id: str, filename: str) -> None:
    """A file name from the repo (or its shard index) that stays inside the snapshot folder."""
    path = PurePosixPath(filename)
    if path.is_absolute() or ".." in path.parts or "\\" in filename or not path.parts:
        raise CheckpointError(
            f"{repo_id}: refusing the file name {filename!r}, which points outside the model"
        )


def fetch_resumable(
    repo_id: str,
    filename: str,
    commit: str,
    *,
    force: bool,
    transfer: Transfer,
    credited: int,
    notice: Notice,
) -> Path:
    """One weight file into the cache, continuing what an interrupted run left; returns its snapshot path.
    `credited`: the bytes of it that `transfer` already counts as done."""
    _check_repo_path(repo_id, filename)
    source = _file_source(repo_id, filename, commit)
    storage = repo_cache_dir(repo_id)
    blob = storage / "blobs" / source.etag
    pointer = storage / "snapshots" / source.commit / filename
    blob.parent.mkdir(parents=True, exist_ok=True)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    with _blob_lock(repo_id, source.etag, filename, notice):
        if force or not blob.is_file():  # else another process finished it while we waited
            partial = _partial_path(repo_id, source.etag)
            if force:
                partial.unlink(missing_ok=True)
            _receive(source, partial, repo_id, filename, transfer=transfer, credited=credited, notice=notice)
            os.replace(partial, blob)
        else:
            _partial_path(repo_id, source.etag).unlink(missing_ok=True)
            transfer.add((source.size or 0) - credited)
        if not pointer.exists():
            from huggingface_hub.file_download import _create_symlink

            _create_symlink(str(blob), str(pointer), new_blob=True)
    return pointer


@contextmanager
def _blob_lock(repo_id: str, etag: str, filename: str, notice: Notice) -> Iterator[None]:
    """Hold huggingface_hub's lock for this blob; when another download holds it, say so and wait."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    path = _lock_path(repo_id, etag)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            stack.enter_context(WeakFileLock(path, timeout=LOCK_PROBE))
        except Timeout:
            notice(f"another download of {filename} is running; waiting for it to finish")
            stack.enter_context(WeakFileLock(path))
        yield


def _receive(
    source: _Source,
    partial: Path,
    repo_id: str,
    filename: str,
    *,
    transfer: Transfer,
    credited: int,
    notice: Notice,
) -> None:
    """Bring `partial` to the whole file with the etag's checksum: continue it, and once more from the start if
    the result does not match (bytes damaged on the disk or on the way)."""
    for attempt in (1, 2):
        with open(partial, "ab") as file:  # "ab": every write lands at the end, even after a truncate
            receiver = _Receiver(file, source, transfer)
            receiver.resume(partial, credited)
            _stream_all(source, receiver)
        if receiver.verified():
            return
        partial.unlink()
        transfer.add(-receiver.have)
        credited = 0
        if attempt == 2:
            raise CheckpointError(
                f"{repo_id}: {filename} does not match the hub's checksum even when fetched again; "
                "try again later"
            )
        notice(
            f"{filename}: the downloaded data does not match its checksum; fetching it again from the start"
        )


def _checksum(etag: str, size: int | None) -> Any:
    """A running hash that must end equal to `etag`: sha256 for LFS files, the git blob id for the others; None
    when the etag is neither (or the size a git blob id starts with is unknown)."""
    if SHA256_RE.fullmatch(etag):
        return hashlib.sha256()
    if COMMIT_RE.fullmatch(etag) and size is not None:
        return hashlib.sha1(f"blob {size}\0".encode())
    return None


class _Receiver:
    """Appends a blob's bytes to its partial file, counting them and keeping a running checksum of the whole."""

    def __init__(self, file: BinaryIO, source: _Source, transfer: Transfer) -> None:
        self.file = file
        self.source = source
        self.transfer = transfer
        self.have = 0  # bytes in the file
        self.received = 0  # bytes received in this run, never decreasing
        self.digest = _checksum(source.etag, source.size)

    def resume(self, path: Path, credited: int) -> None:
        """Keep the bytes an earlier run wrote (at most the file's size), hash them, and count them as done."""
        have = path.stat().st_size
        if self.source.size is not None:
            have = min(have, self.source.size)
        self.file.truncate(have)
        if self.digest is not None:
            with open(path, "rb") as f:
                while chunk := f.read(min(HASH_CHUNK, have - f.tell())):
                    self.digest.update(chunk)
        self.have = have
        self.transfer.add(have - credited)

    def restart(self) -> None:
        self.file.truncate(0)
        self.transfer.add(-self.have)
        self.have = 0
        self.digest = _checksum(self.source.etag, self.source.size)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.file.flush()  # on disk before it counts: what progress reports is what a Ctrl-C leaves
        if self.digest is not None:
            self.digest.update(chunk)
        self.have += len(chunk)
        self.received += len(chunk)
        self.transfer.add(len(chunk))

    @property
    def complete(self) -> bool:
        return self.source.size is not None and self.have >= self.source.size

    def verified(self) -> bool:
        whole = self.have == self.source.size
        return whole and (self.digest is None or self.digest.hexdigest() == self.source.etag)


def _stream_all(source: _Source, receiver: _Receiver) -> None:
    """GET what the file lacks until it is whole. A dropped connection is retried from the last byte received,
    up to STREAM_RETRIES times in a row without progress (huggingface_hub's rule for its own transfers)."""
    failures = 0
    while not receiver.complete:
        received, error = receiver.received, None
        try:
            _stream_rest(source, receiver)
        except network_errors() as e:
            error = e
        if receiver.complete:
            return
        failures = 0 if receiver.received > received else failures + 1
        if failures > STREAM_RETRIES:
            size = format_bytes(source.size or 0)
            raise error or OSError(f"the server keeps stopping at {format_bytes(receiver.have)} of {size}")
        time.sleep(RETRY_WAIT)


def _stream_rest(source: _Source, receiver: _Receiver) -> None:
    """One GET for the bytes the file lacks: `Range: bytes=<have>-` when it has some. A whole file in answer
    (200: the server ignored the range) restarts it; a range past the end (416) too. huggingface_hub's client
    follows the redirects (dropping the token on the way to another origin) and retries 429 and 5xx answers."""
    from huggingface_hub import constants
    from huggingface_hub.utils import http_stream_backoff

    headers = {**source.headers, "Accept-Encoding": "identity"}  # byte offsets must be the file's own
    if receiver.have:
        headers["Range"] = f"bytes={receiver.have}-"
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    with http_stream_backoff(
        "GET", source.url, headers=headers, timeout=timeout, retry_on_exceptions=()
    ) as response:
        if response.status_code == 416:
            receiver.restart()
            return
        if response.status_code >= 400:  # access was checked by the metadata request: a CDN or server fault
            raise OSError(f"{urlsplit(source.url).hostname} answered HTTP {response.status_code}")
        _check_start(response, receiver)
        if source.size is None:
            source.size = _announced_size(response)
        for chunk in response.iter_bytes():
            receiver.write(chunk)
    if source.size is None:  # no length announced: what came is the file
        source.size = receiver.have


def _check_start(response: Any, receiver: _Receiver) -> None:
    """Make the file match where the response starts: restart on a whole file, refuse any other range."""
    if response.status_code != 206:
        if receiver.have:
            receiver.restart()
        return
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != receiver.have:
        raise OSError(
            f"asked for bytes from {receiver.have:,}, the server sent {response.headers.get('Content-Range')}"
        )


def _announced_size(response: Any) -> int | None:
    """The whole file's size as a 200 or 206 response gives it, if it does."""
    if response.status_code == 206:
        size = response.headers.get("Content-Range", "").rpartition("/")[2]
    else:
        size = response.headers.get("Content-Length", "")
    return int(size) if size.isdigit() else None
