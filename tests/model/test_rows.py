"""The cost curve of a forward over a few rows: measured on the model's own MLP, shaped for the draft rule."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import sc2cli
from sc2cli.checkpoint.names import TINY_DIR
from sc2cli.model import rows
from sc2cli.model.quant import QuantizedLinear
from sc2cli.model.rows import MAX_VERIFY_ROWS, model_row_costs, row_costs


def test_row_costs_start_at_one_and_never_fall():
    mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    costs = row_costs(mlp, 64, torch.float32, 6)
    assert len(costs) == 6 and costs[0] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(costs))


def test_row_costs_see_what_the_kernel_costs(monkeypatch):
    """A layer whose time grows with its rows gives a curve that grows with them (on a stubbed clock)."""
    clock = {"now": 0.0}

    class Fake(nn.Module):
        def forward(self, x):
            clock["now"] += x.shape[1]  # each call takes as many seconds as it has rows
            return x

    monkeypatch.setattr("sc2cli.model.rows.time.perf_counter", lambda: clock["now"])
    assert row_costs(Fake(), 8, torch.float32, 4) == (1.0, 2.0, 3.0, 4.0)


def test_memory_speed_that_comes_and_goes_bends_no_cost(monkeypatch):
    """A machine three times faster for three calls out of every six (another tenant's load coming and
    going): each ratio, timed against one row just before it, stays what the kernel costs, where the
    fastest times of each row count would pair one row's fast moment with another count's slow one."""
    clock = {"now": 0.0, "calls": 0}

    class Drifting(nn.Module):
        def forward(self, x):
            clock["calls"] += 1
            clock["now"] += x.shape[1] * (1 / 3 if clock["calls"] // 3 % 2 else 1.0)
            return x

    monkeypatch.setattr("sc2cli.model.rows.time.perf_counter", lambda: clock["now"])
    assert row_costs(Drifting(), 8, torch.float32, 5) == (1.0, 2.0, 3.0, 4.0, 5.0)


def test_tiny_models_are_not_measured():
    model = sc2cli.load_model(TINY_DIR, dtype="fp32", device="cpu")
    assert model.row_costs is None and model_row_costs(model) is None
    assert MAX_VERIFY_ROWS >= 2


def test_every_verification_gets_its_rows_as_each_token_alone_would():
    from sc2cli.model.attention import FEW_ROWS

    assert FEW_ROWS >= MAX_VERIFY_ROWS  # a token and its drafts take attention's one-row-at-a-time path


def test_a_big_enough_model_is_measured_as_loaded(monkeypatch):
    """The curve comes from the loaded model's own kernels (its nn.Linear layers already swapped)."""
    model = sc2cli.load_model(TINY_DIR, dtype="bf16", device="cpu")
    monkeypatch.setattr("sc2cli.model.rows.PROBE_MIN_BYTES", 0)
    costs = model_row_costs(model)
    assert costs is not None and len(costs) == MAX_VERIFY_ROWS and costs[0] == 1.0


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_the_probe_takes_blocks_until_they_overflow_the_cache(monkeypatch, quantize):
    """Each of the first blocks' products, in order, on as many blocks as it takes to hold more than
    CACHE_MULTIPLE caches' worth of the weights as loaded (quantized bytes for a quantized model)."""
    model = sc2cli.load_model(TINY_DIR, dtype="bf16", device="cpu", quantize=quantize)
    blocks = model.model.layers
    block_bytes = rows.weight_bytes(blocks[0])
    linears = [m for m in blocks[0].modules() if isinstance(m, QuantizedLinear)]
    assert bool(linears) == (quantize == "int4")
    dense = sum(p.numel() * p.element_size() for p in blocks[0].parameters())  # int4: the norms alone
    assert block_bytes == dense + sum(m.weight_bytes for m in linears)
    monkeypatch.setattr("sc2cli.model.rows.PROBE_MIN_BYTES", 0)
    monkeypatch.setattr(rows, "last_level_cache_bytes", lambda: block_bytes * 1.5 / rows.CACHE_MULTIPLE)
    called = []
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        for i, block in enumerate(blocks):
            getattr(block.self_attn, name).register_forward_hook(
                lambda *_, i=i, n=name: called.append((i, n))
            )
    for i, block in enumerate(blocks):
        block.mlp.register_forward_hook(lambda *_, i=i: called.append((i, "mlp")))
    model_row_costs(model)
    assert {i for i, _ in called} == {0, 1}  # one block holds 1 / 1.5 of the "cache", two hold more
    one_pass = [(0, "q_proj"), (0, "k_proj"), (0, "v_proj"), (0, "o_proj"), (0, "mlp")]
    assert called[:10] == one_pass + [(1, n) for _, n in one_pass]
    monkeypatch.setattr(rows, "last_level_cache_bytes", lambda: 1 << 40)
    called.clear()
    model_row_costs(model)
    assert {i for i, _ in called} == set(range(len(blocks)))  # never more than the model has


FAKE_CURVE = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75)[:MAX_VERIFY_ROWS]


def test_a_curve_is_remembered_per_machine_and_kernels(monkeypatch, tmp_path):
    """Measured once and read after (its key: the machine's, then the dtype, shapes and each product's
    kernel); `fresh` (SC2_KERNELS=measure) measures again; without a memory it is always measured."""
    from sc2cli.model.kernels import Choices

    model = sc2cli.load_model(TINY_DIR, dtype="bf16", device="cpu")
    other = sc2cli.load_model(TINY_DIR, dtype="bf16", device="cpu", quantize="int4")
    monkeypatch.setattr("sc2cli.model.rows.PROBE_MIN_BYTES", 0)
    measured = []
    monkeypatch.setattr(rows, "row_costs", lambda *a: measured.append(a) or FAKE_CURVE)
    path = tmp_path / "kernels.json"
    assert model_row_costs(model, lambda: Choices(path)) == FAKE_CURVE and len(measured) == 1
    assert model_row_costs(model, lambda: Choices(path)) == FAKE_CURVE and len(measured) == 1
    assert model_row_costs(model, lambda: Choices(path, fresh=True)) == FAKE_CURVE and len(measured) == 2
    model_row_costs(other, lambda: Choices(path))  # other kernels: its own curve
    assert len(measured) == 3
    model_row_costs(model)
    assert len(measured) == 4
    path.write_text(path.read_text().replace("1.25", "x"))  # a damaged entry is measured again
    assert model_row_costs(model, lambda: Choices(path)) == FAKE_CURVE and len(measured) == 5


def test_loading_reads_the_remembered_curve(monkeypatch):
    monkeypatch.setattr("sc2cli.model.rows.PROBE_MIN_BYTES", 0)
    measured = []
    monkeypatch.setattr(rows, "row_costs", lambda *a: measured.append(a) or FAKE_CURVE)
    for _ in range(2):
        assert sc2cli.load_model(TINY_DIR, dtype="bf16", device="cpu").row_costs == FAKE_CURVE
    assert len(measured) == 1
    monkeypatch.setenv("SC2_KERNELS", "measure")
    sc2cli.load_model(TINY_DIR, dtype="bf16", device="cpu")
    assert len(measured) == 2
