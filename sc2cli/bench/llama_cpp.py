"""llama.cpp beside sc2 in `sc2 bench`, on the same weights: finding a build, the checkpoint as GGUF files
(cached), and llama-bench as one more engine of the interleaved measurements.

sc2's modes pair with llama.cpp's file types: unquantized with BF16, int8 with Q8_0, int4 with Q4_K_M. The
BF16 file is written by sc2 (checkpoint/gguf.py), the others are made from it by llama-quantize; all three
live in `<cache folder>/gguf/<key>/`, keyed by the checkpoint's files (name, size, modification time), and
are read back only when they are the current user's. Every tool runs as a subprocess with a timeout, and
what fails is a `LlamaCppError`, which the benchmark reports as a note.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.gguf import write_gguf
from ..checkpoint.layout import CONFIG, OPTIONAL_FILES, checkpoint_files
from ..errors import CheckpointError, InputError, Sc2Error
from ..folders import cache_folder, cache_key, owned_by_user

ENV = "SC2_LLAMA_CPP"
OFF = ("none", "off")  # as --llama-cpp or $SC2_LLAMA_CPP: do not run llama.cpp
BENCH = "llama-bench"
QUANTIZE = "llama-quantize"
FILE_TYPES = {"none": "BF16", "int8": "Q8_0", "int4": "Q4_K_M"}  # sc2's --quantize -> llama.cpp's file type
GGUF_FORMAT = 1  # bump when what checkpoint/gguf.py writes changes
QUANTIZE_TIMEOUT_S = 3600
BENCH_TIMEOUT_S = 1800
DECODE_DEPTH = (
    64  # tokens already in the cache when decode is timed: sc2's decode runs after a 64-token prompt
)


class LlamaCppError(Sc2Error):
    """A llama.cpp tool that failed, or a GGUF that could not be made: a note in the report."""


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp build: the folder holding its binaries, and where it was found (--llama-cpp,
    $SC2_LLAMA_CPP or PATH)."""

    bin: Path
    source: str = "--llama-cpp"

    def tool(self, name: str) -> Path:
        return self.bin / name


def find_llama_cpp(given: str | None) -> LlamaCpp | None:
    """`given` (a bin folder holding llama-bench, a llama.cpp source tree whose build/bin holds it, or the
    llama-bench binary), else `$SC2_LLAMA_CPP` (the same forms), else llama-bench on PATH. None when it is
    turned off (`none`) or not given and not found; a path that holds none is an InputError."""
    for source, value in (("--llama-cpp ", given), (f"${ENV}=", os.environ.get(ENV))):
        if value and value.lower() in OFF:
            return None
        if value:
            found = _bin_folder(Path(value).expanduser())
            if found is None:
                raise InputError(
                    f"{source}{value}: no {BENCH} there; give the folder holding llama.cpp's binaries, "
                    f"a llama.cpp source tree built in build/, or the {BENCH} binary"
                )
            return LlamaCpp(found, source.rstrip(" ="))
    on_path = shutil.which(BENCH)
    return LlamaCpp(Path(on_path).resolve().parent, "PATH") if on_path else None


def llama_cpp_off(given: str | None) -> bool:
    """Whether llama.cpp was turned off, by --llama-cpp or $SC2_LLAMA_CPP."""
    value = given or os.environ.get(ENV) or ""
    return value.lower() in OFF


def _bin_folder(path: Path) -> Path | None:
    if path.is_file():
        return path.parent if path.name == BENCH and _executable(path) else None
    for folder in (path, path / "build" / "bin", path / "bin"):
        if _executable(folder / BENCH):
            return folder
    return None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


# ------------------------------------------------------------------------------------------------ GGUF files


def gguf_path(folder: Path, file_type: str) -> Path:
    """Where the GGUF of `folder`'s checkpoint in `file_type` (BF16, Q8_0, Q4_K_M) is cached."""
    files = [*checkpoint_files(folder), folder / CONFIG]
    files += [folder / name for name in OPTIONAL_FILES if (folder / name).is_file()]
    key = cache_key(files, format=GGUF_FORMAT)
    return cache_folder() / "gguf" / key[:40] / f"{file_type.lower()}.gguf"


