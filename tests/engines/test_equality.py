"""Through an engine, sc2 gives what it gives in-process: the fake engine runs sc2's own model (the same
weights, same fp32 arithmetic), so greedy completions with token healing must agree token for token, in
both protocols, for every cursor of a set that heals and one that does not."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from sc2cli.checkpoint.names import TINY_DIR
from sc2cli.cli import main
from sc2cli.completion.tokenizer import Tokenizer

from .fake_engine import FakeEngine, ModelBackend

SOURCE = '''import os


def add(a, b):
    """Return the sum of a and b."""
    return a + b


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value
'''
CURSORS = ["4:1", "5:5", "6:12", "6:16", "10:5", "11:9", "11:14", "11:20", "14:20", "15:16", "1:9"]


@pytest.fixture(autouse=True)
def no_engine_settings(monkeypatch):
    for name in ("SC2_ENGINE", "SC2_ENGINE_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The built-in tiny model: trained, so it writes code (a random one writes bytes that are no text,
    which llama.cpp's protocol never sends)."""
    return TINY_DIR


def sc2(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SOURCE.encode())))
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("protocol", ["openai", "llama"])
def test_greedy_with_healing_equals_in_process(capsys, monkeypatch, model_dir, protocol):
    from sc2cli.checkpoint.open import open_checkpoint

    model = open_checkpoint(str(model_dir)).load(device="cpu", dtype="fp32")
    tok = Tokenizer.from_folder(model_dir)
    common = ["-m", model_dir, "--path", "pkg/m.py", "--max-tokens", "24", "-f", "json"]
    agree, healed = 0, 0
    with FakeEngine(ModelBackend(model), tok) as engine:
        url = engine.url(protocol, f"heal_top={tok.vocab_size}")  # every token a candidate: the same choice
        for cursor in CURSORS:
            local = sc2(
                capsys,
                monkeypatch,
                "complete",
                f"-:{cursor}",
                *common,
                "--no-server",
                "--device",
                "cpu",
                "--dtype",
                "fp32",
            )
            remote = sc2(capsys, monkeypatch, "complete", f"-:{cursor}", *common, "--engine", url)
            assert local[0] == remote[0] == 0, (local[2], remote[2])
            mine, theirs = (json.loads(r[1]) for r in (local, remote))
            # llama.cpp sends no chunk for a token that ends inside a character: its id never arrives
            keys = ("text", "healed", "stop_reason") + (("tokens",) if protocol == "openai" else ())
            agree += all(mine[k] == theirs[k] for k in keys)
            healed += bool(mine["healed"])
    assert healed >= 4, "the cursors must exercise token healing"
    assert agree == len(CURSORS), f"{agree} of {len(CURSORS)} agree"
