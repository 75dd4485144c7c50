"""Speculative decoding from the prompt: the drafts, the accept/reject rule's distribution, and generation
that is token for token plain greedy generation, with the same stops, limits, cache and healing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import sc2cli
from sc2cli.completion.generate import PromptCache, generate, healing_mask, prefill
from sc2cli.completion.sampling import Sampling
from sc2cli.completion.speculate import (
    MARGIN,
    SEPARATOR,
    Drafter,
    Recall,
    Speculation,
    accept_or_resample,
    draft_length,
)

from ..checkpoints import hub_config, reference_model, state_dict_of, write_hub_checkpoint

STOPS = frozenset(range(7))

# ------------------------------------------------------------------------------------------------ drafts


def test_the_longest_match_drafts_what_followed_its_latest_occurrence():
    ids = [1, 2, 3, 4, 5, 9, 3, 4, 6, 7, 2, 3, 4]
    assert Drafter(ids, Speculation(max_draft=3)).draft(10) == [5, 9, 3]  # "2 3 4" beats the later "3 4"
    assert Drafter(ids, Speculation(max_draft=3, sizes=(2, 1))).draft(10) == [6, 7, 2]  # the latest "3 4"
    drafter = Drafter([1, 2, 3, 4, 5, 2, 3, 4], Speculation(max_draft=3))
    assert drafter.draft(10) == [5, 2, 3]
    assert drafter.draft(2) == [5, 2]
    assert drafter.draft(0) == []


def test_no_match_no_draft_and_generated_tokens_are_indexed():
    drafter = Drafter([10, 11, 12], Speculation())
    drafter.push([13])
    assert drafter.draft(4) == []
    drafter.push([11])
    assert drafter.draft(4) == [12, 13, 11, 12]  # "11" went on with 12, 13, then the copy copies itself


def test_a_repeating_pattern_drafts_whole_periods():
    drafter = Drafter([5, 6, 7, 5, 6, 7, 5], Speculation(max_draft=6))
    assert drafter.draft(6) == [6, 7, 5, 6, 7, 5]
    drafter = Drafter([4, 4, 4], Speculation(max_draft=5))
    assert drafter.draft(5) == [4] * 5


def test_accepting_counts_and_goes_on_after_the_kept_tokens():
    speculation = Speculation()
    drafter = Drafter([1, 2, 3, 8, 1, 2], speculation)
    drafter.accept([3, 8, 1], 2)
    assert (speculation.drafted, speculation.accepted) == (3, 2)
    assert drafter.ids[-2:] == [3, 8]


def test_a_recalled_completion_drafts_where_the_text_has_no_match():
    recall = Recall()
    recall.add([7, 1, 2, 3, 4, 5, 6])
    recall.add([8, 9])
    drafter = Drafter([20, 1, 2, 3], Speculation(max_draft=6), recall=recall)
    assert drafter.draft(2) == [4, 5]
    assert drafter.draft(6) == [4, 5, 6]  # a recalled completion ends where it ended: no copy of itself
    drafter.push([4, 5, 6])
    assert drafter.draft(6) == []  # "6" is followed by nothing, "6 9"... never joined across sequences
    assert (6, 8) not in recall.follows and (6,) not in recall.follows
    assert Drafter([20, 1, 2, 3], Speculation(max_draft=6)).draft(6) == []


def test_the_source_whose_text_before_the_match_agrees_longer_drafts():
    recall = Recall()
    recall.add([5, 6, 1, 2, 3, 40, 41])  # "5 6 1 2 3": agrees with the text's end for 5 tokens
    agreeing_here = Drafter(
        [5, 6, 1, 2, 3, 30, 31, 9, 5, 6, 1, 2, 3], Speculation(max_draft=2), recall=recall
    )
    assert agreeing_here.draft(2) == [30, 31]  # 5 agreeing tokens here too: a tie keeps the text's own
    agreeing_there = Drafter([0, 1, 2, 3, 30, 31, 9, 5, 6, 1, 2, 3], Speculation(max_draft=2), recall=recall)
    assert agreeing_there.draft(2) == [40, 41]


def test_recall_keeps_its_newest_sequences_within_its_budget():
    recall = Recall(budget=40)
    for i in range(30):
        recall.add([100 + i, 200 + i, 300 + i, 400 + i])
        assert len(recall.ids) <= 40 and recall.ids[-1] == SEPARATOR
        assert recall.follows[(100 + i, 200 + i, 300 + i)] == len(recall.ids) - 2  # the newest: drafted
    assert (100, 200, 300) not in recall.follows  # the oldest: forgotten
    for key, end in recall.follows.items():
        assert recall.ids[end - len(key) : end] == list(key) and SEPARATOR not in key
        assert recall.ids[end] != SEPARATOR
    recall.add(list(range(1000, 1100)))  # longer than the budget: its last tokens stay
    assert recall.ids == [*range(1061, 1100), SEPARATOR]


@st.composite
def texts_and_recalled(draw) -> tuple[list[int], list[list[int]]]:
    """A text and recalled sequences pieced together from slices of it and other tokens, so that
    matches in both sources (and agreements of every length) are common."""
    ids = draw(st.lists(st.integers(0, 3), min_size=1, max_size=30))
    piece = st.tuples(st.integers(0, len(ids)), st.integers(0, len(ids))).map(lambda ab: ids[ab[0] : ab[1]])
    parts = st.lists(st.one_of(piece, st.just(ids), st.lists(st.integers(0, 5), max_size=3)), max_size=4)
    return ids, draw(st.lists(parts.map(lambda p: [t for part in p for t in part]), max_size=5))


@given(texts_and_recalled(), st.integers(1, 8))
@example(([0, 1, 2, 0, 1, 2], [[7, 0, 1, 2, 0, 1, 2, 9]]), 4)  # agreeing further back than the text goes
def test_every_draft_is_what_followed_a_match_in_one_source(text, limit):
    ids, recalled = text
    recall = Recall(budget=32)
    for sequence in recalled:
        recall.add(sequence)
    drafter = Drafter(ids, Speculation(max_draft=8), recall=recall)
    draft = drafter.draft(limit)
    assert len(draft) <= limit and SEPARATOR not in draft
    if not draft:
        return
    n = drafter.last_size
    extended = ids + draft  # a copy of the text (possibly of itself, overlapping)
    here = any(extended[i : i + n + len(draft)] == ids[-n:] + draft for i in range(len(ids) - n))
    kept = recall.ids
    there = any(kept[i : i + n + len(draft)] == ids[-n:] + draft for i in range(len(kept)))
    assert here or there


def test_draft_length_weighs_expected_tokens_against_the_cost_of_rows():
    flat = (1.0,) * 9
    assert draft_length(0.6, flat, 8) == 8  # free rows: draft as far as allowed
    assert draft_length(0.6, None, 5) == 5  # unmeasured: as cheap as one row
    assert draft_length(0.6, flat, 3) == 3
    steep = (1.0, 1.23, 1.4, 1.55, 1.6, 2.8, 2.83, 2.9, 3.3)  # int4's tinygemm, 2 threads
    assert draft_length(0.8, steep, 8) == 4  # 3.36 tokens for 1.6 beats 4.69 for 2.83
    assert draft_length(0.15, steep, 8) == 0  # rarely kept: a plain step is worth more
    assert draft_length(0.15, flat, 8) == 8  # ... unless extra rows cost nothing
    assert draft_length(1.0, steep, 8) == 4  # always kept: 5 tokens for 1.6 beat 9 for 3.3
    assert draft_length(1.0, flat, 8) == 8
    assert draft_length(0.6, (1.0, 1.1), 8) == 1  # rows beyond the measured curve are never drafted


@given(
    rate=st.floats(0, 1),
    costs=st.lists(st.floats(1, 10), min_size=1, max_size=10).map(lambda c: tuple(sorted(c))),
    limit=st.integers(0, 12),
)
def test_draft_length_stays_within_the_limit_and_the_curve(rate, costs, limit):
    k = draft_length(rate, costs, limit)
    assert 0 <= k <= min(limit, len(costs) - 1)
    if k:  # chosen only when it yields more tokens per unit of cost than a plain step
        expected = k + 1 if rate >= 1 else (1 - rate ** (k + 1)) / (1 - rate)
        assert expected / costs[k] > MARGIN


def test_the_drafter_learns_a_rate_per_match_length_and_stops_drafting_when_it_does_not_pay():
    steep = (1.0, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5)
    drafter = Drafter([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2], Speculation(), steep)
    first = drafter.draft(8)
    assert first == [3]  # a 3-token match; the prior (60%) pays for one drafted token, not more
    assert drafter.last_size == 3
    for _ in range(4):
        drafter.accept([9], 0)  # rejected at once, each time
    assert drafter.rate(3) < 0.3 and drafter.rate(1) == pytest.approx(0.6)  # only 3-token matches lost trust
    assert drafter.draft(8) == []  # a match, but verifying it would cost more than it yields
    single = Drafter([7, 8, 9, 7], Speculation(), steep)
    assert single.draft(8) == [8] and single.last_size == 1  # other lengths keep the prior
    for _ in range(40):
        drafter.accept([drafter.ids[-6]], 1)  # now everything is kept
    assert drafter.rate(3) > 0.85
    drafter.push([1, 2])
    assert len(drafter.draft(8)) > len(first)


def test_a_match_not_drafted_from_still_counts_its_guess():
    steep = (1.0, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5)

    def distrusted() -> Drafter:
        drafter = Drafter([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2], Speculation(), steep)
        drafter.draft(8)
        for _ in range(4):
            drafter.accept([9], 0)
        assert drafter.draft(8) == [] and drafter.guess == (3, 3)  # too little trust to draft: a guess
        return drafter

    wrong = distrusted()
    low = wrong.rate(3)
    wrong.push([9])
    assert wrong.rate(3) < low and wrong.guess is None
    # the text goes on as the 3-token matches predict, with no draft to test them: their guesses alone
    # bring the rate back until drafting pays again
    drafter, rates = distrusted(), []
    for _ in range(12):
        if drafted := drafter.draft(8):
            break
        rates.append(drafter.rate(3))
        drafter.push([drafter.guess[1]])
    assert drafted and drafter.last_size == 3 and rates[0] == low and rates == sorted(set(rates))
    assert drafter.speculation.drafted == 4  # guesses are evidence, not drafts


# ------------------------------------------------------------------------------------------------ sampling rule


@pytest.mark.parametrize("draft", [0, 2, 4])
def test_accept_or_resample_draws_exactly_from_p(draft):
    """With the draft a point mass, what comes out (kept draft or the resampled token) is distributed as p:
    a chi-square test over many draws (df 4; 0.01% of correct rules fail above 23.5)."""
    p = torch.tensor([0.05, 0.4, 0.3, 0.0, 0.25])
    generator = torch.Generator().manual_seed(draft)
    n = 20_000
    counts = torch.zeros(5)
    for _ in range(n):
        out = accept_or_resample(p, draft, generator)
        counts[draft if out is None else out] += 1
    assert counts[3] == 0
    seen = p > 0
    chi2 = float((((counts - n * p) ** 2)[seen] / (n * p[seen])).sum())
    assert chi2 < 23.5, (counts / n).tolist()


def test_a_certain_draft_is_always_kept_and_an_impossible_one_never():
    generator = torch.Generator().manual_seed(0)
    assert all(accept_or_resample(torch.tensor([0.0, 1.0, 0.0]), 1, generator) is None for _ in range(200))
    assert all(accept_or_resample(torch.tensor([0.5, 0.0, 0.5]), 1, generator) in (0, 2) for _ in range(200))


# ------------------------------------------------------------------------------------------------ generation


@pytest.fixture(scope="module", params=[6, None], ids=["window6", "nowindow"])
def model(request, tmp_path_factory):
    config = hub_config(
        vocab_size=96, sliding_window=request.param, num_key_value_heads=2, max_position_embeddings=256
    )
    folder = write_hub_checkpoint(
        tmp_path_factory.mktemp("spec"), config, state_dict_of(reference_model(config, 11), True)
    )
    return sc2cli.load_model(folder, dtype="fp32", device="cpu", attn="sdpa")


def prompts() -> list[list[int]]:
    """Random prompts, and prompts that repeat themselves (where drafts are found and kept)."""
    out = []
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        piece = torch.randint(7, 96, (5 + seed,), generator=g).tolist()
        out.append(torch.randint(7, 96, (24,), generator=g).tolist())
        out.append(piece * 3 + piece[:2])
    return out


def run(model, prompt, speculation=None, **kwargs):
    return list(generate(model, prompt, speculation=speculation, **kwargs))


def test_greedy_is_token_for_token_plain_greedy(model):
    totals = Speculation()
    for prompt in prompts():
        for stops in (STOPS, frozenset()):
            plain = run(model, prompt, max_new_tokens=40, stop_ids=stops)
            speculation = Speculation()
            fast = run(model, prompt, speculation, max_new_tokens=40, stop_ids=stops)
            assert [s.token for s in fast] == [s.token for s in plain]
            torch.testing.assert_close(
                [s.logprob for s in fast], [s.logprob for s in plain], atol=1e-5, rtol=0
            )
            totals.drafted += speculation.drafted
            totals.accepted += speculation.accepted
    assert 0 < totals.accepted < totals.drafted  # both kept and rejected drafts were exercised


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_the_token_limit_and_stop_tokens_cut_a_kept_draft(model, limit):
    for prompt in prompts()[1::2]:
        free = [s.token for s in run(model, prompt, max_new_tokens=30)]
        stop = frozenset({free[limit]}) - {free[0]}  # a token that comes, possibly inside a kept draft
        for stops in (frozenset(), stop):
            plain = [s.token for s in run(model, prompt, max_new_tokens=limit, stop_ids=stops)]
            fast = [s.token for s in run(model, prompt, Speculation(), max_new_tokens=limit, stop_ids=stops)]
            assert fast == plain
            assert len(fast) <= limit and not set(fast) & stops


def test_the_cache_holds_exactly_the_kept_tokens_and_is_reused_correctly(model):
    cache = PromptCache(model, 200)
    for prompt in prompts()[1:8:2]:
        speculation = Speculation()
        tokens = [s.token for s in run(model, prompt, speculation, max_new_tokens=25, cache=cache)]
        assert cache.kv.length == len(cache.tokens)
        assert cache.tokens[: len(prompt)] == prompt
        assert cache.tokens[len(prompt) :] == tokens[: len(cache.tokens) - len(prompt)]
        assert len(cache.tokens) >= len(prompt) + len(tokens) - 1
        fresh = PromptCache(model, 200)
        prefill(model, cache.tokens, fresh)  # what those tokens' keys and values are when computed afresh
        n = cache.kv.length
        torch.testing.assert_close(cache.kv.keys[..., :n, :], fresh.kv.keys[..., :n, :], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            cache.kv.values[..., :n, :], fresh.kv.values[..., :n, :], atol=1e-5, rtol=0
        )
        longer = [*prompt, *tokens, 9, 10]  # the next request shares the prompt and the completion
        again = [s.token for s in run(model, longer, Speculation(), max_new_tokens=10, cache=cache)]
        assert again == [s.token for s in run(model, longer, max_new_tokens=10)]


def test_cancelling_stops_between_kept_tokens(model):
    prompt = prompts()[1]
    seen: list[int] = []
    steps = generate(
        model, prompt, max_new_tokens=30, cancelled=lambda: len(seen) >= 4, speculation=Speculation()
    )
    for step in steps:
        seen.append(step.token)
    assert seen == [s.token for s in run(model, prompt, max_new_tokens=4)]


def test_the_healed_first_token_is_chosen_before_any_draft(model):
    token_bytes = [b""] * 7 + [bytes([97 + i % 5]) * (1 + i % 3) for i in range(7, 96)]
    for prompt in prompts():
        kwargs = {"max_new_tokens": 12, "stop_ids": STOPS, "forced": b"cc", "token_bytes": token_bytes}
        fast = [s.token for s in run(model, prompt, Speculation(), **kwargs)]
        assert fast == [s.token for s in run(model, prompt, **kwargs)]
        allowed = healing_mask(token_bytes, b"cc", STOPS, 96)
        assert allowed[fast[0]]


def test_sampling_applies_top_k_to_verified_tokens_and_the_seed_reproduces(model):
    sampling = Sampling(temperature=1.5, top_k=3, seed=4)
    for prompt in prompts()[1::2]:
        speculation = Speculation()
        tokens = [s.token for s in run(model, prompt, speculation, max_new_tokens=30, sampling=sampling)]
        assert tokens == [
            s.token for s in run(model, prompt, Speculation(), max_new_tokens=30, sampling=sampling)
        ]
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + tokens]))[0, len(prompt) - 1 : -1]  # (n, V)
        top3 = torch.topk(logits, 3).indices
        assert all(t in top3[i].tolist() for i, t in enumerate(tokens))


# ------------------------------------------------------------------------------------------------ engine


@pytest.fixture(scope="module")
def engine():
    """The trained tiny model in fp32, with two prompt caches as a warm server keeps them."""
    from sc2cli.checkpoint.names import TINY_DIR
    from sc2cli.completion.engine import Engine
    from sc2cli.completion.tokenizer import Tokenizer

    model = sc2cli.load_model(TINY_DIR, dtype="fp32", device="cpu", attn="sdpa")
    return Engine(model, Tokenizer.from_folder(TINY_DIR), name="tiny", default_budget=2048, cache_slots=2)


CODE = """def area(shape):
    if shape.kind == "circle":
        return 3.14159 * shape.radius * shape.radius
    if shape.kind == "square":
        return shape.side * shape.side
    if shape.kind == "rectangle":
        return shape.width * shape.height
    raise ValueError(shape.kind)
