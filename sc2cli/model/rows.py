"""What a forward pass over a few rows costs against one row, measured on the model's own kernels.

Speculative decoding verifies k drafted tokens in one pass over k+1 rows. Whether that pays depends on
how the pass's cost grows with its rows, which differs by kernel and CPU: on a CPU with native bf16,
oneDNN's packed bf16 product costs about the same for 1 to 4 rows, while PyTorch's int4 kernel costs 1.5x
at 4 rows and 2.8x at 6 (random 3B shape, 2 threads). So the cost curve is measured, on the products of
the first blocks (their matrices hold nearly all of a pass's bytes) with the kernels the model really
runs, and the draft length is chosen from it (completion/speculate.py).

The blocks measured hold several times the CPU's last-level cache, as a whole pass does: timed again and
again, a smaller set of weights comes partly from cache, so one row looks cheap and more rows dear. A 3B
int4 model, 2 threads, AMD Zen 4 with 32 MB of L3, measured side by side with the whole model's pass:
4 rows 2.07x one row on the first block's MLP (40 MB), 1.46-1.49x on two blocks' products, 1.31-1.32x on
four, 1.24x on eight, 1.27x for the whole pass.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .kernels import Choices, last_level_cache_bytes
from .linear import PROBE_MIN_BYTES, UPCAST_MIN_ROWS
from .model import Starcoder2
from .quant import QuantizedLinear

# Rounds of the measurement. Each round times one row and then k rows right after it, and the curve takes
# each k's median ratio: this CPU's memory speed drifts within a second (a 3B int4 model's MLP, 2 threads:
# best-of-3 times gave 4 rows 1.09x to 2.37x of one over six probes in a row; medians of paired ratios
# 1.47x to 1.80x).
ROW_COST_ROUNDS = 5
# The probe's blocks hold more than this many times the last-level cache (or are all the model's blocks):
# a 3B model's probe then takes ~0.4 s in bf16 (one block, 192 MB), ~0.5 s in int4 (four, 216 MB).
CACHE_MULTIPLE = 5
# A draft of 6 tokens and the token before it: more rows would take prompts' path (an fp32 copy of each
# weight on CPUs without native bf16, allocated by the first such product), which no draft can pay for.
MAX_VERIFY_ROWS = UPCAST_MIN_ROWS - 1


def model_row_costs(
    model: Starcoder2, choices: Callable[[], Choices] | None = None
) -> tuple[float, ...] | None:
    """The cost curve of `model` as loaded (its kernels chosen), for 1..`MAX_VERIFY_ROWS` rows; None where
    it is not measured: on a GPU (a few rows cost as one there) and for models too small to matter.
    `choices`: makes where this machine's curves are remembered (kernels.py; made only for a model that is
    measured, as reading it costs ~7 ms), by the model's shapes and kernels: measured once (~0.4-1.3 s of
    a 3B load), then read; None: measured every time."""
    if model.device.type != "cpu" or model.config.weight_bytes(model.dtype.itemsize) < PROBE_MIN_BYTES:
        return None
    blocks, held = [], 0
    for block in model.model.layers:  # enough to overflow the cache (all of them if that is all there is)
        blocks.append(block)
        held += weight_bytes(block)
        if held > CACHE_MULTIPLE * last_level_cache_bytes():
            break
    key, memory = _curve_key(model, blocks), choices() if choices is not None else None
    remembered = memory.get_curve(key) if memory is not None else None
    if remembered is not None and len(remembered) == MAX_VERIFY_ROWS:
        return remembered
    costs = row_costs(_Products(blocks), model.config.hidden_size, model.dtype, MAX_VERIFY_ROWS)
    if memory is not None:
        memory.put_curve(key, costs)
        memory.save()
    return costs


def _curve_key(model: Starcoder2, blocks: list[nn.Module]) -> str:
    """What a curve depends on beyond the machine (kernels.py's key): the dtype, the shapes, how many blocks
    were measured and each product's kernel."""
    config, first = model.config, blocks[0]
    attention = first.self_attn
    products = [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj]
    products += [m for m in first.mlp.modules() if m is not first.mlp and not list(m.children())]
    kinds = ",".join(
        f"{getattr(m, 'kind', '') or type(m).__name__}/{getattr(m, 'decode', '')}" for m in products
    )
    shape = f"{config.hidden_size}x{config.intermediate_size} heads {config.num_attention_heads}/{config.num_key_value_heads}"
    return f"row-costs {model.dtype} {shape} blocks {len(blocks)} {kinds}"


class _Products(nn.Module):
    """Every product of `blocks` in turn, on rows of the model's width (the attention output's width for
    o_proj): what a pass reads, without the attention and norms, which cost little per row."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = blocks  # a plain list: the model's modules, not this probe's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            attention = block.self_attn
            for project in (attention.q_proj, attention.k_proj, attention.v_proj):
                project(x)
            attention.o_proj(x.new_zeros(*x.shape[:-1], attention.n_heads * attention.head_dim))
            block.mlp(x)
        return x


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the weights `module`'s products read: quantized layers' packed tensors and scales, others'
    weights (packed for oneDNN or not) and biases."""
    total = 0
    for sub in module.modules():
        if isinstance(sub, QuantizedLinear):
            total += sub.weight_bytes
            continue
        for name in ("weight", "bias"):
            t = getattr(sub, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def row_costs(mlp: nn.Module, width: int, dtype: torch.dtype, max_rows: int) -> tuple[float, ...]:
    """`mlp`'s (any module's) time on 1..`max_rows` rows of `width`, relative to one row: for each row count, the median
    over `ROW_COST_ROUNDS` rounds of its time over that of one row timed just before it (after a warm-up),
    made non-decreasing (a pass never gets cheaper with more rows; a smaller ratio there is noise)."""
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, rows, width, generator=g).to(dtype) for rows in range(1, max_rows + 1)]
    ratios: list[list[float]] = [[] for _ in inputs[1:]]
    with torch.inference_mode():
        for x in inputs:
            mlp(x)
        for _ in range(ROW_COST_ROUNDS):
            for i, x in enumerate(inputs[1:]):
                one = _seconds(mlp, inputs[0])
                ratios[i].append(_seconds(mlp, x) / one)
    costs, highest = [1.0], 1.0
    for measured in ratios:
        highest = max(highest, statistics.median(measured))
        costs.append(round(highest, 3))
    return tuple(costs)


def _seconds(mlp: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    mlp(x)
    return time.perf_counter() - start
