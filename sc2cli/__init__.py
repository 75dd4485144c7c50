"""sc2: local code completion with the StarCoder2 models, in pure PyTorch.

The public API is imported lazily so that `import sc2cli` (and the CLI's help) stays free of torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]

if TYPE_CHECKING:
    import torch

    from .model import Starcoder2


def load_model(
    source: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Starcoder2:
    """Load a StarCoder2 checkpoint folder into our model, ready for `model(input_ids)`.

    `device`: auto/None, cpu, cuda, cuda:N, mps. `dtype`: a torch dtype or auto/bf16/fp16/fp32.
    `attn`: auto, sdpa, flash or eager. `progress(bytes_done, bytes_total)` is called while loading.
    """
    from .weights import load_checkpoint

    return load_checkpoint(source, device=device, dtype=dtype, attn=attn, progress=progress)
