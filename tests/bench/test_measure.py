"""Measurement helpers: rounds of back-to-back runs and the ratios taken from them."""

import itertools

import pytest
import torch

from sc2cli.bench.measure import interleaved, memory_bandwidth, paired_ratio, waiter
from sc2cli.bench.run import Report


def test_interleaved_runs_every_engine_once_per_round_in_order():
    calls, tick = [], itertools.count()

    def engine(name):
        return lambda: calls.append(name) or next(tick)

    samples = interleaved(3, {"sc2": engine("sc2"), "llama.cpp BF16": engine("llama")})
    assert calls == ["sc2", "llama"] * 3
    assert samples == {"sc2": [0, 2, 4], "llama.cpp BF16": [1, 3, 5]}


def test_a_machine_slowing_down_between_rounds_does_not_tilt_the_ratio():
    # sc2 is half as fast as the rival in every round, while the machine's speed changes between rounds:
    # the medians come from different rounds (5 / 11), the rounds' ratios do not
    ours, theirs = [10.0, 1.0, 5.0], [20.0, 2.0, 11.0]
    assert paired_ratio(ours, theirs) == pytest.approx(0.5)
    report = Report()
    report.add_rounds("decode_tok_s", {"sc2": ours, "llama.cpp BF16": theirs})
    assert report.results["decode_tok_s"] == {"sc2": 5.0, "llama.cpp BF16": 11.0}
    assert report.ratios()["decode_tok_s"] == {"sc2 / llama.cpp BF16": 0.5}


def test_figures_from_separate_runs_fall_back_to_the_ratio_of_the_figures():
    report = Report()
    report.add("decode_overlap_tok_s", "sc2", 30.0)
    report.add("decode_overlap_tok_s", "llama.cpp Q4_K_M", 60.0)
    assert report.ratios() == {"decode_overlap_tok_s": {"sc2 / llama.cpp Q4_K_M": 0.5}}


def test_memory_bandwidth_is_measured_on_the_device_and_waits_for_a_gpu(monkeypatch):
    figures = memory_bandwidth(torch.device("cpu"), size_mb=8)
    assert set(figures) == {"copy_gbps", "read_gbps"} and all(v > 0 for v in figures.values())
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    waiter(torch.device("cuda:1"))()
    assert waited == [torch.device("cuda:1")]
    waiter(torch.device("cpu"))()
    assert len(waited) == 1  # nothing to wait for on the CPU
