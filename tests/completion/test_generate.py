"""Sampling as pure functions, and greedy generation token-for-token equal to transformers' generate."""

from __future__ import annotations

import pytest
import torch

import sc2cli
from sc2cli.completion.generate import PromptCache, choose, generate, healing_mask, top_k_filter, top_p_filter
from sc2cli.completion.sampling import Sampling
from sc2cli.errors import InputError

from ..checkpoints import hub_config, reference_model, state_dict_of, write_hub_checkpoint

STOPS = frozenset(range(7))


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [True, False, True, False]
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = ~torch.isinf(top_p_filter(probs.log(), 0.75))
    assert kept.tolist() == [True, True, False, False]
    assert (~torch.isinf(top_p_filter(probs.log(), 0.8))).tolist() == [True, True, False, False]
    assert (~torch.isinf(top_p_filter(probs.log(), 0.81))).tolist() == [True, True, True, False]
    assert (~torch.isinf(top_p_filter(probs.log(), 1.0))).all()


def test_temperature_zero_is_argmax_and_seed_reproduces():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert choose(logits, Sampling()) == int(logits.argmax())
    sampling = Sampling(temperature=1.0, top_k=20, top_p=0.9)
    a = [choose(logits, sampling, torch.Generator().manual_seed(7)) for _ in range(3)]
    b = [choose(logits, sampling, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a == b
    allowed = set(torch.topk(logits, 20).indices.tolist())
    g = torch.Generator().manual_seed(1)
    assert {choose(logits, sampling, g) for _ in range(50)} <= allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"top_k": 0}, "top-k"),
    ],
)
def test_bad_sampling_options(kwargs, message):
    with pytest.raises(InputError, match=message):
        Sampling(**kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = hub_config(vocab_size=96, sliding_window=6, num_key_value_heads=2, max_position_embeddings=256)
    ref = reference_model(config, seed=11)
    folder = write_hub_checkpoint(tmp_path_factory.mktemp("gen"), config, state_dict_of(ref, True))
    return ref, sc2cli.load_model(folder, dtype="fp32", device="cpu", attn="sdpa")


def reference_generate(ref, prompt, n):
    ref.generation_config.eos_token_id = sorted(STOPS)
    ref.generation_config.pad_token_id = 0
    out = ref.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [
        torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens, strict=False)
    ]
    while tokens and tokens[-1] in STOPS:  # the stop token is not part of ours
        tokens.pop()
        logprobs.pop()
    return tokens, logprobs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_is_token_for_token_the_reference(models, seed):
    ref, ours = models
    prompt = torch.randint(7, 96, (20,), generator=torch.Generator().manual_seed(seed)).tolist()
    expected, expected_logprobs = reference_generate(ref, prompt, 40)
    steps = list(generate(ours, prompt, max_new_tokens=40, stop_ids=STOPS))
    assert [s.token for s in steps] == expected
    torch.testing.assert_close([s.logprob for s in steps], expected_logprobs, atol=1e-4, rtol=0)


def test_prompt_cache_reuses_the_shared_prefix(models):
    ref, ours = models
    prompt = torch.randint(7, 96, (30,), generator=torch.Generator().manual_seed(5)).tolist()
    edited = [*prompt[:22], 9, 10, 11, *prompt[22:]]
    cache = PromptCache(ours, 128)
    list(generate(ours, prompt, max_new_tokens=5, cache=cache))
    steps = list(generate(ours, edited, max_new_tokens=12, stop_ids=STOPS, cache=cache))
    assert cache.reused == 22
    assert [s.token for s in steps] == reference_generate(ref, edited, 12)[0]
    list(generate(ours, edited, max_new_tokens=3, cache=cache))
    assert cache.reused == len(edited) - 1  # an identical prompt recomputes only its last token


def test_generation_stops_at_the_context_end(models):
    _, ours = models
    steps = list(generate(ours, [9] * 250, max_new_tokens=100))
    assert len(steps) == 6
    with pytest.raises(InputError, match="the model holds 256"):
        list(generate(ours, [9] * 256, max_new_tokens=1))


@pytest.mark.parametrize("speculate", [False, True], ids=["plain", "speculative"])
def test_ids_past_the_tokenizer_are_never_chosen(models, speculate):
    """A checkpoint whose vocab_size exceeds its tokenizer's: generation keeps to the ids the tokenizer has
    (the others have no text), and is otherwise the same."""
    from sc2cli.completion.speculate import Speculation

    _, ours = models
    prompt = torch.randint(7, 96, (20,), generator=torch.Generator().manual_seed(2)).tolist() * 2  # drafts
    free = [s.token for s in generate(ours, prompt, max_new_tokens=30, stop_ids=STOPS)]
    cut = sorted(set(free))[len(set(free)) // 2]  # the tokenizer ends in the middle of what is chosen
    token_bytes = [b"x"] * cut
    spec = Speculation() if speculate else None
    steps = list(generate(ours, prompt, max_new_tokens=30, stop_ids=STOPS, token_bytes=token_bytes,
                          speculation=spec))  # fmt: skip
    assert steps and all(s.token < cut for s in steps)
    first_past = next(i for i, t in enumerate(free) if t >= cut)
    assert [s.token for s in steps[:first_past]] == free[:first_past]
    with torch.no_grad():
        logits = ours(torch.tensor([prompt + free[:first_past]]))[0, -1]
    instead = int(logits[:cut].argmax())  # what the model picks among the ids the tokenizer has
    assert [s.token for s in steps[first_past : first_past + 1]] == ([] if instead in STOPS else [instead])


# ------------------------------------------------------------------------------------------------ healing


def test_healing_mask_allows_tokens_that_start_with_the_healed_bytes():
    token_bytes = [b"", b"o", b" ", b" o", b" os", b" x", b"os", b" o"]
    mask = healing_mask(token_bytes, b" o", frozenset({7}), 9)  # the logits may be wider than the vocab
    assert mask.tolist() == [False, False, False, True, True, False, False, False, False]


def test_the_first_token_starts_with_the_healed_bytes_then_greedy_goes_on(models):
    _, ours = models
    token_bytes = [b""] * 7 + [bytes([97 + i % 5]) * (1 + i % 3) for i in range(7, 96)]  # b"c", b"dd", ...
    prompt = torch.randint(7, 96, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    steps = list(
        generate(ours, prompt, max_new_tokens=8, stop_ids=STOPS, forced=b"cc", token_bytes=token_bytes)
    )
    tokens = [s.token for s in steps]
    with torch.no_grad():
        logits = ours(torch.tensor([prompt]))[0, -1]
    allowed = healing_mask(token_bytes, b"cc", STOPS, logits.shape[-1])
    assert token_bytes[tokens[0]].startswith(b"cc")
    assert tokens[0] == int(logits.masked_fill(~allowed, float("-inf")).argmax()) != int(logits.argmax())
    free = [s.token for s in generate(ours, prompt + tokens[:1], max_new_tokens=7, stop_ids=STOPS)]
    assert tokens[1:] == free
