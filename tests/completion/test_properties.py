"""Property-based tests of the pure core: the cursor, the prompt and its budget, post-processing. Any
input gives a result or one of our own errors, prompts never hold control tokens that came from the
user's text, budgets hold, and streamed post-processing never takes back what it showed."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import sc2cli
from sc2cli.completion.cursor import cursor_offset, parse_location
from sc2cli.completion.postprocess import Finisher, rules_for
from sc2cli.completion.prompt import Document, FimTask, build_prompt, encode_pieces, heal
from sc2cli.completion.tokenizer import Tokenizer
from sc2cli.errors import InputError

TOKENIZER = Tokenizer.from_folder(Path(sc2cli.__file__).parent / "tiny")
CONTROL = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>", "<file_sep>", "<repo_name>"]
CODE = st.lists(
    st.one_of(
        st.sampled_from(["\n", "    ", "def f(x):", "return x", " ", "é", "\r\n", "#", *CONTROL]),
        st.text(max_size=8),
    ),
    max_size=40,
).map("".join)
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(st.text(max_size=30))
def test_a_location_parses_or_is_refused(spec):
    try:
        where = parse_location(spec)
    except InputError:
        return
    assert where.line >= 1 and (where.column is None or where.column >= 1)


@FAST
@given(CODE, st.integers(-3, 50), st.one_of(st.none(), st.integers(-3, 60)), st.booleans())
def test_a_cursor_is_an_offset_in_the_text_or_is_refused(text, line, column, byte_column):
    try:
        offset = cursor_offset(text, line, column, byte_column=byte_column)
    except InputError:
        return
    assert 0 <= offset <= len(text) and line >= 1


def _text_ids(prompt) -> list[int]:
    return [i for p in prompt.pieces if not p.control for i in TOKENIZER.encode(p.text)]


@FAST
@given(
    CODE, CODE, st.one_of(st.none(), st.integers(1, 200)), st.sampled_from([None, "a/b.py"]), st.booleans()
)
def test_prompts_hold_the_budget_and_no_control_token_from_text(prefix, suffix, budget, path, context):
    docs = (Document("c.py", prefix + suffix),) if context else ()
    task = FimTask(prefix, suffix, path, "repo" if path else None, docs)
    try:
        prompt = build_prompt(task, TOKENIZER, budget)
    except InputError:
        return
    specials = set(TOKENIZER.special.values())
    assert budget is None or len(prompt.ids) <= budget
    assert list(prompt.ids) == encode_pieces(prompt.pieces, TOKENIZER)
    assert not specials & set(_text_ids(prompt))  # "<fim_prefix>" typed by the user stays text
    assert sum(p.control for p in prompt.pieces) == sum(i in specials for i in prompt.ids)
    assert prefix.endswith(prompt.task.prefix) and suffix.startswith(prompt.task.suffix)
    healed = heal(prompt, TOKENIZER)
    assert len(healed.ids) <= len(prompt.ids) and not specials & set(_text_ids(healed))


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def _run(rules, pieces: list[str]) -> tuple[str, str]:
    finisher = Finisher(rules)
    shown = ""
    for piece in pieces:
        shown += finisher.feed(piece)
        assert finisher.final.startswith(shown) or finisher.done
        if finisher.done:
            break
    if not finisher.done:
        shown += finisher.finish()
    return shown, finisher.final


STOPS = st.lists(st.text(max_size=4), max_size=2)


@settings(max_examples=150, deadline=None)
@given(CODE, CODE, CODE, st.lists(st.integers(0, 400), max_size=12), STOPS)
def test_post_processing_shows_a_prefix_of_the_final_text(prefix, suffix, text, cuts, stop):
    rules = rules_for(prefix, suffix, stop)
    for pieces in (_chunks(text, cuts), [text], list(text)):
        shown, final = _run(rules, pieces)
        assert shown == final


@settings(max_examples=150, deadline=None)
@given(CODE, CODE, CODE, st.lists(st.integers(0, 400), max_size=12), STOPS)
def test_post_processing_ends_the_same_whatever_the_chunks(prefix, suffix, text, cuts, stop):
    rules = rules_for(prefix, suffix, stop)
    assert _run(rules, _chunks(text, cuts)) == _run(rules, [text]) == _run(rules, list(text))


def test_a_stop_string_ends_the_same_whatever_the_chunks():
    """Found by the property above: a newline shown before a stop string arrived could not be taken back,
    while the whole text had it trimmed with the stop."""
    rules = rules_for("", "", ["00"])
    assert _run(rules, ["\n00"]) == _run(rules, list("\n00"))
