"""The tiny model's training recipe (sc2cli/train_tiny.py): the two data mixes, the order rows are
trained in, and the extra weight on each middle's first token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sc2cli.dev import tinydata, train_tiny

FIM_MIDDLE = tinydata.FIM_MIDDLE
HELDOUT = Path(__file__).parents[1] / "data" / "heldout"


def test_training_loss_is_the_mean_without_a_weight() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    inputs = torch.tensor([[7, FIM_MIDDLE, 8, 9, 10], [4, 5, 6, FIM_MIDDLE, 8]])
    targets = torch.randint(0, 11, (2, 5))
    plain = F.cross_entropy(logits.view(-1, 11), targets.view(-1))
    torch.testing.assert_close(train_tiny.training_loss(logits, inputs, targets), plain)
    torch.testing.assert_close(train_tiny.training_loss(logits, inputs, targets, 0.0), plain)


def test_training_loss_adds_the_weighted_first_middle_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    inputs = torch.tensor([[7, FIM_MIDDLE, 8, 9, 10], [4, 5, 6, FIM_MIDDLE, 8]])
    targets = torch.randint(0, 11, (2, 5))
    each = F.cross_entropy(logits.view(-1, 11), targets.view(-1), reduction="none").view(2, 5)
    first = (each[0, 1] + each[1, 3]) / 2  # the targets at the two <fim_middle> inputs
    expected = each.mean() + 3.0 * first
    torch.testing.assert_close(train_tiny.training_loss(logits, inputs, targets, 3.0), expected)


def test_training_loss_without_a_middle_in_the_batch_is_the_mean() -> None:
    logits = torch.randn(1, 4, 11)
    inputs = torch.tensor([[7, 8, 9, 10]])
    targets = torch.tensor([[8, 9, 10, 1]])
    loss = train_tiny.training_loss(logits, inputs, targets, 5.0)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 11), targets.view(-1)))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("early", [0, 3, 10])
def test_row_order_trains_the_late_rows_last(early: int) -> None:
    order = train_tiny.row_order(10, early, seed=1)
    assert sorted(order.tolist()) == list(range(10))
    assert set(order[:early].tolist()) == set(range(early))
    assert torch.equal(order, train_tiny.row_order(10, early, seed=1))  # seeded


def test_the_late_steps_come_from_the_fim_heavy_mix(monkeypatch) -> None:
    """Early mix without FIM, late mix all FIM: `<fim_middle>` appears only in the late steps' tokens.
    (The held-out files stand in for the machine's sources, to keep this fast.)"""
    files = train_tiny.heldout_files(HELDOUT)
    sources = {"cpython": files[:3], "somepackage": files[3:]}
    monkeypatch.setattr(tinydata, "collect_sources", lambda exclude: {k: list(v) for k, v in sources.items()})
    args = train_tiny.parse_args(
        ["--out", "unused", "--steps", "3", "--late-steps", "1", "--batch-size", "2", "--seq-len", "256",
         "--fim-rate", "0", "--late-fim-rate", "1", "--vocab-size", "400", "--repo-chars", "4000"]
    )  # fmt: skip
    tokenizer, stream = train_tiny.training_tokens(args, frozenset())
    assert stream.shape == (3 * 2 * 256 + 1,)
    assert tokenizer.get_vocab_size() == 400
    early, late = stream[: 2 * 2 * 256], stream[2 * 2 * 256 :]
    assert not (early == FIM_MIDDLE).any()
    assert (late == FIM_MIDDLE).sum() >= 2
    assert (late == tinydata.FIM_PREFIX).sum() >= 2
