"""Which files of a git repository may be shown to the model: tracked ones only (`git ls-files`), so that
nothing git ignores (`.env`, build output, local secrets) can ever reach a prompt; and of those, no binary,
vendored, huge or key-like files. git runs as a subprocess; no git, or no repository, means no files."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 200_000  # bigger files are generated or data, rarely what a completion depends on
GIT_TIMEOUT_S = 10
VENDORED = frozenset(
    {"vendor", "vendored", "node_modules", "third_party", "third-party", "thirdparty", "external", "extern",
     "site-packages", ".venv", "venv", "bower_components", "dist", "build", "__pycache__", ".git"}
)  # fmt: skip
BINARY_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".ico", ".webp", ".pdf", ".zip", ".gz", ".tgz", ".bz2", ".xz", ".7z",
     ".tar", ".whl", ".so", ".dylib", ".dll", ".exe", ".bin", ".o", ".a", ".pyc", ".class", ".jar", ".woff",
     ".woff2", ".ttf", ".otf", ".mp3", ".mp4", ".wav", ".mov", ".safetensors", ".pt", ".pth", ".onnx",
     ".npy", ".npz", ".parquet", ".sqlite", ".db", ".lock"}
)  # fmt: skip
SECRET_NAMES = frozenset(
    {".env", ".envrc", ".netrc", ".npmrc", ".pypirc", "id_rsa", "id_ed25519", "credentials"}
)
SECRET_SUFFIXES = frozenset({".pem", ".key", ".p12", ".pfx", ".keystore", ".env"})


@dataclass(frozen=True)
class TrackedFile:
    """A file git tracks: its path relative to the root (forward slashes), modification time and size."""

    path: str
    mtime_ns: int
    size: int


def git_root(folder: Path) -> Path | None:
    """The top of the git work tree holding `folder`; None outside one or without git."""
    out = _git(folder, "rev-parse", "--show-toplevel")
    return Path(out.strip()) if out and out.strip() else None


def tracked_paths(root: Path) -> list[str]:
    """Every path git tracks under `root` (index entries; ignored and untracked files never appear)."""
    out = _git(root, "ls-files", "-z", "--cached")
    return [p for p in (out or "").split("\0") if p]


def eligible(path: str) -> bool:
    """Whether a tracked path may be indexed: not vendored, not binary by its name, not key-like. (Plain
    string operations: this runs for every tracked file before each completion.)"""
    *folders, name = path.split("/")
    name = name.lower()
    suffix = name[name.rfind(".") :] if "." in name else ""
    if name in SECRET_NAMES or name.startswith((".env", ".git")) or not VENDORED.isdisjoint(folders):
        return False
    return suffix not in BINARY_SUFFIXES and suffix not in SECRET_SUFFIXES and not name.endswith(".min.js")


def index_stamp(root: Path) -> str | None:
    """The git index file's modification time and size: what `git ls-files` lists stays the same while
    they do. None when `.git` is not a folder (a worktree or a submodule keeps its index elsewhere)."""
    try:
        st = os.stat(os.path.join(root, ".git", "index"))
    except OSError:
        return None
    return f"{st.st_mtime_ns}:{st.st_size}"


def tracked_files(root: Path, paths: list[str] | None = None) -> list[TrackedFile]:
    """The eligible tracked files that exist, with their stat, not over MAX_FILE_BYTES; `paths`: the
    tracked paths when already known (else `git ls-files`)."""
    files = []
    top = str(root)
    for path in tracked_paths(root) if paths is None else paths:
        if not eligible(path):
            continue
        try:
            st = os.stat(os.path.join(top, path))
        except OSError:  # deleted but not yet staged, or a broken link
            continue
        if 0 < st.st_size <= MAX_FILE_BYTES:
            files.append(TrackedFile(path, st.st_mtime_ns, st.st_size))
    return files


def read_source(root: Path, path: str) -> str | None:
    """A file's text, or None when it is binary (a NUL byte) or not UTF-8."""
    try:
        data = (root / path).read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        return None


def _git(folder: Path, *args: str) -> str | None:
    """git's stdout, or None when git is missing, fails, or `folder` is not in a repository."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "surrogateescape") if done.returncode == 0 else None
