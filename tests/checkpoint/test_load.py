"""The loader: clear errors naming the file and tensor, and peak memory near the converted model."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import sc2cli
from sc2cli.checkpoint.load import MAP_WINDOW_BYTES
from sc2cli.checkpoint.safetensors import read_header
from sc2cli.errors import CheckpointError

from ..checkpoints import (
    MEMORY_TEST_SHAPE,
    hub_config,
    peak_rss_growth,
    reference_model,
    state_dict_of,
    write_hub_checkpoint,
    write_random_hub_checkpoint,
)


@pytest.fixture(scope="module")
def state():
    return state_dict_of(reference_model(hub_config(), seed=2), tied=True)


def checkpoint(tmp_path, state, **config):
    return write_hub_checkpoint(tmp_path / "ckpt", hub_config(**config), state)


def load(folder):
    return sc2cli.load_model(folder, dtype="fp32", device="cpu")


def test_missing_tensor_is_named(tmp_path, state):
    state = dict(state)
    del state["model.layers.1.mlp.c_fc.bias"]
    with pytest.raises(
        CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.c_fc\.bias in model\.safetensors"
    ):
        load(checkpoint(tmp_path, state))


def test_untied_model_needs_its_head(tmp_path, state):
    with pytest.raises(CheckpointError, match=r"missing tensor lm_head\.weight"):
        load(checkpoint(tmp_path, state, tie_word_embeddings=False))


def test_unexpected_tensor_is_named(tmp_path, state):
    state = {**state, "model.layers.0.self_attn.extra.weight": torch.zeros(2)}
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: unexpected tensor model\.layers\.0\.self_attn\.extra"
    ):
        load(checkpoint(tmp_path, state))


def test_old_rotary_buffers_are_ignored(tmp_path, state):
    state = {**state, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8)}
    load(checkpoint(tmp_path, state))


def test_wrong_shape_is_named(tmp_path, state):
    with pytest.raises(
        CheckpointError, match=r"tensor model\.embed_tokens\.weight has shape \[96, 64\], but config"
    ):
        load(checkpoint(tmp_path, state, vocab_size=100))


def test_truncated_file(tmp_path, state):
    folder = checkpoint(tmp_path, state)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated .*re-download"):
        load(folder)


@pytest.mark.parametrize("damage", ["length", "json"])
def test_corrupt_header(tmp_path, state, damage):
    folder = checkpoint(tmp_path, state)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "length":
        data[:8] = (10**12).to_bytes(8, "little")
    else:
        data[8:12] = b"\x00\xff{["
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: .*(corrupt|not a valid safetensors)"):
        load(folder)


def test_config_problems(tmp_path, state):
    folder = checkpoint(tmp_path, state)
    (folder / "config.json").write_text(json.dumps({**hub_config(), "model_type": "gpt_bigcode"}))
    with pytest.raises(CheckpointError, match="model_type is 'gpt_bigcode', not 'starcoder2'"):
        load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load(folder)
    with pytest.raises(CheckpointError, match="no such model folder"):
        load(tmp_path / "nowhere")


def test_pickles_are_refused(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hub_config()))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match=r"pickled \*\.bin .* safetensors only"):
        load(folder)


def test_missing_shard_is_named(tmp_path, state):
    folder = write_hub_checkpoint(tmp_path / "sharded", hub_config(), state, shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: shard named in"):
        load(folder)


def test_duplicate_tensor_across_shards(tmp_path, state):
    folder = write_hub_checkpoint(tmp_path / "sharded", hub_config(), state, shards=2)
    save_file({"model.norm.bias": state["model.norm.bias"]}, folder / "extra.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="also stored in"):
        load(folder)


def test_progress_reports_every_byte(tmp_path, state):
    seen = []
    sc2cli.load_model(
        checkpoint(tmp_path, state), dtype="bf16", device="cpu", progress=lambda d, t: seen.append((d, t))
    )
    total = sum(t.nbytes for t in state.values())
    assert seen[-1] == (total, total) and all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))


def test_bf16_load_of_an_fp32_file_peaks_near_the_converted_size(tmp_path):
    """Peak RSS while loading an fp32 checkpoint as bf16 stays within 1.15x the bf16 weights (plus the
    one mapped window), rather than file + model."""
    from sc2cli.model.config import ModelConfig

    config = hub_config(**MEMORY_TEST_SHAPE)
    folder = write_random_hub_checkpoint(tmp_path / "big", config, torch.float32)
    bf16_bytes = ModelConfig.from_dict(config).weight_bytes(2)
    growth = peak_rss_growth(
        f"import sc2cli; model = sc2cli.load_model({str(folder)!r}, dtype='bf16', device='cpu')"
    )
    assert (folder / "model.safetensors").stat().st_size > 1.9 * bf16_bytes  # the file really is fp32
    assert growth <= 1.15 * bf16_bytes + MAP_WINDOW_BYTES, (growth, bf16_bytes)


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mapped_and_staged_reads_agree(tmp_path, monkeypatch, file_dtype, dtype):
    """CPU loads go through memory-mapped windows, GPU loads through a staging buffer: both give the
    file's values, converted, across window and chunk edges (both made small and unaligned here)."""
    from sc2cli.checkpoint import load as weights

    tensor = torch.randn(123, 457).to(file_dtype)
    path = tmp_path / "t.safetensors"
    save_file({"w": tensor, "pad": torch.zeros(3, dtype=torch.bfloat16)}, str(path))
    entry = read_header(path)["w"]
    monkeypatch.setattr(weights, "MAP_WINDOW_BYTES", 10_000)
    mapped, staged = torch.empty(123, 457, dtype=dtype), torch.empty(123, 457, dtype=dtype)
    ticks = []
    with open(path, "rb") as f:
        weights.map_tensor_into(f, entry, mapped, ticks.append)
        weights.read_tensor_into(f, entry, staged, torch.empty(7_000, dtype=torch.uint8), lambda n: None)
    assert torch.equal(mapped, tensor.to(dtype)) and torch.equal(staged, tensor.to(dtype))
    assert sum(ticks) == tensor.nbytes and len(ticks) > 1


def test_a_file_cut_short_after_its_header_was_read_is_an_error(tmp_path):
    from sc2cli.checkpoint import load as weights

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    entry = read_header(path)["w"]
    os.truncate(path, entry.end - 100)
    with open(path, "rb") as f, pytest.raises(CheckpointError, match="truncated while reading w"):
        weights.map_tensor_into(f, entry, torch.empty(64, 64), lambda n: None)
