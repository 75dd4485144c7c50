"""Plain-text encoding and incremental decoding that never splits a UTF-8 character."""

from __future__ import annotations

import pytest

from sc2cli.completion.tokenizer import CONTROL_TOKENS, Detokenizer, Tokenizer
from sc2cli.errors import CheckpointError

from ..checkpoints import write_test_tokenizer
from .test_prompt import real  # noqa: F401  (fixture: the real StarCoder2 tokenizer, skipped when absent)

TEXT = "naïve = '日本語 ✓ 🎉'  # ünïcödé\n\tdone()\r\n"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return Tokenizer(write_test_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(params=["small", "real"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def test_incremental_decoding_never_splits_a_character(tokenizer):
    ids = tokenizer.encode(TEXT)
    detok = Detokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert any(len(tokenizer.token_bytes[i]) and not _is_utf8(tokenizer.token_bytes[i]) for i in ids)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_decode_matches_the_library(tokenizer):
    ids = tokenizer.encode(TEXT)
    assert tokenizer.decode(ids) == tokenizer._tok.decode(ids, skip_special_tokens=False) == TEXT


def test_control_token_spellings_stay_text(tokenizer):
    ids = tokenizer.encode("<fim_prefix><|endoftext|><file_sep>")
    assert not set(ids) & tokenizer.stop_ids
    assert tokenizer.decode(ids) == "<fim_prefix><|endoftext|><file_sep>"


def test_special_ids(tokenizer):
    assert [tokenizer.special[n] for n in CONTROL_TOKENS] == [0, 1, 2, 3, 4, 5, 6]
    assert tokenizer.stop_ids == frozenset(range(7))


def test_real_vocabulary(real):  # noqa: F811
    assert real.vocab_size == 49152 and real.token_bytes[0] == b"<|endoftext|>"
    table = real.token_bytes  # one token at a time (what healing a prompt uses) agrees with the table
    assert all(real.bytes_of(i) == table[i] for i in range(real.vocab_size))
    text = "def café(x):\n\treturn x  # 漢字\n"
    assert b"".join(real.bytes_of(i) for i in real.encode(text)) == text.encode()


def test_not_a_starcoder2_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    HF(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="no <|endoftext|> token"):
        Tokenizer.from_folder(tmp_path)
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_folder(tmp_path / "nowhere")


def test_detokenizer_skips_the_healed_bytes(tokenizer):
    text = "import os, é\n"
    ids = tokenizer.encode(text)
    for cut in range(len(text) + 1):  # healed bytes are whole characters
        detokenizer = Detokenizer(tokenizer, skip=len(text[:cut].encode()))
        assert "".join(detokenizer.push(i) for i in ids) + detokenizer.flush() == text[cut:]
