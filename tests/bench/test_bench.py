"""`sc2 bench` runs end to end on a tiny checkpoint and reports every figure (measurements, not assertions
about speed)."""

from __future__ import annotations

import json

import pytest
import torch

from sc2cli.bench import BenchOptions, greedy_agreement, random_model, run_bench, shape_config
from sc2cli.cli import main

from ..checkpoints import write_tiny_model
from ..vs_transformers import register


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("benchmodel"), seed=3)


def test_report_against_transformers_with_int8(folder):
    register()
    options = BenchOptions(
        model=str(folder), prompt_lengths=(16, 64), decode_tokens=6, runs=1, vs_transformers=True, quantize="int8",
        edits=True,
    )  # fmt: skip
    report = run_bench(options).to_json()
    results = report["results"]
    for metric in ("prefill_16_tok_s", "prefill_64_tok_s", "decode_tok_s", "fim_ttft_s"):
        assert results[metric]["sc2"] > 0 and results[metric]["transformers"] > 0, metric
    assert 0 <= results["greedy_agreement_with_unquantized"]["sc2"] <= 1
    assert results["decode_bandwidth_gbps"]["sc2"] > 0 and report["machine"]["copy_gbps"] > 0
    assert (
        results["after_edit_recomputed_tokens"]["sc2-server"]
        < results["after_edit_prompt_tokens"]["sc2-server"]
    )
    assert "int8" in report["setup"]["kernels"]


def test_cli_json_and_load_measurement(folder, capsys):
    with pytest.raises(SystemExit) as done:
        main(
            [
                "bench",
                "-m",
                str(folder),
                "--prompt-lengths",
                "8",
                "--decode-tokens",
                "4",
                "--runs",
                "1",
                "--load",
                "--json",
            ]
        )
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"]["load_s"]["sc2"] > 0 and report["results"]["load_peak_rss_growth_gb"]["sc2"] >= 0
    assert "load_int8_second_s" not in report["results"]


def test_load_measurement_of_a_quantized_model_reads_the_packed_weights_the_second_time(
    folder, tmp_path, monkeypatch
):
    from sc2cli.bench import measure_load

    monkeypatch.setenv("SC2_CACHE_DIR", str(tmp_path / "cache"))
    first = measure_load(folder, ["sc2"], "bf16", quantize="int4")["sc2"]
    assert len(list((tmp_path / "cache" / "packed").glob("*.safetensors"))) == 1
    second = measure_load(folder, ["sc2"], "bf16", quantize="int4")["sc2"]
    assert first["load_s"] > 0 and second["load_s"] > 0 and second["peak_rss_growth_gb"] >= 0


def test_vs_transformers_needs_the_reference_registered(folder, capsys, monkeypatch):
    from sc2cli import bench

    monkeypatch.setattr(bench, "REFERENCES", {})
    with pytest.raises(SystemExit) as done:
        main(["bench", "-m", str(folder), "--vs", "transformers"])
    assert done.value.code == 2 and "python -m tests.vs_transformers" in capsys.readouterr().err


def test_random_shapes_are_the_real_ones():
    config = shape_config("3b", 1)
    assert (config.hidden_size, config.num_key_value_heads, config.num_hidden_layers) == (3072, 2, 1)
    small = shape_config("7b", 2)
    assert small.hidden_size == 4608 and small.num_hidden_layers == 2


def test_greedy_agreement_of_a_model_with_itself_is_total():
    from sc2cli.model.config import ModelConfig

    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    model = random_model(config, torch.device("cpu"), torch.float32, "sdpa", seed=0)
    assert greedy_agreement(model, model, [5, 6, 7], 10) == 1.0


def test_decode_rate_leaves_the_prefill_out():
    """Decode speed runs from the first new token to the last: a slow prefill before it changes nothing,
    and transformers' streamer protocol (prompt first, then each token) is timed the same way."""
    from sc2cli.bench import TokenClock, decode_rate

    runs = iter([[5.0, 5.5, 6.0, 6.5], [90.0, 90.5, 91.0, 91.5], [1.0, 1.25, 1.5, 1.75]])
    assert decode_rate(lambda: next(runs), 2) == 3.0  # median of 2 and 4 tok/s, after a warm-up run
    clock = TokenClock()
    clock.put("prompt ids")
    assert clock.times == []
    clock.put("token")
    clock.put("token")
    clock.end()
    assert len(clock.times) == 2
