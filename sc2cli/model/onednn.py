"""oneDNN's inner product (`mkldnn._linear_pointwise`, the kernel inductor's freezing pass emits), a private
op of PyTorch's CPU builds: whether this build and CPU run it, on dense bf16 weights, on weights reordered
into its blocked layout, and in fp32. Each is tried once on a small product against `F.linear`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


@functools.cache
def inner_product() -> Callable | None:
    """oneDNN's bf16 inner product on dense weights, where this build of PyTorch has it and this CPU runs
    it (tried once on a small product: oneDNN refuses formats some CPUs lack)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise  # a private op: absent from some builds
        x, w = torch.ones(1, 16, dtype=torch.bfloat16), torch.ones(8, 16, dtype=torch.bfloat16)
        if not torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w)):
            return None
    except (AttributeError, RuntimeError):
        return None
    return op


@functools.cache
def packed_works() -> bool:
    """Whether oneDNN's inner product runs on a weight reordered into its own blocked layout here (tried once,
    for a token and a prompt, against F.linear): on CPUs with native bf16 it reads the weights ~2.5x faster
    than on the dense layout (12288x3072: 1.9 vs 4.8 ms, the same numbers)."""
    if inner_product() is None:
        return False
    try:
        w = torch.randn(24, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        for rows in (1, 9):
            x = torch.ones(rows, 32, dtype=torch.bfloat16)
            if not torch.equal(inner_product()(x, packed, None, "none", [], ""), F.linear(x, w)):
                return False
    except (AttributeError, RuntimeError):
        return False
    return True


@functools.cache
def fp32_works() -> bool:
    """Whether oneDNN's inner product multiplies fp32 here (tried once, against F.linear)."""
    op = inner_product()
    if op is None:
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x, w = torch.randn(9, 32, generator=generator), torch.randn(24, 32, generator=generator)
        return torch.allclose(op(x, w, None, "none", [], ""), F.linear(x, w), rtol=1e-4, atol=1e-5)
    except RuntimeError:
        return False


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) in oneDNN's blocked layout (an opaque mkldnn tensor, same shape and bytes)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
