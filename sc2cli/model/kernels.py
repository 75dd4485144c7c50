"""Which kernel runs each kind of matrix product, chosen by measuring the candidates on this machine.

The fastest path differs between CPUs (a bf16 product through oneDNN's inner product reads weights ~1.5x
faster than `F.linear` on one machine and no faster on another; fp32 upcasting of prompts wins by 4x
without native bf16 and loses with it), so nothing here is a rule written for one CPU. A *role* is one
decision with its candidate paths:

- `decode`: bf16/fp16 weights times a few rows: `onednn` (mkldnn inner product) or `linear` (`F.linear`),
  or `packed` (oneDNN on the weight reordered into its blocked layout, for prompts too: only where the
  prompts' path is `linear`; ~2.5x the dense layout's bandwidth on a CPU with native bf16), or `native`
  (sc2's own kernel on the dense layout, native.py: AVX512-BF16's dot products where the CPU has native
  bf16, else AVX2's fused multiply-adds; one row of a 3B matrix on an AVX2-only AMD EPYC, 2 threads:
  19-22 GB/s against `F.linear`'s 12-15, four rows 2.6x faster than `F.linear`'s), or `stream` (AVX2's
  kernel reading one weight row at a time rather than blocks of rows: faster there on some shapes,
  slower on others, so measured like the rest).
- `prefill`: bf16/fp16 weights times a prompt's many rows: `linear`, or fp32 through a scratch copy of the
  weight (exactly bf16's arithmetic) by `F.linear`'s BLAS (`upcast`) or by oneDNN's inner product
  (`upcast-onednn`: 2.4x MKL's fp32 product on an AMD Zen 5, where MKL takes a generic path).
- `fp32`: fp32 weights, every row count: `linear` (`F.linear`'s BLAS) or `onednn` (oneDNN's inner product;
  on an AMD Zen 5, where MKL takes a generic path: 1.4-1.6x at one row, 2.3-2.9x at 128).
- `int8`: `dynamic` (fbgemm, int8 activations), `weight-only` (`aten._weight_int8pack_mm`) or `vnni`
  (int8.py: the rows rounded to int8 by sc2's own kernel for a token and its drafts, native.py, and by
  `torch._int_mm` for prompts, on the weights as stored: no re-packing at load, where fbgemm's takes
  ~0.17 s per 3B MLP matrix; CPUs with AVX-512 VNNI and a C compiler).
- `int4-prompt`: int4 weights times a prompt's many rows (quant.py's `INT4_PROMPT_ROWS` or more, or
  `INT4_INT8_PROMPT_ROWS` for `int8`; fewer rows always take tinygemm): `tinygemm` (PyTorch's kernel,
  which unpacks the weights again for each four rows), `dequant` (unpacked chunk by chunk into the model's
  dtype, then one dense product; dequant.py) or
  `dequant-fp32` (unpacked into fp32 and multiplied in fp32, for CPUs without bf16 arithmetic), the same
  through oneDNN's inner product (`dequant-fp32-onednn`; 2.3x `torch.mm` on an AMD CPU without native bf16),
  or `int8` (the rows rounded to int8, the weights unpacked into int8, `torch._int_mm`: ~1.8x bf16's
  multiply rate with VNNI), or `vnni` / `avx2`, sc2's decode kernels below over all the rows (nothing
  unpacked; AMD EPYC with AVX2 only, 2 threads, 3B shapes at 128-512 rows: 207-213 GOPS against
  `dequant-fp32`'s 62-136). `int8` and the native kernels round the rows to int8; the others do not.
- `int4-decode`: int4 weights times fewer rows than a prompt's (a token and its drafts): `tinygemm`, or
  sc2's own kernels (native_int4.py, compiled here on first use; the rows rounded to int8, multiplied by
  int8 dot products on the packed codes): `vnni` where the CPU has AVX-512 VNNI and VBMI (one row of a 3B
  matrix, 2 threads, AMD Zen 5: 28-30 GB/s of packed weights streamed from memory against tinygemm's
  18.7), `avx2` where it has AVX2 and PyTorch packs its 32-row layout (one row, AMD EPYC with AVX2 only:
  18-23 GB/s against tinygemm's 4.7-5.9).
- `attention`: one token's attention under the sdpa backend, `fused` (PyTorch's kernel), `grouped`
  (fp32 matrix products, each K/V head read once per query group; attention.py) or `native` (the same
  maths in sc2's own kernel on the bf16 cache in place, native.py: AVX512-BF16's, else AVX2's; 3B heads,
  2 threads, AMD Zen 5: 44 us over 512 keys and 184 over 2,048 against grouped's 190 and 450; a 3B int4
  token on an AVX2-only AMD EPYC, rotary and cache write included: 67-70 ms against 74). Keyed by the
  widths of q and k rather than a weight's shape.
- `prompt-attention`: a prompt's many rows under the sdpa backend, `fused` or `native` (the same kernel,
  each row over the keys that token alone would get; 512 causal tokens of 3B heads: 10 against 20 ms).

`choose` times each candidate on the model's own weights of each distinct shape (a few repetitions,
interleaved) and remembers the winner per machine (CPU model and flags, threads) and torch version in
`kernels.json` in the user cache folder, so the probe runs once per machine (the speculative cost curve
of a model's kernels, rows.py, likewise). `SC2_KERNELS` (or the
`kernels` argument of `prepare`) forces paths: `auto`, a path name (`linear`), or `role=path` pairs
(`decode=onednn,int8=weight-only`); roles it leaves out are measured. `measure` measures every choice
the load needs again and remembers the new winners (a probe run while the machine was busy can have
picked a slower path, and would otherwise stand for good).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..errors import InputError
from ..folders import cache_folder

ROLES: dict[str, tuple[str, ...]] = {
    "decode": ("onednn", "linear", "packed", "native", "stream"),
    "prefill": ("linear", "upcast", "upcast-onednn"),
    "fp32": ("linear", "onednn"),
    "int8": ("dynamic", "weight-only", "vnni"),
    "int4-prompt": ("tinygemm", "dequant", "dequant-fp32", "dequant-fp32-onednn", "int8", "vnni", "avx2"),
    "int4-decode": ("tinygemm", "vnni", "avx2"),
    "attention": ("fused", "grouped", "native"),
    "prompt-attention": ("fused", "native"),
}
PROBE_ROWS = {
    "decode": 1,
    "prefill": 128,
    "fp32": 128,
    "int8": 1,
    "int4-prompt": 256,
    "int4-decode": 1,
    "attention": 1,
    "prompt-attention": 1,
}  # int8's layout serves both: decode dominates; prompts: a quarter (bf16) or half (int4) of a prefill chunk
# (512 tokens), where their time goes: at 16 rows the fp32 paths lose to bf16 on a CPU where they win 1.2x
# at 512 (converting the weight costs the same whatever the rows)
PROBE_REPS = 3
# Roles of a token's products, which read each weight from memory in a pass over the model: timed from
# memory, not from the cache a stand-in weight fits in (AVX2-only AMD EPYC, 32 MB of L3, 3072x3072 bf16
# stand-in: 48-58 GB/s timed again and again, 22-33 cold, where the model's pass reads 27-32; and the
# order of the candidates differs). Where the model is loaded, bf16 decode is timed over its own weights
# in turn (linear.py's `_decode_candidates`): even a cold stand-in ranked the kernels otherwise.
COLD_ROLES = ("decode", "int8", "int4-decode")
# Their repetitions: memory's speed drifts more than the cache's, and close candidates (3072x3072 bf16 on
# that CPU: one row at a time against F.linear, 5% apart over a model's pass) swapped places at 3.
COLD_REPS = 5
EVICT_MULTIPLE = 2  # cache sizes read before each timed call of those roles
CACHE_BYTES_UNKNOWN = 32 << 20
PROBE_VERSION = 12  # raised when candidates or probe sizes change: earlier choices are measured again
# Stand-in weights keep at most this many output rows: past a few MB a kernel's speed per byte no
# longer depends on the row count, and the probe of a 3B model's shapes stays short.
PROBE_MAX_OUT = 1024
Kernel = Callable[[torch.Tensor], torch.Tensor]
MEASURE = "measure"  # SC2_KERNELS=measure: every choice measured again, remembered choices set aside


def measure_again(spec: str | None) -> bool:
    """Whether `spec` (else `$SC2_KERNELS`) asks for every choice to be measured again."""
    return _spec(spec) == MEASURE


def _spec(spec: str | None) -> str:
    return (spec if spec is not None else os.environ.get("SC2_KERNELS", "auto")).strip().lower()


def parse_forced(spec: str | None) -> dict[str, str]:
    """`auto`/`measure`/None -> {}; `linear` -> every role that has it; `role=path,...` -> those roles."""
    spec = _spec(spec)
    if spec in ("", "auto", MEASURE):
        return {}
    forced: dict[str, str] = {}
    for item in spec.split(","):
        role, _, path = item.strip().rpartition("=")
        roles = [role] if role else [r for r, paths in ROLES.items() if path in paths]
        if not roles or any(r not in ROLES or path not in ROLES[r] for r in roles):
            known = "; ".join(f"{r}={'|'.join(p)}" for r, p in ROLES.items())
            raise InputError(
                f"unknown kernel choice {item.strip()!r}; use auto, measure or role=path ({known})"
            )
        forced.update(dict.fromkeys(roles, path))
    return forced


# Settings that change which instructions PyTorch's and oneDNN's kernels use (a CPU's newer ones can be
# capped, e.g. to see how a CPU without native bf16 fares): a measurement holds only under the same ones.
ISA_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def machine_key() -> str:
    """What a measurement holds for: the CPU's model and flags, the ISA caps set, the thread count and
    torch's version."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "model name":
                    model = value.strip()
                elif name.strip() == "flags" and not flags:
                    flags = " ".join(sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma"))))
    except OSError:
        pass
    caps = "".join(f" {name}={os.environ[name]}" for name in ISA_SETTINGS if os.environ.get(name))
    threads = torch.get_num_threads()
    return f"{model} [{flags}]{caps} threads={threads} torch={torch.__version__} probe={PROBE_VERSION}"


class Choices:
    """The remembered winners, `role (N, K)` -> path, for this machine; read once, saved when added to."""

    def __init__(self, path: Path | None = None, fresh: bool = False) -> None:
        """`fresh`: nothing remembered is handed out (each choice is measured again and replaces it)."""
        self.path = path or cache_folder() / "kernels.json"
        self.key = machine_key()
        self.all = _read_json(self.path)
        self.mine: dict[str, str] = self.all.get(self.key, {})
        self.added = False
        self.fresh = fresh

    def get(self, role: str, shape: tuple[int, int]) -> str | None:
        if self.fresh:
            return None
        path = self.mine.get(f"{role} {shape[0]}x{shape[1]}")
        return path if path in ROLES[role] else None

    def put(self, role: str, shape: tuple[int, int], path: str) -> None:
        self.mine[f"{role} {shape[0]}x{shape[1]}"] = path
        self.added = True

    def get_curve(self, key: str) -> tuple[float, ...] | None:
        """A remembered cost curve (rows.py) for `key`, or None."""
        text = None if self.fresh else self.mine.get(f"curve {key}")
        try:
            return tuple(float(value) for value in text.split(",")) if text else None
        except ValueError:
            return None

    def put_curve(self, key: str, curve: tuple[float, ...]) -> None:
        self.mine[f"curve {key}"] = ",".join(f"{value:g}" for value in curve)
        self.added = True

    def save(self) -> None:
        """Write the file again if a measurement was added (atomically: a reader never sees half of it)."""
        if not self.added:
            return
        self.all[self.key] = self.mine
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.all, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache folder: measure again next time


def _read_json(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()) else {}


def fastest(
    candidates: dict[str, Kernel],
    x: torch.Tensor,
    reps: int | None = None,
    evict: Callable[[], object] | None = None,
) -> str:
    """The candidate with the lowest best-of-`reps` time on `x` (default `PROBE_REPS`, `COLD_REPS` with
    `evict`), timed interleaved after one warm-up each (the best rather than the median: other processes
    on the machine only ever add time); `evict`, where given, is called before each timed call (so that
    the call reads its weights from memory)."""
    reps = reps or (COLD_REPS if evict is not None else PROBE_REPS)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for fn in candidates.values():
            fn(x)
        for _ in range(reps):
            for name, fn in candidates.items():
                if evict is not None:
                    evict()
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
    return min(times, key=lambda name: min(times[name]))


def cache_reader() -> Callable[[], object]:
    """A call that reads `EVICT_MULTIPLE` times the last-level cache of memory written on its first call
    (written, so the pages are real memory) and kept by the call."""
    buffer = None

    def read() -> object:
        nonlocal buffer
        if buffer is None:
            buffer = torch.ones(EVICT_MULTIPLE * last_level_cache_bytes() // 4)
        return buffer.sum()

    return read


def cache_sized(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The first of `tensors` up to `EVICT_MULTIPLE` times the last-level cache in all (at least one)."""
    chosen, held = [], 0
    for t in tensors:
        if chosen and held >= EVICT_MULTIPLE * last_level_cache_bytes():
            break
        chosen.append(t)
        held += t.numel() * t.element_size()
    return chosen


def tensors_reader(tensors: Iterable[torch.Tensor]) -> Callable[[], object]:
    """A call that reads `EVICT_MULTIPLE` times the last-level cache of `tensors` (a loaded model's
    weights: eviction that needs no memory of its own), the last one read only in part (a 3B embedding
    alone is 300 MB: 9 ms a read, where 64 MB take 2)."""
    chosen, left = [], EVICT_MULTIPLE * last_level_cache_bytes()
    for t in cache_sized(t for t in tensors if t.is_contiguous()):
        part = max(left // t.element_size(), 1)
        chosen.append(t if part >= t.numel() else t.view(-1)[:part])
        left -= chosen[-1].numel() * t.element_size()
    return lambda: [t.sum() for t in chosen]


def choose(
    role: str,
    shape: tuple[int, int],
    available: list[str],
    make: Callable[[], dict[str, Kernel]],
    dtype: torch.dtype,
    forced: dict[str, str],
    choices: Choices | None,
    default: str | None = None,
    evict: Callable[[], object] | None = None,
) -> str:
    """The path for `role` on weights of `shape` among the `available` ones: forced, else remembered, else
    `default` when given (models too small for the choice to matter are not measured), else measured on
    the kernels `make()` builds (and remembered; `choices` None: no memory), `COLD_ROLES` after `evict`
    (default: reading a buffer of their own). A forced path this machine lacks is treated like `auto`; a
    single candidate needs no measurement."""
    if forced.get(role) in available:
        return forced[role]
    if len(available) == 1:
        return available[0]
    remembered = choices.get(role, shape) if choices else None
    if remembered in available:
        return remembered
    if default in available:
        return default
    x = torch.randn(PROBE_ROWS[role], shape[1], generator=torch.Generator().manual_seed(0)).to(dtype)
    cold = role in COLD_ROLES  # timed from memory: through `evict`, else a buffer of this call's own
    winner = fastest(make(), x, evict=(evict or cache_reader()) if cold else None)
    if choices is not None:
        choices.put(role, shape, winner)
    return winner


@functools.cache
def last_level_cache_bytes() -> int:
    """The largest CPU cache the system reports (Linux's sysfs, first CPU), else `CACHE_BYTES_UNKNOWN`."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=CACHE_BYTES_UNKNOWN)