def gguf_for(
    folder: Path, file_type: str, llama: LlamaCpp, name: str, log: Callable[[str], None] = lambda m: None
) -> Path:
    """The GGUF of `folder`'s checkpoint in `file_type`, from the cache or made now: BF16 written here,
    the others quantized from it by llama-quantize."""
    path = gguf_path(folder, file_type)
    if gguf_usable(path):
        return path
    bf16 = path.with_name("bf16.gguf")
    if not gguf_usable(bf16):
        log(f"writing the checkpoint as GGUF (BF16) for llama.cpp: {bf16}")
        try:
            write_gguf(folder, bf16, name)
        except (CheckpointError, OSError) as e:
            raise LlamaCppError(f"could not write the GGUF file: {e}") from None
    if file_type != "BF16":
        log(f"quantizing it to {file_type} with {QUANTIZE}")
        _quantize(llama, bf16, path, file_type)
    return path


def gguf_usable(path: Path) -> bool:
    """A cached GGUF is trusted only when it is a regular file (not a link) of the current user's, and starts
    as a GGUF file does (it was renamed into place whole). Its folder is the user's alone (mode 0700)."""
    try:
        info = os.lstat(path)
        if not (stat.S_ISREG(info.st_mode) and owned_by_user(info)):
            return False
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _quantize(llama: LlamaCpp, source: Path, path: Path, file_type: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _run([str(llama.tool(QUANTIZE)), str(source), str(tmp), file_type], QUANTIZE_TIMEOUT_S)
        tmp.replace(path)
    except OSError as e:
        raise LlamaCppError(f"{QUANTIZE}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _run(command: list[str], timeout: float) -> str:
    """A tool's stdout; a LlamaCppError (with its last line of stderr) when it fails or overruns."""
    tool = Path(command[0]).name
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise LlamaCppError(f"{tool} ran over its {timeout:.0f}s limit") from None
    except OSError as e:
        raise LlamaCppError(f"{tool} could not start ({e.strerror or e})") from None
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no message")
        raise LlamaCppError(f"{tool} failed (exit {done.returncode}): {last.strip()}")
    return done.stdout


# ------------------------------------------------------------------------------------------------ llama-bench


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """llama-bench's `-o jsonl` output: one JSON object per test; other lines are skipped."""
    records = []
    for line in text.splitlines():
        if line.lstrip().startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
    return records


def tokens_per_second(records: list[dict[str, Any]], prompt: int, generate: int) -> float:
    """The average tokens per second (`avg_ts`) of the test that processed `prompt` and generated
    `generate` tokens."""
    for record in records:
        if record.get("n_prompt") == prompt and record.get("n_gen") == generate:
            rate = record.get("avg_ts")
            if isinstance(rate, int | float) and rate > 0 and math.isfinite(rate):
                return float(rate)
    raise LlamaCppError(f"{BENCH} printed no figure for {prompt} prompt and {generate} generated tokens")


class LlamaBench:
    """llama-bench on one GGUF as an engine of `interleaved`: each call one llama-bench run (its own
    warm-up, then one repetition) and its figure. After a failure each call is NaN at once, and `failure`
    says why."""

    def __init__(self, llama: LlamaCpp, gguf: Path, file_type: str, threads: int, cpu: bool) -> None:
        self.llama, self.gguf, self.threads, self.cpu = llama, gguf, threads, cpu
        self.name = f"llama.cpp {file_type}"
        self.failure: str | None = None
        self.build: str | None = None

    def prefill_seconds(self, length: int) -> Callable[[], float]:
        """Seconds to process a `length`-token prompt."""
        return lambda: length / self._rate(prompt=length, generate=0)

    def decode_rate(self, tokens: int) -> Callable[[], float]:
        """Tokens per second generating `tokens`, after DECODE_DEPTH tokens of context."""
        return lambda: self._rate(prompt=0, generate=tokens, depth=DECODE_DEPTH)

    def command(self, prompt: int, generate: int, depth: int = 0) -> list[str]:
        args = [str(self.llama.tool(BENCH)), "-m", str(self.gguf), "-t", str(self.threads)]
        args += ["-p", str(prompt), "-n", str(generate), "-r", "1", "-o", "jsonl"]
        args += ["-d", str(depth)] if depth else []
        return args + (["-ngl", "0"] if self.cpu else [])  # sc2 on the CPU: llama.cpp there too

    def _rate(self, prompt: int, generate: int, depth: int = 0) -> float:
        if self.failure is not None:
            return math.nan
        try:
            records = parse_jsonl(_run(self.command(prompt, generate, depth), BENCH_TIMEOUT_S))
            rate = tokens_per_second(records, prompt, generate)
        except LlamaCppError as e:
            self.failure = str(e)
            return math.nan
        self.build = self.build or _build_name(records)
        return rate


def _build_name(records: list[dict[str, Any]]) -> str | None:
    first = records[0] if records else {}
    commit, number = first.get("build_commit"), first.get("build_number")
    return f"{commit} ({number})" if commit else None
