"""Spans: lines added in recent commits, as the commit left the file; random lines of tracked files."""

from __future__ import annotations

from sc2cli.eval.spans import added_lines, history_spans, random_spans, span_at

from .conftest import ADDED, MAIN, SHAPES


def test_a_span_hides_the_line_after_its_indentation():
    span = span_at("a.py", "def f():\n    return 1\n", 2)
    assert (span.prefix, span.expected, span.suffix) == ("def f():\n    ", "return 1", "\n")
    assert span_at("a.py", "x\n\n  )\n", 3) is None  # too short to say anything
    assert span_at("a.py", "x\n", 9) is None


def test_added_lines_follow_the_hunks():
    diff = (
        "commit:abc\n\ndiff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -3,0 +4,2 @@ def f():\n"
        "+    total = 1\n+    return total\n@@ -9 +11 @@\n-old line\n+++ counter\n"
        "commit:def\n--- /dev/null\n+++ b/y.py\n@@ -0,0 +1 @@\n+print('y')\n"
    )
    assert added_lines(diff) == [
        ("abc", "x.py", 4),
        ("abc", "x.py", 5),
        ("abc", "x.py", 11),
        ("def", "y.py", 1),
    ]


def test_history_spans_are_lines_added_in_commits_of_code_files(history):
    spans = history_spans(history, [], 100, seed=0, commits=10)
    expected = {s.expected for s in spans}
    added = {line.strip() for line in (SHAPES + ADDED + MAIN).splitlines() if len(line.strip()) >= 4}
    added.add("return rect.area() + 0")
    assert expected <= added
    assert "return 2 * (self.width + self.height)" in expected and "return rect.area() + 0" in expected
    assert all(s.path != "README.md" for s in spans)  # prose is not code
    perimeter = next(s for s in spans if s.expected == "def perimeter(self):")
    assert perimeter.prefix + perimeter.expected + perimeter.suffix == SHAPES + ADDED  # the file as committed
    assert history_spans(history, [], 100, seed=0, commits=1) == [
        s for s in spans if s.expected == "return rect.area() + 0"
    ]  # only the last commit
    assert {s.path for s in history_spans(history, ["shapes.py"], 100, seed=0, commits=10)} == {"shapes.py"}


def test_sampling_is_seeded(history):
    one = history_spans(history, [], 3, seed=1, commits=10)
    assert one == history_spans(history, [], 3, seed=1, commits=10) and len(one) == 3
    assert random_spans(history, [], 4, seed=5) == random_spans(history, [], 4, seed=5)
    lines = {(s.path, s.line) for s in random_spans(history, [], 50, seed=2)}
    assert len(lines) == len([x for x in (SHAPES + ADDED + MAIN).splitlines() if len(x.strip()) >= 4])
