"""The sliding-window rule in one place: every backend, every mix of cached and new keys."""

from __future__ import annotations

import pytest
import torch

from sc2cli.errors import InputError
from sc2cli.model.attention import (
    FEW_ROWS,
    attention_function,
    eager_attention,
    first_visible_key,
    grouped_attention,
    sdpa_attention,
    select_backend,
    visibility,
)
from sc2cli.model.attention_probe import plan_single_query
from sc2cli.model.config import ModelConfig


def rule(i: int, j: int, window: int | None) -> bool:
    """The reference's definition: query i sees key j iff i - W < j <= i."""
    return j <= i and (window is None or j > i - window)


@pytest.mark.parametrize("window", [None, 1, 3, 8])
@pytest.mark.parametrize(("q_start", "length"), [(0, 1), (0, 12), (5, 1), (5, 7), (20, 1), (20, 4)])
def test_visibility_is_the_rule(window, q_start, length):
    k_start = first_visible_key(q_start, window)
    vis = visibility(q_start, length, k_start, window, torch.device("cpu"))
    keys = range(k_start, q_start + length)
    expected = torch.tensor([[rule(i, j, window) for j in keys] for i in range(q_start, q_start + length)])
    if vis.mask is not None:
        got = vis.mask
    elif vis.causal:
        got = torch.ones(length, len(keys), dtype=torch.bool).tril()
    else:
        got = torch.ones(length, len(keys), dtype=torch.bool)
    assert torch.equal(got, expected)
    # and no key the caller leaves out could have been visible
    assert all(not rule(i, j, window) for i in range(q_start, q_start + length) for j in range(k_start))


def attention_inputs(groups: int, q_start: int, length: int, window: int | None, seed: int):
    """q (2, 2*groups, T, 16), k and v over the keys the call can see, and their Visibility."""
    torch.manual_seed(seed)
    k_start = first_visible_key(q_start, window)
    s = q_start + length - k_start
    q = torch.randn(2, 2 * groups, length, 16)
    k, v = torch.randn(2, 2, s, 16), torch.randn(2, 2, s, 16)
    return q, k, v, visibility(q_start, length, k_start, window, q.device)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize(("q_start", "length", "window"), [(0, 10, None), (0, 10, 4), (6, 5, 4), (9, 1, 4)])
def test_sdpa_equals_eager(groups, q_start, length, window):
    q, k, v, vis = attention_inputs(groups, q_start, length, window, seed=0)
    torch.testing.assert_close(sdpa_attention(q, k, v, vis), eager_attention(q, k, v, vis), atol=1e-5, rtol=0)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize(
    ("q_start", "length", "window"), [(0, 10, None), (0, 10, 4), (6, 5, 4), (9, 1, 4), (30, 1, None)]
)
def test_grouped_equals_sdpa(groups, q_start, length, window):
    """The grouped fp32 path gives the fused kernel's numbers, for one query and (masked) many."""
    q, k, v, vis = attention_inputs(groups, q_start, length, window, seed=1)
    torch.testing.assert_close(
        grouped_attention(q, k, v, vis), sdpa_attention(q, k, v, vis), atol=1e-5, rtol=0
    )
    # in bf16 it accumulates in fp32 as the fused kernel does: within one bf16 rounding of it
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fused, grouped = sdpa_attention(q, k, v, vis).float(), grouped_attention(q, k, v, vis)
    assert grouped.dtype == torch.bfloat16
    torch.testing.assert_close(grouped.float(), fused, atol=2e-2, rtol=1e-2)


