"""`--vary KEY=v1,v2`: every combination, labelled in order; a bad spec is one line naming it."""

from __future__ import annotations

import pytest

from sc2cli.errors import InputError
from sc2cli.eval.vary import Variant, parse_vary


def test_no_vary_is_one_default_configuration():
    assert parse_vary([]) == [Variant()]


def test_every_combination_in_the_order_given():
    variants = parse_vary(["auto-context=on,off", "heal=off,on"])
    assert [v.label for v in variants] == [
        "auto-context=on heal=off", "auto-context=on heal=on", "auto-context=off heal=off", "auto-context=off heal=on",
    ]  # fmt: skip
    assert [(v.auto_context, v.heal) for v in variants] == [
        (True, False),
        (True, True),
        (False, False),
        (False, True),
    ]
    assert variants[0].quantize is None and variants[0].model is None


def test_typed_values():
    assert [v.budget for v in parse_vary(["budget=512,1024"])] == [512, 1024]
    assert [v.context_budget for v in parse_vary(["context-budget=0,0.4"])] == [0.0, 0.4]
    assert [v.quantize for v in parse_vary(["quantize=none,int8"])] == ["none", "int8"]
    assert [v.model for v in parse_vary(["model=tiny,3b"])] == ["tiny", "3b"]


@pytest.mark.parametrize(
    ("specs", "words"),
    [
        (["colour=red"], "KEY one of"),
        (["heal"], "KEY=v1,v2"),
        (["heal=maybe"], "heal=maybe: heal takes on or off"),
        (["quantize=none,int4"], "quantize=int4"),
        (["budget=12"], "budget=12"),
        (["context-budget=0.95"], "between 0 and 0.9"),
        (["heal=on,on"], "distinct values"),
        (["heal=", "x"], "distinct values"),
        (["heal=on", "heal=off"], "given twice"),
    ],
)
def test_errors_are_one_line(specs, words):
    with pytest.raises(InputError) as error:
        parse_vary(specs)
    assert words in str(error.value) and "\n" not in str(error.value)
