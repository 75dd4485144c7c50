"""The inflated checkpoint computes the trained tiny model's logits at a larger shape (sc2cli/dev/inflate.py)."""

from __future__ import annotations

import pytest
import torch

from sc2cli.checkpoint.layout import read_config
from sc2cli.checkpoint.load import load_checkpoint
from sc2cli.checkpoint.names import TINY_DIR
from sc2cli.completion.generate import generate
from sc2cli.dev.inflate import check_fits, head_dim_map, inflate, inflated_config, load_plain, main
from sc2cli.model.config import ModelConfig

pytestmark = pytest.mark.skipif(
    not (TINY_DIR / "model.safetensors").is_file(), reason="the built-in tiny model is not built"
)

# Every size the tiny model has, doubled or more, and a head 4x as wide: r = 4 copies of the stream,
# 6 query heads in 2 groups of 3 (the tiny model's own grouping), one layer more, a larger vocabulary.
SHAPE = {"hidden_size": 768, "num_attention_heads": 6, "num_key_value_heads": 2,
         "intermediate_size": 1024, "num_hidden_layers": 5, "vocab_size": 4352}  # fmt: skip
# 8 copies of the stream and 12 query heads: in 2 groups of 6 (each small head held twice), or in 3
# groups of 4 (one head of each group, and the whole third group, copying none)
GROUPINGS = {"twice": {**SHAPE, "hidden_size": 1536, "num_attention_heads": 12},
             "idle": {**SHAPE, "hidden_size": 1536, "num_attention_heads": 12, "num_key_value_heads": 3}}  # fmt: skip


@pytest.fixture(scope="module", params=["plain", *GROUPINGS])
def models(request):
    small = load_plain(TINY_DIR, torch.float32)
    shape = GROUPINGS.get(request.param, SHAPE)
    large = inflate(small, inflated_config(small.config, {**small.config.to_dict(), **shape}))
    return small, large


def test_logits_are_the_small_models_past_its_window(models):
    small, large = models
    ids = torch.randint(0, 4096, (1, 300), generator=torch.Generator().manual_seed(0))  # window: 256
    with torch.inference_mode():
        expected, got = small(ids), large(ids)
    assert got.shape[-1] == 4352
    torch.testing.assert_close(got[..., :4096], expected, rtol=0, atol=1e-4)


def test_weights_the_result_does_not_use_are_random_not_zero(models):
    """Mostly-zero weights could read faster than a real model's (a page of zeros can be shared)."""
    _, large = models
    matrices = [m.weight for m in large.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in matrices)
    assert zeros / sum(w.numel() for w in matrices) < 0.2  # 3B shape: 1.5% (keys and values)


def test_cached_greedy_decoding_picks_the_same_tokens(models):
    small, large = models
    prompt = torch.randint(0, 4096, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    token_bytes = [b"x"] * 4096  # the tokenizer's ids: the extra vocabulary is never picked
    runs = [
        [s.token for s in generate(m, prompt, max_new_tokens=24, token_bytes=token_bytes)]
        for m in (small, large)
    ]
    assert runs[0] == runs[1]


def test_head_dimensions_keep_their_rotary_frequency_and_pairs():
    dims = head_dim_map(32, 128)
    assert dims.tolist()[:3] == [0, 4, 8] and dims[16].item() == 64  # i and i + 16 stay a rotation pair
    assert torch.equal(dims[16:] - dims[:16], torch.full((16,), 64))
    small_freq = torch.arange(0, 32, 2, dtype=torch.float32) / 32
    large_freq = torch.arange(0, 128, 2, dtype=torch.float32) / 128
    assert torch.equal(large_freq[dims[:16]], small_freq)  # dimension j < 64 turns at frequency j


def test_shapes_that_cannot_hold_the_small_model_are_refused():
    small = read_config(TINY_DIR)
    base = {**small.to_dict(), **SHAPE}
    for change in ({"hidden_size": 800, "num_attention_heads": 10}, {"num_key_value_heads": 1},
                   {"intermediate_size": 512}, {"num_hidden_layers": 3}):  # fmt: skip
        with pytest.raises(ValueError, match="cannot inflate"):
            check_fits(small, ModelConfig.from_dict({**base, **change}))


def test_command_writes_a_checkpoint_sc2_loads(tmp_path, monkeypatch):
    import sc2cli.dev.inflate as module

    monkeypatch.setitem(module.SHAPES, "test", {**read_config(TINY_DIR).to_dict(), **SHAPE})
    main(["--shape", "test", "--out", str(tmp_path / "ck")])
    model = load_checkpoint(tmp_path / "ck", dtype="fp32")
    assert model.config.hidden_size == 768 and (tmp_path / "ck" / "tokenizer.json").is_file()
    small = load_plain(TINY_DIR, torch.float32)
    ids = torch.arange(100, 160)[None]
    with torch.inference_mode():
        # the file holds bf16 values (the tiny model's own, divided by powers of two)
        torch.testing.assert_close(model(ids)[..., :4096], small(ids), rtol=0, atol=1e-4)
