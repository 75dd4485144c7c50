"""Safetensors checkpoints (one file or shards) into a Starcoder2 built on the meta device.

Each tensor is converted to the target dtype window by window straight into its final place: on the CPU
from a short-lived memory map of the file (one pass over the page cache, the conversion on all threads),
on a GPU through a pinned staging buffer. Only one window is ever mapped, so peak memory stays near the
size of the *converted* model even when the file is fp32 (a whole-file map would count as resident and
double the peak). Pickled `*.bin` checkpoints are refused: loading them runs arbitrary code.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from ..errors import CheckpointError
from ..model.attention import select_backend
from ..model.attention_probe import plan_prompt_attention, plan_single_query
from ..model.device import resolve_device, resolve_dtype
from ..model.kernels import ROLES, Choices, measure_again, tensors_reader
from ..model.linear import (
    KINDS,
    PROBE_MIN_BYTES,
    QUANTIZATIONS,
    Plan,
    linear_shapes,
    plan_kernels,
    prepare,
    quantize_linears,
    use_prompt_paths,
    weights_of,
)
from ..model.model import Starcoder2
from ..model.native_table import gelu_table, gelu_tanh
from ..model.quant import INT4_GROUP, INT4_MULTIPLIER_MAX, int4_layout
from ..model.rows import model_row_costs
from .layout import checkpoint_files, read_config
from .packed import packed_path, packed_usable, read_packed, tensor_bytes, write_packed
from .safetensors import TensorEntry, checkpoint_entries

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
CHUNK_BYTES = 32 << 20  # the staging buffer for loads onto a GPU
MAP_WINDOW_BYTES = 64 << 20  # the file mapped at once for loads onto the CPU (64 MB measured fastest)
# Buffers some older exports saved next to the weights; they are recomputed, never loaded.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
# Kernel choices that leave the packed weights as they are (the paths of int4 prompts and decode): not part
# of the packed-weight cache's key, so changing one never quantizes again; `use_prompt_paths` applies them.
RUN_TIME_ROLES = ("int4-prompt", "int4-decode")
STORED_ROLES = tuple(role for role in ROLES if role not in RUN_TIME_ROLES)

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


def match_parameters(
    model: nn.Module, entries: dict[str, TensorEntry], skip: frozenset[str] = frozenset()
) -> dict[str, TensorEntry]:
    """Pair every parameter (but those in `skip`, which come from elsewhere) with its tensor, or say which
    tensor is missing, unexpected or mis-shaped."""
    params = {n: p for n, p in model.named_parameters() if n not in skip}  # a tied lm_head: listed once
    tied_head = "lm_head.weight" not in params
    missing = [n for n in params if n not in entries]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        where = ", ".join(sorted({e.path.name for e in entries.values()})) or "the checkpoint"
        raise CheckpointError(f"missing tensor {missing[0]}{more} in {where}")
    for name, entry in entries.items():
        if (
            name in params
            or name in skip
            or name.endswith(IGNORED_SUFFIXES)
            or (tied_head and name == "lm_head.weight")
        ):
            continue
        raise CheckpointError(f"{entry.path}: unexpected tensor {name} (not part of a StarCoder2 model)")
    for name, param in params.items():
        if tuple(param.shape) != entries[name].shape:
            raise CheckpointError(
                f"{entries[name].path}: tensor {name} has shape {list(entries[name].shape)}, "
                f"but config.json implies {list(param.shape)}"
            )
    return {name: entries[name] for name in params}


def _read_exact(f: BinaryIO, view: memoryview, entry: TensorEntry) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise CheckpointError(
                f"{entry.path}: truncated while reading {entry.name}; delete and re-download it"
            )
        done += n


def _map_window(fd: int, begin: int, length: int) -> tuple[mmap.mmap, int]:
    """A read-only map of the file bytes `[begin, begin + length)`, prefaulted where the OS can; returns
    the map and where `begin` falls in it (maps start at a multiple of the allocation granularity)."""
    base = begin // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    if os.name == "nt":
        return mmap.mmap(fd, begin + length - base, offset=base, access=mmap.ACCESS_READ), begin - base
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # shared: prefaulting a private map copies it
    return mmap.mmap(fd, begin + length - base, flags=flags, prot=mmap.PROT_READ, offset=base), begin - base


def map_tensor_into(f: BinaryIO, entry: TensorEntry, dest: torch.Tensor, tick) -> None:
    """Fill the CPU tensor `dest` with `entry`, converting dtype one mapped window at a time."""
    if os.fstat(f.fileno()).st_size < entry.end:  # a map past the end would crash on access, not raise
        raise CheckpointError(
            f"{entry.path}: truncated while reading {entry.name}; delete and re-download it"
        )
    flat = dest.view(-1)
    itemsize, dtype = entry.itemsize, SAFETENSORS_DTYPES[entry.dtype]
    step = MAP_WINDOW_BYTES // itemsize * itemsize
    for offset in range(0, entry.end - entry.begin, step):
        n = min(step, entry.end - entry.begin - offset)
        window, skip = _map_window(f.fileno(), entry.begin + offset, n)
        try:
            with warnings.catch_warnings():  # "not writable": it is only read from
                warnings.simplefilter("ignore", UserWarning)
                source = torch.frombuffer(window, dtype=torch.uint8, offset=skip, count=n)
            flat[offset // itemsize : (offset + n) // itemsize].copy_(source.view(dtype))
            del source  # the map cannot close while a tensor still points into it
        finally:
            window.close()
        tick(n)


def read_tensor_into(
    f: BinaryIO, entry: TensorEntry, dest: torch.Tensor, staging: torch.Tensor, tick
) -> None:
    """Fill `dest` (a GPU's; CPU tensors are mapped) with `entry`, converting dtype chunk by chunk
    through `staging` (uint8, CPU)."""
    f.seek(entry.begin)
    flat = dest.view(-1)
    itemsize, dtype = entry.itemsize, SAFETENSORS_DTYPES[entry.dtype]
    step = (staging.numel() // itemsize) * itemsize
    for offset in range(0, entry.end - entry.begin, step):
        n = min(step, entry.end - entry.begin - offset)
        _read_exact(f, tensor_bytes(staging)[:n], entry)
        flat[offset // itemsize : (offset + n) // itemsize].copy_(staging[:n].view(dtype))
        tick(n)


def load_weights(
    model: Starcoder2,
    files: list[Path],
    *,
    device: torch.device,
    dtype: torch.dtype,
    progress: Progress | None = None,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Replace the meta parameters of `model` (but those in `skip`) by the checkpoint's tensors, in `dtype`
    on `device`."""
    plan = match_parameters(model, checkpoint_entries(files), skip)
    total = sum(e.end - e.begin for e in plan.values())
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    staging = (
        None
        if device.type == "cpu"
        else torch.empty(CHUNK_BYTES, dtype=torch.uint8, pin_memory=device.type == "cuda")
    )
    by_file: dict[Path, list[str]] = {}
    for name, entry in sorted(plan.items(), key=lambda item: item[1].begin):
        by_file.setdefault(entry.path, []).append(name)
    for path, names in by_file.items():
        with open(path, "rb") as f:
            for name in names:
                dest = torch.empty(plan[name].shape, dtype=dtype, device=device)
                if staging is None:
                    map_tensor_into(f, plan[name], dest, tick)
                else:
                    read_tensor_into(f, plan[name], dest, staging, tick)
                set_parameter(model, name, dest)
    model.tie_weights()


def set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    setattr(owner, attr, nn.Parameter(value, requires_grad=False))


def load_checkpoint(
    folder: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn: str = "auto",
    quantize: str = "none",
    kernels: str | None = None,
    progress: Progress | None = None,
) -> Starcoder2:
    """Build the model described by `folder/config.json`, load its safetensors weights and pick the kernels
    its matrix products run on (`quantize`: none, int8 or int4, packed once and cached; `kernels`: auto or
    forced paths, see model/kernels.py)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    config = read_config(folder)
    files = checkpoint_files(folder)
    device = resolve_device(device)
    if quantize not in QUANTIZATIONS:
        raise CheckpointError(f"unknown quantization {quantize!r}; use {', '.join(QUANTIZATIONS)}")
    dtype = resolve_dtype(dtype, device)
    backend = select_backend(attn, device, dtype)
    with torch.device("meta"):
        model = Starcoder2(config, attn=backend)
    shapes, weight_bytes = linear_shapes(model)
    if (
        quantize == "none"
    ):  # kernels measured with the weights in place, for the reason choose_run_paths gives
        load_weights(model, files, device=device, dtype=dtype, progress=progress)
        evict = tensors_reader(model.parameters())  # the cold probes read the weights: no buffer of their own
        plan = plan_kernels(shapes, quantize, device, dtype, kernels, weight_bytes=weight_bytes, evict=evict,
                            weights=weights_of(model))  # fmt: skip
        model.kernels = prepare(model, quantize, plan)
    else:  # the packed-weight cache is keyed by the roles it stores: those are measured before loading
        stored = plan_kernels(shapes, quantize, device, dtype, kernels, weight_bytes=weight_bytes,
                              roles=STORED_ROLES)  # fmt: skip
        weights, cached = load_quantized(model, files, quantize, stored, device, dtype, progress)
        # the rest with the quantized weights in place, where the probe's buffers add to less memory
        run_time = plan_kernels(shapes, quantize, device, dtype, kernels, weight_bytes=weight_bytes,
                                roles=RUN_TIME_ROLES, evict=tensors_reader(model.parameters()))  # fmt: skip
        model.kernels = (
            weights + use_prompt_paths(model, run_time) + (" (packed-weight cache)" if cached else "")
        )
    model.kernels += choose_run_paths(model, backend, kernels)
    model.checkpoint_dir = folder
    return model.eval()


def choose_run_paths(model: Starcoder2, backend: str, kernels: str | None = None) -> str:
    """What is measured on the model as loaded, its weights in place (before them, the probes' freed
    buffers raised glibc's mmap threshold, and freed weights' pages then stayed: +50% peak memory while
    loading): one token's attention path and a prompt's, the MLP's activation (by table where that gives
    F.gelu's bits; not for models too small to measure, which compile nothing), and the cost curve that
    sizes speculative drafts. Returns a note for the kernels' description."""
    config, device, dtype = model.config, model.device, model.dtype
    measure = config.weight_bytes(dtype.itemsize) >= PROBE_MIN_BYTES
    one = plan_single_query(config, backend, device, dtype, kernels, measure)
    model.set_attention(backend, one, plan_prompt_attention(config, backend, device, dtype, kernels, measure))
    table = gelu_table() if measure and device.type == "cpu" and dtype == torch.bfloat16 else None
    model.set_activation(table or gelu_tanh)
    model.row_costs = model_row_costs(model, functools.partial(Choices, fresh=measure_again(kernels)))
    notes = [f"one-token attention {one}"] if one != "fused" else []
    notes += ["GELU by table"] if table is not None else []
    notes += [f"prompt attention {model.prompt_attention}"] if model.prompt_attention != "fused" else []
    return "".join(f"; {note}" for note in notes)


def load_quantized(
    model: Starcoder2,
    files: list[Path],
    quantize: str,
    plan: Plan,
    device: torch.device,
    dtype: torch.dtype,
    progress: Progress | None = None,
) -> tuple[str, bool]:
    """Load and quantize `model`'s weights, its matrices from the packed-weight cache when it holds them
    (then only embeddings and norms are read from the checkpoint), else quantized here and cached. `plan`
    holds the stored roles only (it is part of the cache's key). Returns what the weights are ("int4
    weights") and whether they came from the cache."""
    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    description = {"scheme": quantize, "device": device.type, "dtype": str(dtype), "plan": sorted(plan.items()),
                   "int4": [INT4_GROUP, INT4_MULTIPLIER_MAX, int4_layout(device)] if quantize == "int4" else None}  # fmt: skip
    path, key = packed_path(files, description)
    if packed_usable(path, key, set(linears)):
        originals = {name: model.get_submodule(name) for name in linears}  # still on the meta device
        skip = frozenset(f"{name}.{p}" for name in linears for p in ("weight", "bias"))
        load_weights(model, files, device=device, dtype=dtype, progress=progress, skip=skip)  # ties the head
        kinds = _read_cached(model, path, key, set(linears), device, dtype)
        if kinds is not None:
            return f"{' + '.join(sorted(kinds))} weights", True
        for name, module in originals.items():  # a damaged tensor: back to the layers to load
            _set_module(model, name, module)
    load_weights(model, files, device=device, dtype=dtype, progress=progress)
    weights = quantize_linears(model, quantize, plan)
    modules = {name: model.get_submodule(name) for name in linears}
    write_packed(path, key, modules)
    return weights, False


def _read_cached(
    model: Starcoder2, path: Path, key: str, linears: set[str], device: torch.device, dtype: torch.dtype
) -> set[str] | None:
    """Set `model`'s `linears` from the packed-weight cache; the kinds made, or None if the file failed a
    check. Layers are built on as many threads as torch uses while the file is read on: fbgemm's prepack
    takes ~0.15 s per 3B MLP matrix on one core (4 layers: 3.7 s one after another). At most one layer per
    thread waits, so memory holds only a few layers twice."""
    kinds: set[str] = set()
    workers = max(1, torch.get_num_threads())
    pending: deque[Future] = deque()

    def build(name: str, kind: str, state: dict[str, torch.Tensor]) -> None:
        _set_module(model, name, KINDS[kind].from_state(state, dtype))

    with ThreadPoolExecutor(workers) as pool:

        def take(name: str, kind: str, state: dict[str, torch.Tensor]) -> None:
            kinds.add(kind)
            pending.append(pool.submit(build, name, kind, state))
            while len(pending) > workers:
                pending.popleft().result()  # a failure raises here, inside read_packed's checks

        ok = read_packed(path, key, linears, device, take)
        try:
            for future in pending:
                future.result()
        except (ValueError, RuntimeError):
            return None
    return kinds if ok else None


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, module)


def save_checkpoint(model: Starcoder2, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `config.json` and a single `model.safetensors` (in `dtype`, default the model's), one tensor at
    a time, so even a 3B model in fp32 is written without a second copy of it in memory."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    params = dict(model.named_parameters())  # a tied lm_head is listed once, as the bigcode files do
    dtype = dtype or model.dtype
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, p in params.items():
        size = p.numel() * dtype.itemsize
        header[name] = {
            "dtype": names[dtype],
            "shape": list(p.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    tmp = folder / "model.safetensors.partial"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for p in params.values():
            tensor = p.detach().to("cpu", dtype).contiguous()
            f.write(tensor_bytes(tensor))
    tmp.replace(folder / "model.safetensors")
    return folder
