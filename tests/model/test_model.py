"""Our StarCoder2 against transformers' on the same random weights: full forward, token-by-token decode
with the cache, chunked prefill, sequences longer than the sliding window."""

from __future__ import annotations

import pytest
import torch

import sc2cli
from sc2cli.model.attention import rotate
from sc2cli.model.model import KVCache, Rotary

from ..checkpoints import hub_config, reference_model, state_dict_of, write_hub_checkpoint

SHAPES = {
    # GQA ratio 1 (as many K/V heads as query heads), no window, tied head
    "mha-tied": {"num_key_value_heads": 4},
    # GQA ratio 4, window far shorter than the sequence, separate lm_head
    "gqa4-window-untied": {"num_key_value_heads": 1, "sliding_window": 8, "tie_word_embeddings": False},
    # GQA ratio 2, odd window
    "gqa2-window5": {"num_key_value_heads": 2, "sliding_window": 5, "rope_theta": 999999.4420358813},
}
SEQ = 24
ATOL = 1e-4


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
    """(reference model, checkpoint folder, config dict) for one shape."""
    config = hub_config(**SHAPES[request.param])
    ref = reference_model(config, seed=len(request.param))
    folder = tmp_path_factory.mktemp(request.param)
    write_hub_checkpoint(folder, config, state_dict_of(ref, config.get("tie_word_embeddings", True)))
    return ref, folder, config


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(1)
    return torch.randint(0, 96, (2, SEQ))


def reference_logits(ref, ids, impl: str = "eager") -> torch.Tensor:
    ref.config._attn_implementation = impl
    with torch.no_grad():
        return ref(ids).logits


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("ref_impl", ["eager", "sdpa"])
def test_full_forward_matches_reference(pair, tokens, attn, ref_impl):
    ref, folder, _ = pair
    ours = sc2cli.load_model(folder, dtype="fp32", attn=attn, device="cpu")
    with torch.no_grad():
        got = ours(tokens)
    torch.testing.assert_close(got, reference_logits(ref, tokens, ref_impl), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("attn", "single_query"), [("eager", "fused"), ("sdpa", "fused"), ("sdpa", "grouped")]
)
def test_token_by_token_decode_matches_reference(pair, tokens, attn, single_query):
    ref, folder, _ = pair
    ours = sc2cli.load_model(folder, dtype="fp32", attn=attn, device="cpu")
    ours.set_attention(attn, single_query)
    cache = ours.new_cache(batch_size=2)
    with torch.no_grad():
        steps = [ours(tokens[:, t : t + 1], cache) for t in range(SEQ)]
    assert cache.length == SEQ
    torch.testing.assert_close(torch.cat(steps, 1), reference_logits(ref, tokens), atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("chunk", [3, 7, 16])
def test_chunked_prefill_then_decode_matches_reference(pair, tokens, attn, chunk):
    ref, folder, _ = pair
    ours = sc2cli.load_model(folder, dtype="fp32", attn=attn, device="cpu")
    cache = ours.new_cache(max_length=64, batch_size=2)
    split = 18  # prefill 18 tokens in chunks (crossing the window), then decode the rest one by one
    with torch.no_grad():
        parts = [ours(tokens[:, s : min(s + chunk, split)], cache) for s in range(0, split, chunk)]
        parts += [ours(tokens[:, t : t + 1], cache) for t in range(split, SEQ)]
    torch.testing.assert_close(torch.cat(parts, 1), reference_logits(ref, tokens), atol=ATOL, rtol=0)


def test_truncated_cache_recomputes_only_the_changed_tail(pair, tokens):
    ref, folder, _ = pair
    ours = sc2cli.load_model(folder, dtype="fp32", attn="sdpa", device="cpu")
    other = tokens.clone()
    other[:, 15:] = (other[:, 15:] + 1) % 96  # same 15-token prefix, different tail
    cache = ours.new_cache(batch_size=2)
    with torch.no_grad():
        ours(tokens, cache)
        cache.truncate(15)
        tail = ours(other[:, 15:], cache)
    torch.testing.assert_close(tail, reference_logits(ref, other)[:, 15:], atol=ATOL, rtol=0)


def test_last_only_returns_the_final_position(pair, tokens):
    _, folder, _ = pair
    ours = sc2cli.load_model(folder, dtype="fp32", device="cpu")
    with torch.no_grad():
        full, last = ours(tokens), ours(tokens, last_only=True)
    assert last.shape == (2, 1, 96)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-6, rtol=0)


