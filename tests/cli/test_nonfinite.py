"""A checkpoint whose weights hold NaN or Inf: the completion stops with one line naming the model, and
no invalid JSON (a bare NaN) is ever printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sc2cli.cli import main

from ..checkpoints import write_tiny_model


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), seed=2)


def _poisoned(healthy: Path, folder: Path, value: float) -> Path:
    folder.mkdir()
    for f in healthy.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], value)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def sc2(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.8", "--seed", "3"]], ids=["greedy", "sampled"])
@pytest.mark.parametrize("output", ["json", "jsonl", "text"])
def test_non_finite_weights_stop_with_one_line_naming_the_model(
    capsys, healthy, tmp_path, monkeypatch, value, sampling, output
):
    source = tmp_path / "a.py"
    source.write_text("def add(a, b):\n    return a + b\n")
    args = ["complete", f"{source}:2", "--no-server", "--max-tokens", "6", "-f", output, *sampling]
    code, out, err = sc2(capsys, *args, "-m", healthy)
    assert code == 0 and "NaN" not in out
    if output == "json":
        json.loads(out)
    model = _poisoned(healthy, tmp_path / "poisoned", value)
    monkeypatch.setattr(sys, "argv", ["sc2"])
    code, out, err = sc2(capsys, *args, "-m", model)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"sc2: error: {model}: the model computed NaN or Inf (at completion token 1)")
