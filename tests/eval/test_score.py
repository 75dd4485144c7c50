"""The scorer on known pairs, and the summary of a configuration's samples."""

from __future__ import annotations

import pytest

from sc2cli.eval.score import edit_similarity, levenshtein, score, summarize


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("flaw", "lawn", 2),
     ("return x", "return x", 0), ("ab", "ba", 2), ("x = f(a)", "x = f(b)", 1)],
)  # fmt: skip
def test_levenshtein_known_values(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_edit_similarity_is_normalised_by_the_longer_text():
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    assert edit_similarity("abcd", "abcd") == 1.0


def test_exact_match_ignores_trailing_whitespace_only():
    assert score("return x", "return x  \n").exact
    assert not score("return x", " return x").exact
    assert not score("return x", "return y").exact


def test_first_line_match_lets_the_completion_run_on():
    s = score("total = a + b", "total = a + b\n    return total")
    assert s.first_line and not s.exact
    assert s.edit_similarity == pytest.approx(
        1 - len("\n    return total") / len("total = a + b\n    return total")
    )
    assert not score("total = a + b", "").first_line


def test_summary_shares_means_and_medians():
    scores = [score("a = 1", "a = 1"), score("a = 1", "a = 2"), score("b", "b\nc")]
    summary = summarize(scores, [10.0, 30.0, 20.0], [100.0, 300.0, 200.0])
    assert summary.n == 3
    assert summary.exact == pytest.approx(1 / 3)
    assert summary.first_line == pytest.approx(2 / 3)
    assert summary.edit_similarity == pytest.approx((1 + 0.8 + 1 / 3) / 3)
    assert (summary.ttft_p50_ms, summary.total_p50_ms) == (20.0, 200.0)
    assert summarize([], [], []).n == 0