def test_a_token_and_its_drafts_go_one_row_at_a_time_and_prompts_through_the_backend(monkeypatch):
    calls = []
    fused, grouped = (lambda q, *a, name=name: calls.append((name, q.shape[2])) or q for name in ("f", "g"))
    monkeypatch.setattr("sc2cli.model.attention._FUNCTIONS", {"sdpa": fused})
    monkeypatch.setattr("sc2cli.model.attention.grouped_attention", grouped)
    for single_query in ("grouped", "fused"):
        attend = attention_function("sdpa", single_query)
        for rows in (1, 3, FEW_ROWS + 1):
            vis = visibility(40 - rows, rows, 0, None, torch.device("cpu"))
            attend(torch.zeros(1, 2, rows, 4), torch.zeros(1, 2, 40, 4), torch.zeros(1, 2, 40, 4), vis)
    grouped_calls = [("g", 1)] * 4 + [("f", FEW_ROWS + 1)]  # 1 row, then 3 one by one, then a prompt
    assert calls == grouped_calls + [("f", 1)] * 4 + [("f", FEW_ROWS + 1)]


@pytest.mark.parametrize(
    ("backend", "single_query"), [("sdpa", "fused"), ("sdpa", "grouped"), ("eager", "fused")]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(
    ("q_start", "length", "window"), [(30, 6, None), (30, 6, 8), (0, 5, None), (3, FEW_ROWS, 4)]
)
def test_each_of_a_few_rows_is_bit_for_bit_that_token_alone(backend, single_query, dtype, q_start, length,
                                                            window):  # fmt: skip
    """A token verified with its drafts gets exactly what it gets alone, so drafts change no greedy token."""
    q, k, v, vis = attention_inputs(3, q_start, length, window, seed=2)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    attend = attention_function(backend, single_query)
    together = attend(q, k, v, vis)
    for i in range(length):
        position = q_start + i
        first = first_visible_key(position, window)
        keys = slice(first - vis.k_start, position + 1 - vis.k_start)
        alone = attend(q[:, :, i : i + 1], k[:, :, keys], v[:, :, keys],
                       visibility(position, 1, first, window, q.device))  # fmt: skip
        assert torch.equal(together[:, :, i : i + 1], alone)
    reference = eager_attention(q.float(), k.float(), v.float(), vis)
    torch.testing.assert_close(together.float(), reference, atol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                               rtol=0)  # fmt: skip


def test_single_query_plan_is_forced_measured_or_not_offered(monkeypatch):
    config = ModelConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         num_hidden_layers=1, vocab_size=32)  # fmt: skip
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    assert plan_single_query(config, "sdpa", cpu, bf16, "attention=fused") == "fused"
    assert plan_single_query(config, "sdpa", cpu, bf16, "attention=grouped") == "grouped"
    assert plan_single_query(config, "eager", cpu, bf16, "attention=grouped") == "fused"  # no choice there
    assert plan_single_query(config, "sdpa", torch.device("meta"), bf16) == "fused"  # only CPUs choose
    assert plan_single_query(config, "sdpa", cpu, bf16, measure=False) == "fused"  # tiny models: no probe
    measured = plan_single_query(config, "sdpa", cpu, bf16)  # timed here, remembered in the cache folder
    assert measured in ("fused", "grouped")
    monkeypatch.setattr("sc2cli.model.attention_probe._candidates", lambda *a: pytest.fail("re-measured"))
    assert plan_single_query(config, "sdpa", cpu, bf16) == measured


def test_auto_picks_sdpa_on_cpu():
    assert select_backend("auto", torch.device("cpu"), torch.float32) == "sdpa"
    assert select_backend("eager", torch.device("cpu"), torch.bfloat16) == "eager"


def test_flash_where_it_cannot_run_is_an_error_not_a_fallback():
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        select_backend("flash", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(InputError, match="unknown attention backend"):
        select_backend("fast", torch.device("cpu"), torch.float32)


def test_flash_window_argument():
    vis = visibility(10, 1, first_visible_key(10, 4), 4, torch.device("cpu"))
    assert vis.flash_window == (3, 0)  # flash-attn's (left, right): keys i-3..i, the same W=4 keys
    assert visibility(0, 3, 0, None, torch.device("cpu")).flash_window == (-1, -1)
