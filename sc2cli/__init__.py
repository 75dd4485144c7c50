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

    from .model.model import Starcoder2


def load_model(
    source: str | Path,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn: str = "auto",
    quantize: str = "none",
    progress: Callable[[int, int], None] | None = None,
    download_progress: Callable[[int, int], None] | None = None,
) -> Starcoder2:
    """Load a StarCoder2 checkpoint into our model, ready for `model(input_ids)`.

    `source`: a checkpoint folder, a hub repo id (`bigcode/starcoder2-7b` or a fine-tune) or an alias (3b, 7b,
    15b, tiny). A hub model comes from the Hugging Face cache, downloaded on first use (`revision`: a branch, tag
    or commit); `offline=True` (or HF_HUB_OFFLINE=1) never touches the network.
    `device`: auto/None, cpu, cuda, cuda:N, mps. `dtype`: a torch dtype or auto/bf16/fp16/fp32.
    `attn`: auto, sdpa, flash or eager. `quantize`: none, int8 or int4 (quantized weights, packed once and cached; see model/quant.py).
    `progress(bytes_done, bytes_total)` is called while loading the weights, `download_progress(bytes_done,
    bytes_total)` while downloading them.
    """
    from .checkpoint.load import load_checkpoint  # torch: only when a model is loaded
    from .checkpoint.open import resolve_model

    folder = (
        source
        if isinstance(source, Path)
        else resolve_model(source, revision=revision, offline=offline, progress=download_progress)
    )
    return load_checkpoint(
        folder, device=device, dtype=dtype, attn=attn, quantize=quantize, progress=progress
    )
