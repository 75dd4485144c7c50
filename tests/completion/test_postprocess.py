"""Where completions end: before/after tables, and the streaming guarantee (nothing shown is taken back)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sc2cli.completion.postprocess import Finisher, rules_for

# (prefix, suffix, generated text, expected completion, reason: "postprocess" | "stop" | None = the model stopped)
CASES = {
    "single line: closing bracket already in the suffix": (
        "print(",
        ")\n",
        '"hi")\nx = 1',
        '"hi"',
        "postprocess",
    ),
    "single line: a balanced call keeps its bracket": ("x = foo(", ")\n", "bar())", "bar()", None),
    "single line: stop at the newline": ("x = ", " # answer\n", "42\ny = 3", "42", "postprocess"),
    "single line: colon already in the suffix": ("if x", ":\n    pass\n", " > 0:", " > 0", None),
    "block: a line indented less than the cursor's ends it": (
        "def f(x):\n    ",
        "\n",
        "y = x * 2\n    return y\nprint(f(2))",
        "y = x * 2\n    return y",
        "postprocess",
    ),
    "block: a blank line then a dedent ends it": (
        "def f(x):",
        "\n",
        "\n    return x\n\ndef g():\n    pass",
        "\n    return x",
        "postprocess",
    ),
    "block: a dedent without a blank line stays inside a deeper block": (
        "def f(x):\n    if x:",
        "\n",
        "\n        return 1\n    return 2\n\nprint(1)",
        "\n        return 1\n    return 2",
        "postprocess",
    ),
    "trailing blank lines are dropped": ("x = 1\n", "", "y = 2\n\n   \n", "y = 2", None),
    "a repeat of the next line is dropped": (
        "def f():\n    ",
        "\n    return result\n",
        "result = compute()\n    return result",
        "result = compute()",
        None,
    ),
    "a closing brace ends the block": (
        "function f() {\n  ",
        "\n}\n",
        "return 1;\n}",
        "return 1;",
        "postprocess",
    ),
    "text that only starts like the next line stays": (
        "def f():\n    ",
        "\n    return result\n",
        "r = 1\n    return",
        "r = 1\n    return",
        None,
    ),
    "stop string": ("", "", "a = 1 # END of it", "a = 1 # ", "stop"),
    "stop string inside the first line wins over the block rule": (
        "def f():\n    ",
        "",
        "x = 1\ny",
        "x = 1",
        "stop",
    ),
    "whitespace-only completion is empty": ("x = 1\n", "", "\n\n  ", "", None),
    "tabs count as indentation": ("if x:\n\t", "\n", "a()\n\tb()\nc()", "a()\n\tb()", "postprocess"),
    "cursor on a blank line inside a block": (
        "def f():\n    x = 1\n    ",
        "\n",
        "return x\n\nclass A:",
        "return x",
        "postprocess",
    ),
    "statement: a return finished mid-line ends at its line": (
        "def mean(v):\n    return sum(v) / ",
        "\n\n\ndef g():\n    pass\n",
        "len(v)\n\n\ndef variance(v):\n    m = mean(v)",
        "len(v)",
        "postprocess",
    ),
    "statement: an unclosed bracket lets it go on": (
        "x = foo(",
        "\n",
        "1,\n    2)\ny = 3",
        "1,\n    2)\ny = 3",
        None,
    ),
    "statement: a line that opens a block goes on": (
        "    if x",
        "\n",
        ":\n        y()\n    z()",
        ":\n        y()\n    z()",
        None,
    ),
    "statement: after a whole line the next lines come": (
        "x = 1",
        "\n",
        "\ny = 2\nz = 3",
        "\ny = 2\nz = 3",
        None,
    ),
}
STOPS = {"stop string": ["END"], "stop string inside the first line wins over the block rule": ["\ny"]}


def run(prefix: str, suffix: str, pieces: list[str], stop=(), raw=False) -> tuple[str, str | None, str]:
    finisher = Finisher(rules_for(prefix, suffix, stop, raw))
    shown = ""
    for piece in pieces:
        out = finisher.feed(piece)
        shown += out
        assert finisher.final == shown
        if finisher.done:
            break
    shown += finisher.finish()
    assert shown == finisher.final
    return shown, finisher.reason, finisher.text


@pytest.mark.parametrize("name", sorted(CASES))
def test_table(name):
    prefix, suffix, generated, expected, reason = CASES[name]
    assert run(prefix, suffix, [generated], STOPS.get(name, ()))[:2] == (expected, reason)


@pytest.mark.parametrize("name", sorted(CASES))
def test_streaming_one_character_at_a_time_gives_the_same_result(name):
    prefix, suffix, generated, expected, reason = CASES[name]
    shown, got_reason, consumed = run(prefix, suffix, list(generated), STOPS.get(name, ()))
    assert (shown, got_reason) == (expected, reason)
    if reason:  # decided as soon as possible: no character past the deciding one was needed
        assert len(consumed) < len(generated) or consumed == generated


def test_raw_keeps_everything_but_stop_strings():
    assert run("def f(x):\n    ", "\n", ["y\nprint(1)\n\n"], raw=True)[:2] == ("y\nprint(1)\n\n", None)
    assert run("x", "", ["a;b;c"], stop=[";"], raw=True)[:2] == ("a", "stop")


def test_rules_from_the_cursor():
    r = rules_for("def f():\n    x = g(", ")  # call\n\n    return x\n")
    assert r.single_line and r.rest_of_line == ")  # call" and r.indent == 4
    assert r.suffix_lines == ("return x",)
    r = rules_for("class A:\n    def m(self):\n        ", "   \n        pass\n")
    assert not r.single_line and r.indent == 8 and not r.statement
    assert rules_for("def f(a, b):\n    return a + ", "\n").statement == "    return a + "


code_text = st.lists(st.sampled_from([*"ab(){}:; \t\n#x=", "\n    ", "return"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(["", "x = f(", "def f():\n    ", "if a:\n\t", "y = [1, "]),
    suffix=st.sampled_from(["", ")\n", "\n    return x\n", "]\n}\n", "\n"]),
    generated=code_text,
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    stop=st.sampled_from([(), ("x=",), ("\n\n",)]),
)
@example(prefix="", suffix=")\n", generated="\n\n    ", cuts=[1], stop=("\n\n",))  # a stop at the line's end
def test_any_split_of_the_stream_shows_the_same_completion(prefix, suffix, generated, cuts, stop):
    """Whatever the token boundaries, the text shown while streaming is exactly the final completion."""
    bounds = sorted({0, len(generated), *(c for c in cuts if c <= len(generated))})
    pieces = [generated[a:b] for a, b in itertools.pairwise(bounds)]
    whole = run(prefix, suffix, [generated], stop)
    split = run(prefix, suffix, pieces, stop)
    assert split[:2] == whole[:2]
