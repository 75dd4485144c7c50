"""Cursor parsing and the FIM prompt: golden layouts, control tokens by id only, token-exact budgets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sc2cli.completion.cursor import Location, cursor_offset, line_count, parse_location
from sc2cli.completion.prompt import (
    SNAP_LINES,
    SUFFIX_SHARE,
    Document,
    FimTask,
    build_prompt,
    heal,
    layout,
    render,
)
from sc2cli.completion.tokenizer import Tokenizer
from sc2cli.errors import InputError

from ..fixtures import require_tokenizer_fixture


@pytest.fixture(scope="module")
def real():
    return Tokenizer.from_folder(require_tokenizer_fixture())


# ------------------------------------------------------------------------------------------------ cursor


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("app.py:42", Location("app.py", 42)),
        ("app.py:42:7", Location("app.py", 42, 7)),
        ("-:3:1", Location("-", 3, 1)),
        ("C:\\src\\a b.py:3:2", Location("C:\\src\\a b.py", 3, 2)),
        ("weird:name.py:10", Location("weird:name.py", 10)),
    ],
)
def test_parse_location(spec, expected):
    assert parse_location(spec) == expected


@pytest.mark.parametrize(
    "spec", ["app.py", "app.py:", "app.py:x", "app.py:0", "app.py:3:0", ":4", "app.py:-1"]
)
def test_malformed_locations(spec):
    with pytest.raises(InputError):
        parse_location(spec)


TEXT = "a = 1\n\tb = 'é✓'\r\nc\n"


@pytest.mark.parametrize(
    ("line", "col", "byte_col", "before"),
    [
        (1, None, False, "a = 1"),
        (1, 1, False, ""),
        (2, 2, False, "a = 1\n\t"),  # a tab is one character
        (2, None, False, "a = 1\n\tb = 'é✓'"),  # end of the line's text, before the CRLF
        (2, 8, False, "a = 1\n\tb = 'é"),
        (2, 9, True, "a = 1\n\tb = 'é"),  # byte 9 of the line: after "\tb = '" (6 bytes) and é (2 bytes)
        (2, 12, True, "a = 1\n\tb = 'é✓"),  # ✓ is 3 bytes
        (3, 2, False, "a = 1\n\tb = 'é✓'\r\nc"),
        (4, None, False, TEXT),  # after the final newline: the end of the file
        (4, 1, False, TEXT),
    ],
)
def test_cursor_offsets(line, col, byte_col, before):
    assert TEXT[: cursor_offset(TEXT, line, col, byte_column=byte_col)] == before


@pytest.mark.parametrize(
    ("line", "col", "byte_col", "message"),
    [
        (5, None, False, r"line 5 is past the end of f.py \(3 lines\)"),
        (1, 7, False, r"column 7 is past the end of line 1 of f.py \(5 characters\)"),
        (2, 8, True, "inside a multi-byte character"),
        (2, 15, True, r"byte column 15 is past the end of line 2 of f.py \(12 bytes\)"),
    ],
)
def test_cursor_errors_say_the_files_size(line, col, byte_col, message):
    with pytest.raises(InputError, match=message):
        cursor_offset(TEXT, line, col, byte_column=byte_col, name="f.py")


def test_empty_file_and_edges():
    assert cursor_offset("", 1, None) == 0 and cursor_offset("", 1, 1) == 0
    assert line_count("") == 0 and line_count("x") == 1 and line_count("x\n") == 1 and line_count("x\ny") == 2
    assert cursor_offset("abc", 1, 4) == 3


# ------------------------------------------------------------------------------------------------ layout


def test_repository_layout_golden():
    task = FimTask(
        "def f():\n    ", "\n", path="src/app.py", repo="proj",
        context=(Document("src/util.py", "X = 1\n"), Document("README.md", "hi\n")),
    )  # fmt: skip
    assert render(layout(task)) == (
        "<repo_name>proj<file_sep>src/util.py\nX = 1\n<file_sep>README.md\nhi\n"
        "<file_sep><fim_prefix>src/app.py\ndef f():\n    <fim_suffix>\n<fim_middle>"
    )


def test_no_metadata_layout_golden():
    task = FimTask(
        "a", "b", path="src/app.py", repo="proj", context=(Document("u.py", "X\n"),), metadata=False
    )
    assert render(layout(task)) == "<file_sep>X\n<file_sep><fim_prefix>a<fim_suffix>b<fim_middle>"


def test_plain_fim_without_path_or_context():
    assert render(layout(FimTask("a", "b", repo="proj"))) == "<fim_prefix>a<fim_suffix>b<fim_middle>"


def test_control_tokens_are_ids_and_text_cannot_inject_them(real):
    nasty = "s = '<fim_prefix><|endoftext|><file_sep>'\n"
    prompt = build_prompt(FimTask(nasty, "", path="a.py", repo="r"), real)
    assert prompt.ids[:1] == (5,) and prompt.ids[-1] == 2  # <repo_name> ... <fim_middle>
    control = [i for i in prompt.ids if i < 38]
    assert control == [5, 6, 1, 3, 2]  # repo_name, file_sep, fim_prefix, fim_suffix, fim_middle: nothing else
    assert real.decode(prompt.ids) == prompt.text


def test_real_token_ids_golden(real):
    prompt = build_prompt(FimTask("def add(a, b):\n    return ", "\n", path="m.py", repo="r"), real)
    expected = [
        5,
        *real.encode("r"),
        6,
        1,
        *real.encode("m.py\ndef add(a, b):\n    return "),
        3,
        *real.encode("\n"),
        2,
    ]
    assert list(prompt.ids) == expected
    assert real.encode("    return ") == real.encode("    return ")  # deterministic
    assert len(real.encode("12345")) == 5  # digits are split one by one, as in StarCoder2


def test_empty_prompt_is_refused():
    with pytest.raises(InputError, match="empty prompt"):
        build_prompt(FimTask("", ""), None)


# ------------------------------------------------------------------------------------------------ budget


def numbered(n: int, start: int = 0) -> str:
    return "".join(f"value_{i} = compute({i}, 'text')\n" for i in range(start, start + n))


@pytest.mark.parametrize("budget", [60, 150, 400, 1000])
def test_prompt_never_exceeds_the_budget(real, budget):
    task = FimTask(
        numbered(300), numbered(100, 300), path="big.py", repo="r", context=(Document("c.py", numbered(80)),)
    )
    prompt = build_prompt(task, real, budget)
    assert len(prompt.ids) <= budget
    assert prompt.truncated.prefix > 0 and prompt.truncated.context > 0
    assert task.prefix.endswith(prompt.task.prefix)  # lines farthest from the cursor went first
    assert task.suffix.startswith(prompt.task.suffix)


def test_prefix_keeps_most_of_the_room_and_context_fills_what_remains(real):
    task = FimTask(
        numbered(40), numbered(400, 40), path="f.py", repo="r", context=(Document("c.py", numbered(400)),)
    )
    prompt = build_prompt(task, real, 1000)
    assert prompt.task.prefix == task.prefix  # the whole prefix fits: it is kept whole
    suffix_tokens = len(real.encode(prompt.task.suffix))
    assert suffix_tokens < 1000 - len(real.encode(task.prefix))
    small = FimTask(
        numbered(5), numbered(5, 5), path="f.py", repo="r", context=(Document("c.py", numbered(400)),)
    )
    assert build_prompt(small, real, 1000).task.context[0].text  # room left over goes to the context


def test_trimming_snaps_so_an_edit_near_the_cursor_keeps_the_start(real):
    """The cached start of the prompt survives typing: the prefix is cut at coarse line boundaries."""
    text = numbered(400)
    cursor = len(numbered(350))
    before = FimTask(text[:cursor], text[cursor:], path="f.py", repo="r")
    edited = text[:cursor] + "new_line = 1\n"
    after = FimTask(edited, text[cursor:], path="f.py", repo="r")
    a, b = build_prompt(before, real, 1500), build_prompt(after, real, 1500)
    first_kept = (len(text[:cursor].splitlines()) - len(a.task.prefix.splitlines())) % SNAP_LINES
    assert first_kept == 0
    common = next((i for i, (x, y) in enumerate(zip(a.ids, b.ids, strict=False)) if x != y), 0)
    assert common > len(a.ids) * 0.7


def test_suffix_is_capped_even_when_the_whole_file_fits(real):
    """What follows the cursor is recomputed after every edit above it, so it stays short: an edit costs
    the edited line plus at most 1/SUFFIX_SHARE of the room, however long the rest of the file is."""
    text = numbered(120)
    cursor = len(numbered(60))
    before = FimTask(text[:cursor], text[cursor:], path="f.py", repo="r")
    budget = 2000
    assert len(build_prompt(before, real, None).ids) < budget  # the whole file would fit
    a = build_prompt(before, real, budget)
    assert a.task.prefix == before.prefix and before.suffix.startswith(a.task.suffix)
    assert 0 < len(real.encode(a.task.suffix)) <= budget // SUFFIX_SHARE
    assert a.truncated.suffix > 0 and a.truncated.prefix == 0
    b = build_prompt(
        FimTask(before.prefix + "new_line = 1\n", before.suffix, path="f.py", repo="r"), real, budget
    )
    common = next(i for i, (x, y) in enumerate(zip(a.ids, b.ids, strict=False)) if x != y)
    assert len(b.ids) - common <= len(real.encode("new_line = 1\n")) + budget // SUFFIX_SHARE + 3
    short = FimTask(text[:cursor], "    return x\n", path="f.py", repo="r")
    assert build_prompt(short, real, budget).task == short  # a short suffix is kept whole


def test_a_sliding_window_caps_the_suffix(real):
    """The first middle token must see the end of the prefix across the suffix: a model with a short
    window gets a suffix of at most a quarter of it, with or without a budget."""
    from sc2cli.completion.request import CompletionRequest, prompt_for
    from sc2cli.model.config import ModelConfig

    text = numbered(40)
    cursor = len(numbered(10))
    assert len(build_prompt(FimTask(text[:cursor], text[cursor:]), real, None, max_suffix=30).ids) < len(
        build_prompt(FimTask(text[:cursor], text[cursor:]), real).ids
    )
    request = CompletionRequest(text[:cursor], text[cursor:], heal=False)
    short = prompt_for(request, real, 2048, ModelConfig(sliding_window=256))
    assert 0 < len(real.encode(short.task.suffix)) <= 64 and short.task.prefix == request.prefix
    long = prompt_for(request, real, 2048, ModelConfig(sliding_window=4096))
    assert len(real.encode(long.task.suffix)) > 64  # only the budget's share applies


def test_tiny_budget_is_an_error(real):
    with pytest.raises(InputError, match="budget"):
        build_prompt(FimTask("x" * 100, "", path="a/very/long/path/" * 20 + "f.py", repo="r"), real, 10)


def test_one_enormous_line_keeps_its_end(real):
    line = "x = [" + ", ".join(str(i) for i in range(3000)) + "]"
    prompt = build_prompt(FimTask(line, "", path="min.js", repo="r"), real, 200)
    assert len(prompt.ids) <= 200 and line.endswith(prompt.task.prefix)


# ------------------------------------------------------------------------------------------------ healing


def test_healing_takes_the_prefixs_last_token_out(real):
    task = FimTask("import o", "\nimport sys\n", path="m.py", repo="r")
    whole = build_prompt(task, real)
    healed = heal(whole, real)
    assert healed.heal == b" o" and real.encode(" o") == [whole.ids[whole.ids.index(3) - 1]]
    assert list(healed.ids) == [i for k, i in enumerate(whole.ids) if k != whole.ids.index(3) - 1]
    assert healed.text == whole.text.replace("import o<fim_suffix>", "import<fim_suffix>")
    assert real.decode(healed.ids) == healed.text  # pieces and ids still agree


@pytest.mark.parametrize("prefix", ["", "x = 1\n"])
def test_healing_leaves_what_it_cannot_heal(real, prefix):
    whole = build_prompt(FimTask(prefix, "y", path="m.py" if prefix else None), real)
    healed = heal(whole, real)
    if not prefix:
        assert healed == whole  # nothing to take out
    else:
        assert healed.heal == b"\n" and healed.text == whole.text.replace("1\n<fim_suffix>", "1<fim_suffix>")


def test_healing_never_splits_a_character(real):
    assert real.token_bytes[real.encode("x漢")[-1]] == b"\xa2"  # the character's last byte alone
    whole = build_prompt(FimTask("x漢", "y"), real)
    assert heal(whole, real) == whole
    healed = heal(build_prompt(FimTask("xé", "y"), real), real)
    assert healed.heal == "é".encode() and healed.text == "<fim_prefix>x<fim_suffix>y<fim_middle>"


# ------------------------------------------------------------------------------------------------ the cursor's line


_words = st.lists(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), min_size=0, max_size=12).map(" ".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(_words, max_size=60),
    head=_words,
    rest=_words,
    after=st.lists(_words, max_size=60),
    budget=st.integers(40, 1200),
    max_suffix=st.one_of(st.none(), st.integers(0, 80)),
)
@example(before=[], head="", rest="_ _a_a_a_a _a_a_a_a_a_a", after=[""], budget=53, max_suffix=None)
def test_the_rest_of_the_cursors_line_always_stays(real, before, head, rest, after, budget, max_suffix):
    """However small the budget or the window's share, the text after the cursor up to the line's end stays:
    without it the model cannot see the line it is completing ends there, and the stop rules misread it."""
    prefix = "".join(f"{line}\n" for line in before) + head
    rest_of_line = rest + ("\n" if after else "")
    suffix = rest_of_line + "".join(f"{line}\n" for line in after)
    # the five control tokens, the repo's name and the path line (hypothesis found the name left out: a line
    # of exactly half the room the test counted one token too many was cut, rightly)
    room = budget - len(real.encode("r")) - len(real.encode("f.py\n")) - 5
    # the case the rule cannot serve: the rest of the line takes more than half of what the prompt holds
    assume(len(real.encode(rest_of_line)) <= room // 2)
    task = FimTask(prefix, suffix, path="f.py", repo="r")
    prompt = build_prompt(task, real, budget, max_suffix=max_suffix)
    assert len(prompt.ids) <= budget
    assert prompt.task.suffix.startswith(rest_of_line)
    assert suffix.startswith(prompt.task.suffix) and prefix.endswith(prompt.task.prefix)


def test_a_tiny_window_share_keeps_the_rest_of_the_line(real):
    """The reported case: a 256-token window gives the suffix 64 tokens; a long rest of line used to go."""
    rest = " + ".join(f"term_{i}" for i in range(20)) + "\n"
    task = FimTask(numbered(50) + "total = ", rest + numbered(50, 50), path="f.py", repo="r")
    prompt = build_prompt(task, real, 400, max_suffix=10)
    assert prompt.task.suffix == rest and len(prompt.ids) <= 400


def test_context_room_makes_the_prefix_give_way(real):
    """With a long prefix the context gets nothing, unless `context_room` reserves it a share; the quantum
    that keeps the prompt's start stable may take back less than CONTEXT_QUANTUM of it."""
    from sc2cli.completion.prompt import CONTEXT_QUANTUM

    task = FimTask(
        numbered(400), "\n", path="f.py", repo="r", context=(Document("c.py", numbered(400), "import"),)
    )
    plain = build_prompt(task, real, 1500)
    assert not plain.task.context and plain.context_tokens == ()
    shared = build_prompt(task, real, 1500, context_room=600)
    assert len(shared.ids) <= 1500 and shared.task.context[0].origin == "import"
    assert 600 - CONTEXT_QUANTUM <= sum(shared.context_tokens) <= 600 + CONTEXT_QUANTUM
    assert shared.context_tokens == (1 + len(real.encode("c.py\n" + shared.task.context[0].text)),)
    assert task.prefix.endswith(shared.task.prefix) and len(shared.task.prefix) < len(plain.task.prefix)
