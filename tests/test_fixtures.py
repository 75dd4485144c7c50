"""The one place that finds test data kept outside the repository, and the skip it gives when it is absent."""

from __future__ import annotations

import pytest

from .fixtures import TOKENIZER_DEFAULT, TOKENIZER_ENV, require_tokenizer_fixture, tokenizer_fixture


def test_a_missing_tokenizer_skips_with_one_line_saying_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKENIZER_ENV, str(tmp_path / "absent"))
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tokenizer_fixture()
    message = str(skipped.value)
    assert "\n" not in message and str(tmp_path / "absent" / "tokenizer.json") in message
    assert TOKENIZER_ENV in message and "hf download bigcode/starcoder2-3b tokenizer.json" in message


def test_the_tokenizer_is_found_through_the_variable_else_beside_the_repository(tmp_path, monkeypatch):
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setenv(TOKENIZER_ENV, str(tmp_path))
    assert require_tokenizer_fixture() == tmp_path
    monkeypatch.delenv(TOKENIZER_ENV)
    assert tokenizer_fixture() == TOKENIZER_DEFAULT
    assert TOKENIZER_DEFAULT.parts[-3:] == ("shared", "fixtures", "starcoder2-tokenizer")
