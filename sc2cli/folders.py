"""Where sc2 keeps what it can rebuild (kernel measurements, packed weights, repository indexes), for every
layer: `$SC2_CACHE_DIR`, else the platformdirs user cache folder. Torch-free, no sc2cli imports."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder() -> Path:
    folder = os.environ.get("SC2_CACHE_DIR")
    if folder:
        return Path(folder).expanduser()
    import platformdirs  # only when no SC2_CACHE_DIR: its import costs a few ms

    return platformdirs.user_cache_path("sc2")
