"""What a forward pass over a few rows costs against one row, measured on the model's own kernels.

Speculative decoding verifies k drafted tokens in one pass over k+1 rows. Whether that pays depends on
how the pass's cost grows with its rows, which differs by kernel and CPU: on a CPU with native bf16,
oneDNN's packed bf16 product costs about the same for 1 to 4 rows, while PyTorch's int4 kernel costs 1.5x
at 4 rows and 2.8x at 6 (random 3B shape, 2 threads). So the cost curve is measured, on the first block's
MLP (its two matrices hold two thirds of a layer's weights) with the kernels the model really runs, and
the draft length is chosen from it (completion/speculate.py).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .linear import PROBE_MIN_BYTES, UPCAST_MIN_ROWS
from .model import Starcoder2

# Rounds of the measurement. Each round times one row and then k rows right after it, and the curve takes
# each k's median ratio: this CPU's memory speed drifts within a second (a 3B int4 model's MLP, 2 threads:
# best-of-3 times gave 4 rows 1.09x to 2.37x of one over six probes in a row; medians of paired ratios
# 1.47x to 1.80x).
ROW_COST_ROUNDS = 9
# A draft of 6 tokens and the token before it: more rows would take prompts' path (an fp32 copy of each
# weight on CPUs without native bf16, allocated by the first such product), which no draft can pay for.
MAX_VERIFY_ROWS = UPCAST_MIN_ROWS - 1


def model_row_costs(model: Starcoder2) -> tuple[float, ...] | None:
    """The cost curve of `model` as loaded (its kernels chosen), for 1..`MAX_VERIFY_ROWS` rows; None where
    it is not measured: on a GPU (a few rows cost as one there) and for models too small to matter."""
    if model.device.type != "cpu" or model.config.weight_bytes(model.dtype.itemsize) < PROBE_MIN_BYTES:
        return None
    return row_costs(model.model.layers[0].mlp, model.config.hidden_size, model.dtype, MAX_VERIFY_ROWS)


def row_costs(mlp: nn.Module, width: int, dtype: torch.dtype, max_rows: int) -> tuple[float, ...]:
    """`mlp`'s time on 1..`max_rows` rows of `width`, relative to one row: for each row count, the median
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