"""


def requests():
    """A line deleted and completed back, the cursor inside a repeated pattern, and text with no copy."""
    from sc2cli.completion.request import CompletionRequest

    cut = CODE.index('    if shape.kind == "square"')
    end = CODE.index("\n", cut) + 1
    yield CompletionRequest(CODE[:cut], CODE[end:], path="shapes.py", max_tokens=24, raw=True)
    yield CompletionRequest(CODE[: cut + 12], CODE[cut + 12 :], path="shapes.py", max_tokens=24)
    yield CompletionRequest("# notes on the weather\nx = ", "", path="w.py", max_tokens=16)


def test_the_engine_streams_the_same_completion_and_reports_the_drafts(engine):
    import dataclasses

    drafted = 0
    for request in requests():
        plain = list(engine.stream(dataclasses.replace(request, speculate=False)))[-1]
        fast = list(engine.stream(request))[-1]
        assert (fast.text, fast.tokens, fast.stop_reason) == (plain.text, plain.tokens, plain.stop_reason)
        torch.testing.assert_close(fast.logprobs, plain.logprobs, atol=1e-5, rtol=0)
        assert plain.timings.drafted_tokens == 0
        t = fast.timings
        assert 0 <= t.accepted_tokens <= t.drafted_tokens
        assert t.acceptance_rate == (
            round(t.accepted_tokens / t.drafted_tokens, 3) if t.drafted_tokens else 0
        )
        drafted += t.drafted_tokens
    assert drafted > 0


def test_the_warm_caches_hold_the_kept_tokens_for_the_next_request(engine):
    import dataclasses

    from sc2cli.completion.engine import Engine

    cold = Engine(engine.model, engine.tokenizer, name="tiny", default_budget=2048)
    for request in [*requests(), *requests()]:
        edited = dataclasses.replace(request, prefix=request.prefix + "    ")
        for r in (request, edited):
            warm = list(engine.stream(r))[-1]
            assert warm.tokens == list(cold.stream(r))[-1].tokens
        for cache in engine._caches:
            assert cache.kv.length == len(cache.tokens)


def test_a_warm_engine_drafts_from_its_earlier_completions_in_the_same_repository(engine):
    import dataclasses

    from sc2cli.completion.engine import Engine
    from sc2cli.completion.request import CompletionRequest

    warm = Engine(engine.model, engine.tokenizer, name="tiny", default_budget=2048, cache_slots=2)
    cold = Engine(engine.model, engine.tokenizer, name="tiny", default_budget=2048)  # the CLI's: no recall
    request = CompletionRequest(
        "# notes on the weather\nx = ", "", path="w.py", repo="a", max_tokens=24, raw=True
    )
    first, again = (list(warm.stream(request))[-1] for _ in range(2))
    alone = [list(cold.stream(request))[-1] for _ in range(2)]
    assert first.tokens == again.tokens == alone[0].tokens and len(first.tokens) > 8
    assert alone[0].timings.drafted_tokens == alone[1].timings.drafted_tokens  # nothing remembered
    t = again.timings
    assert t.accepted_tokens == t.drafted_tokens >= len(first.tokens) // 2  # it said this before
    assert t.accepted_tokens > alone[1].timings.accepted_tokens
    elsewhere = dataclasses.replace(request, repo="b")
    drafted = [list(e.stream(elsewhere))[-1].timings.drafted_tokens for e in (warm, cold)]
    assert drafted[0] == drafted[1]  # another repository's completions are not drafted from
