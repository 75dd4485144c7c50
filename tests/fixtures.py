"""Test data that lives outside the repository, found in one place, and one-line skips that say how to get it.

The real StarCoder2 tokenizer (49,152 tokens) is too big to ship with the tests: they look for it in
`$SC2_TOKENIZER_FIXTURE`, else in `../shared/fixtures/starcoder2-tokenizer` beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_ENV = "SC2_TOKENIZER_FIXTURE"
TOKENIZER_DEFAULT = ROOT.parent / "shared" / "fixtures" / "starcoder2-tokenizer"
TOKENIZER_HOWTO = (
    f"set {TOKENIZER_ENV} to a folder with StarCoder2's tokenizer.json, e.g. one made by "
    "`hf download bigcode/starcoder2-3b tokenizer.json tokenizer_config.json --local-dir DIR`"
)


def tokenizer_fixture() -> Path:
    """Where the real StarCoder2 tokenizer folder should be: $SC2_TOKENIZER_FIXTURE, else beside the repo."""
    configured = os.environ.get(TOKENIZER_ENV)
    return Path(configured).expanduser() if configured else TOKENIZER_DEFAULT


def has_tokenizer_fixture() -> bool:
    return (tokenizer_fixture() / "tokenizer.json").is_file()


def require_tokenizer_fixture() -> Path:
    """The real StarCoder2 tokenizer folder, or a skip that says in one line what is missing and how to get it."""
    folder = tokenizer_fixture()
    if not has_tokenizer_fixture():
        pytest.skip(
            f"needs the real StarCoder2 tokenizer, not found at {folder / 'tokenizer.json'}: {TOKENIZER_HOWTO}"
        )
    return folder