def test_cache_holds_the_full_context_not_only_the_window(pair):
    _, folder, config = pair
    ours = sc2cli.load_model(folder, dtype="fp32", device="cpu")
    cache = ours.new_cache()
    assert cache.max_length == config["max_position_embeddings"]
    with torch.no_grad():
        ours(torch.zeros(1, 100, dtype=torch.long), cache)
        ours(torch.zeros(1, 28, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="exceed"):
            ours(torch.zeros(1, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError):
        cache.truncate(200)


def test_kv_cache_default_size_is_the_model_context():
    from sc2cli.model.config import SHAPES as BIGCODE
    from sc2cli.model.config import ModelConfig

    cache = KVCache(ModelConfig.from_dict({**BIGCODE["3b"], "num_hidden_layers": 1}), dtype=torch.bfloat16)
    assert cache.max_length == 16384 and cache.keys.shape == (1, 1, 2, 16384, 128)


def test_bf16_checkpoint_and_sharded_checkpoint_load_the_same_values(tmp_path, tokens):
    config = hub_config(num_key_value_heads=2, sliding_window=6)
    ref = reference_model(config, seed=3)
    state = state_dict_of(ref, tied=True)
    single = write_hub_checkpoint(tmp_path / "single", config, state)
    sharded = write_hub_checkpoint(tmp_path / "sharded", config, state, shards=3)
    halved = write_hub_checkpoint(tmp_path / "bf16", config, state, dtype=torch.bfloat16)
    with torch.no_grad():
        a = sc2cli.load_model(single, dtype="fp32", device="cpu")(tokens)
        b = sc2cli.load_model(sharded, dtype="fp32", device="cpu")(tokens)
        c = sc2cli.load_model(halved, dtype="fp32", device="cpu")
        d = sc2cli.load_model(single, dtype="bf16", device="cpu")
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    for name, p in c.named_parameters():  # the bf16 file upcast exactly; the fp32 file rounded exactly
        expected = dict(d.named_parameters())[name]
        assert torch.equal(p.to(torch.bfloat16), expected), name


def test_transformers_save_pretrained_layout_loads(tmp_path, tokens):
    """transformers 5 writes `rope_parameters` instead of a top-level `rope_theta`."""
    config = hub_config(sliding_window=7, rope_theta=5000.0)
    ref = reference_model(config, seed=5)
    ref.save_pretrained(tmp_path)
    ours = sc2cli.load_model(tmp_path, dtype="fp32", attn="sdpa", device="cpu")
    assert ours.config.rope_theta == 5000.0
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference_logits(ref, tokens), atol=ATOL, rtol=0)


def test_bf16_forward_stays_close_to_reference(pair, tokens):
    ref, folder, _ = pair
    ours = sc2cli.load_model(folder, dtype="bf16", attn="sdpa", device="cpu")
    ref_bf16 = reference_logits(ref.to(torch.bfloat16), tokens, "sdpa").float()
    ref.float()
    with torch.no_grad():
        got = ours(tokens).float()
    assert (got - ref_bf16).abs().max() < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attn", ["sdpa", "flash"])
def test_cuda_backends_match_cpu_eager(pair, tokens, attn):
    from sc2cli.model.attention import flash_available

    if attn == "flash" and not flash_available():
        pytest.skip("flash-attn is not installed")
    _, folder, _ = pair
    cpu = sc2cli.load_model(folder, dtype="bf16", attn="eager", device="cpu")
    gpu = sc2cli.load_model(folder, dtype="bf16", attn=attn, device="cuda")
    cache = gpu.new_cache(batch_size=2)
    with torch.no_grad():
        expected = cpu(tokens).float()
        full = gpu(tokens.cuda()).float().cpu()
        steps = torch.cat(
            [gpu(tokens[:, :9].cuda(), cache)]
            + [gpu(tokens[:, t : t + 1].cuda(), cache) for t in range(9, SEQ)],
            1,
        )
    assert (full - expected).abs().max() < 0.05
    assert (steps.float().cpu() - expected).abs().max() < 0.05


def test_embedding_initialises_like_nn_embedding_off_the_meta_device():
    from sc2cli.model.model import Embedding

    torch.manual_seed(3)
    ours = Embedding(50, 8).weight
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.Embedding(50, 8).weight)
    with torch.device("meta"):
        assert Embedding(50, 8).weight.is_meta


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_rotary_is_the_rotate_half_form_bit_for_bit(dtype):
    """`rotate` with the table's signed sin against the reference's x cos + (-x2, x1) sin, zeros included
    (position 0, where sin is 0, and zero activations: the signs of zeros too)."""
    from transformers.models.starcoder2.modeling_starcoder2 import rotate_half

    config = sc2cli.model.config.ModelConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                             intermediate_size=128, num_hidden_layers=1, vocab_size=32)  # fmt: skip
    rotary = Rotary(config)
    x = torch.randn(1, 40, 4, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0, :3, :, :5] = 0.0
    cos, signed_sin = rotary(0, 40, x.device, dtype)
    angles = torch.arange(40, dtype=torch.float32)[:, None] * (1.0 / 10000 ** (torch.arange(0, 16, 2) / 16))
    sin = torch.cat((angles, angles), dim=-1).sin().to(dtype)[:, None, :]
    want = x * cos + rotate_half(x) * sin
    got = rotate(x, cos, signed_sin)
    assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())
