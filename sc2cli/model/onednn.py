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


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x` times `weight` (out, in; dense or `pack`ed) through oneDNN: `inner_product()` must not be None."""
    return inner_product()(x, weight, bias, "none", [], "")  # type: ignore[misc]


@functools.cache
def packed_works() -> bool:
    """Whether oneDNN's inner product runs on a weight reordered into its own blocked layout here (tried once,
    for a token and a prompt, against F.linear): on CPUs with native bf16 it reads the weights ~2.5x faster
    than on the dense layout (12288x3072: 1.9 vs 4.8 ms, the same numbers)."""
    w = torch.randn(24, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    rows = [torch.ones(n, 32, dtype=torch.bfloat16) for n in (1, 9)]
    return _agrees(lambda: all(torch.equal(product(x, pack(w)), F.linear(x, w)) for x in rows))


@functools.cache
def fp32_works() -> bool:
    """Whether oneDNN's inner product multiplies fp32 here (tried once, against F.linear)."""
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(9, 32, generator=generator), torch.randn(24, 32, generator=generator)
    return _agrees(lambda: torch.allclose(product(x, w), F.linear(x, w), rtol=1e-4, atol=1e-5))


def _agrees(check: Callable[[], bool]) -> bool:
    """`check()` where oneDNN's inner product exists; False where it or the check's products fail."""
    if inner_product() is None:
        return False
    try:
        return check()
    except (AttributeError, RuntimeError):
        return False


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) in oneDNN's blocked layout (an opaque mkldnn tensor, same shape and bytes)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
