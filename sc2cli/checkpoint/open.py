"""From a `--model` value to a checkpoint ready to load: the one way every command opens a model.

`open_checkpoint` resolves the name (a folder, an alias, a hub repo id from the cache or downloaded),
checks the folder and parses its config once; `Checkpoint.load` builds the model from its weights. The
tokenizer is the completion layer's (it sits above this one), read from the same folder.
Torch is imported only by `load`, so commands that just build a prompt stay torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, InputError, Sc2Error
from ..model.config import ModelConfig
from .cache import cached_snapshot, is_offline
from .download import download
from .layout import read_config
from .names import download_command, parse_model_name
from .transfer import Notice, Progress

if TYPE_CHECKING:
    import torch

    from ..model.model import Starcoder2


def resolve_model(
    name: str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    update: bool = False,
    progress: Progress | None = None,
    notice: Notice | None = None,
) -> Path:
    """The checkpoint folder for a `--model` value: a folder as is, an alias or repo id from the cache (no
    network) when it is complete there and `update` is off, else downloaded. Offline and not cached: an error
    with the `sc2 download` line to run."""
    target = parse_model_name(name)
    if isinstance(target, Path):
        if revision:
            raise InputError(f"--revision applies to models on the hub, not to the folder {target}")
        return target
    if not update:
        folder = cached_snapshot(target, revision, name=name)
        if folder is not None:
            return folder
    if is_offline(offline):
        what = "cannot check for updates" if update else "is not in the cache"
        raise Sc2Error(
            f"{target} {what} and offline mode is on; run `{download_command(name, revision)}` online"
        )
    return download(name, revision=revision, progress=progress, notice=notice)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder that passed the checks, with its parsed config."""

    name: str  # as the user gave it (an alias, a repo id or a folder)
    folder: Path
    config: ModelConfig

    def load(
        self,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attn: str = "auto",
        quantize: str = "none",
        progress: Progress | None = None,
    ) -> Starcoder2:
        """The model with its weights, on `device` in `dtype`, its matrix kernels chosen (see model/linear.py)."""
        from .load import load_checkpoint  # torch: only when weights are loaded

        return load_checkpoint(
            self.folder, device=device, dtype=dtype, attn=attn, quantize=quantize, progress=progress
        )


def open_checkpoint(
    name: str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    progress: Progress | None = None,
    notice: Notice | None = None,
) -> Checkpoint:
    """The checkpoint a `--model` value names, downloaded if need be, with its config checked."""
    folder = resolve_model(name, revision=revision, offline=offline, progress=progress, notice=notice)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    return Checkpoint(name, folder, read_config(folder))
