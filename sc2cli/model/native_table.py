"""A bf16 activation's elementwise function by table (bf16_table.c; native.py builds, trusts and loads it).

A bf16 value has 65,536 bit patterns, so the MLP's tanh GELU of one is a table of PyTorch's own results for
every pattern, read back by index: F.gelu's bits without its fp32 tanh, which costs a 3B token 1.4-2.9 ms
on two cores without native bf16 (30 calls of 12,288 values; the lookup ~5 us each). Used only where the
lookup gives F.gelu's bits on every value and on a model-sized call (`gelu_table`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .native import _built, _library  # the build machinery they share

Activation = Callable[[torch.Tensor], torch.Tensor]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The MLP's activation as the reference computes it (`gelu_pytorch_tanh`)."""
    return F.gelu(x, approximate="tanh")


def gelu_table() -> Activation | None:
    """`gelu_tanh` by table for contiguous bf16 CPU tensors (PyTorch's for any other), or None where the
    table's library does not run here or its lookup does not give `gelu_tanh`'s bits."""
    if not _built("bf16_table") or not _gelu_agrees():
        return None
    table = _table(gelu_tanh)

    def gelu(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu" or not x.is_contiguous():
            return gelu_tanh(x)
        return _looked_up(x, table)

    return gelu


def _looked_up(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`table` read at each of contiguous bf16 `x`'s bit patterns."""
    out = torch.empty_like(x)
    _library("bf16_table").bf16_lookup(
        x.data_ptr(), x.numel(), table.data_ptr(), out.data_ptr(), torch.get_num_threads()
    )
    return out


def _every_value() -> torch.Tensor:
    """Every bf16 bit pattern, each at its own index: (65536,) bf16."""
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


@functools.cache
def _table(function: Activation) -> torch.Tensor:
    """`function` of every bf16 bit pattern, indexed by the pattern: (65536,) bf16."""
    with torch.inference_mode(False):  # made once, kept for calls in and outside inference mode
        return function(_every_value()).contiguous()


@functools.cache
def _gelu_agrees() -> bool:
    """The lookup against F.gelu, bit for bit: on every bf16 value, and on a 3B MLP's activations for a
    few rows (PyTorch splits those across threads in its own way)."""
    generator = torch.Generator().manual_seed(0)
    rows = (torch.randn(5, 12288, generator=generator) * 4).to(torch.bfloat16)
    table = _table(gelu_tanh)
    return all(
        torch.equal(_looked_up(x, table).view(torch.int16), gelu_tanh(x).view(torch.int16))
        for x in (_every_value(), rows)
    )
