"""The MLP's GELU by table (native_table.py, bf16_table.c): F.gelu's bits on every bf16 value and on
tensors of any shape, PyTorch's own function for what the table does not take, a model's logits
unchanged by it, and the load using it only for bf16 models large enough to be measured."""

from __future__ import annotations

import pytest
import torch

import sc2cli
from sc2cli.model import native
from sc2cli.model.config import ModelConfig
from sc2cli.model.model import Starcoder2
from sc2cli.model.native_table import gelu_table, gelu_tanh

from .test_native import write_small_checkpoint

needs_table = pytest.mark.skipif(
    not native._built("bf16_table"), reason="no C compiler here to build the GELU table's lookup"
)
FORCED = "attention=fused,prompt-attention=fused,decode=linear,prefill=linear"  # no probes


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16)


@needs_table
def test_the_table_gives_gelus_bits_on_every_value_and_any_shape():
    gelu = gelu_table()
    assert gelu is not None
    everything = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)  # inf, NaN too
    assert torch.equal(bits(gelu(everything)), bits(gelu_tanh(everything)))
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 7, 12288, generator=g) * 5).to(torch.bfloat16)
    x[0, 0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    assert torch.equal(bits(gelu(x)), bits(gelu_tanh(x)))
    assert torch.equal(bits(gelu(x[:, :1, :5])), bits(gelu_tanh(x[:, :1, :5])))  # a few values
    wide = x[0].t()  # not contiguous: PyTorch's
    assert torch.equal(bits(gelu(wide)), bits(gelu_tanh(wide)))
    fp32 = torch.randn(100, generator=g)
    assert torch.equal(gelu(fp32), gelu_tanh(fp32))


@needs_table
def test_a_model_gives_the_same_logits_by_table():
    config = ModelConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                         num_hidden_layers=2, vocab_size=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(2)
    model = Starcoder2(config).to(torch.bfloat16).eval()
    prompt, step = torch.randint(0, 64, (1, 12)), torch.randint(0, 64, (1, 1))
    table, calls = gelu_table(), []
    logits = []
    for act in (gelu_tanh, lambda x: calls.append(x.shape) or table(x)):
        model.set_activation(act)
        cache = model.new_cache(32)
        with torch.inference_mode():
            logits.append(torch.cat([model(prompt, cache), model(step, cache)], dim=1))
    assert len(calls) == 2 * config.num_hidden_layers  # the prompt and the token, each layer
    assert torch.equal(logits[0], logits[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("native-table"))


@needs_table
def test_the_load_uses_the_table_for_measured_bf16_models_only(monkeypatch, checkpoint):
    monkeypatch.setenv("SC2_KERNELS", FORCED)
    tiny = sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa")
    assert all(block.mlp.act is gelu_tanh for block in tiny.model.layers)  # too small to measure
    monkeypatch.setattr("sc2cli.checkpoint.load.PROBE_MIN_BYTES", 0)
    model = sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa")
    assert all(block.mlp.act is not gelu_tanh for block in model.model.layers)
    assert "GELU by table" in model.kernels
    fp32 = sc2cli.load_model(checkpoint, dtype="fp32", device="cpu", attn="sdpa")
    assert all(block.mlp.act is gelu_tanh for block in fp32.model.layers)
    assert "GELU" not in fp32.kernels
