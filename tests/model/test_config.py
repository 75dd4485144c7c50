"""config.json exactly as the bigcode repos publish it, and as newer transformers versions write it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sc2cli.errors import CheckpointError
from sc2cli.model.config import SHAPES, ModelConfig

DATA = Path(__file__).parents[1] / "data" / "configs"


def test_3b_as_published():
    c = ModelConfig.from_file(DATA / "starcoder2-3b.json")
    assert c.rope_theta == 999999.4420358813
    assert c.tie_word_embeddings  # no key in the file means tied
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (3072, 24, 2, 128)
    assert c.sliding_window == 4096 and c.max_position_embeddings == 16384 and c.norm_epsilon == 1e-5


def test_7b_leftover_keys_are_ignored():
    raw = json.loads((DATA / "starcoder2-7b.json").read_text())
    assert raw["activation_function"] == "gelu"  # a leftover: the model uses tanh GELU (hidden_act)
    c = ModelConfig.from_dict(raw)
    assert c.hidden_act == "gelu_pytorch_tanh" and c.num_key_value_heads == 4 and c.rope_theta == 1000000


def test_15b_has_a_separate_head():
    c = ModelConfig.from_file(DATA / "starcoder2-15b.json")
    assert c.tie_word_embeddings is False and c.num_hidden_layers == 40 and c.rope_theta == 100000


@pytest.mark.parametrize("name", ["3b", "7b", "15b"])
def test_built_in_shapes_match_the_published_files(name):
    published = ModelConfig.from_file(DATA / f"starcoder2-{name}.json")
    assert ModelConfig.from_dict(SHAPES[name]) == published


def test_parameter_counts_match_the_model_names():
    counts = {n: ModelConfig.from_dict(s).num_parameters() / 1e9 for n, s in SHAPES.items()}
    assert 2.9 < counts["3b"] < 3.1 and 7.0 < counts["7b"] < 7.3 and 15.5 < counts["15b"] < 16.3


def test_newer_rope_parameters_layout():
    raw = {"model_type": "starcoder2", "rope_parameters": {"rope_type": "default", "rope_theta": 12345.0}}
    assert ModelConfig.from_dict(raw).rope_theta == 12345.0


def test_round_trip_through_to_dict():
    c = ModelConfig.from_file(DATA / "starcoder2-15b.json")
    assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model_type": "llama"}, "model_type is 'llama', not 'starcoder2'"),
        ({}, "model_type is None"),
        ({"model_type": "starcoder2", "hidden_size": 10, "num_attention_heads": 3}, "not a multiple"),
        (
            {"model_type": "starcoder2", "rope_parameters": {"rope_type": "yarn", "rope_theta": 1}},
            "not supported",
        ),
        ({"model_type": "starcoder2", "hidden_act": "relu"}, "hidden_act"),
    ],
)
def test_bad_configs_are_named(raw, message):
    with pytest.raises(CheckpointError, match=message):
        ModelConfig.from_dict(raw)


def test_missing_and_unreadable_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        ModelConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read config.json"):
        ModelConfig.from_file(tmp_path / "config.json")
