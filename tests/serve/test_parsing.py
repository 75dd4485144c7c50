"""Property tests over each protocol's request parsing (no server): whatever a client sends, the result is
a request or an `InputError` naming a field, never another exception; and text from the request never
turns into control tokens in the prompt."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sc2cli.completion.request import prompt_for
from sc2cli.completion.tokenizer import CONTROL_TOKENS, Tokenizer
from sc2cli.errors import InputError
from sc2cli.model.config import ModelConfig
from sc2cli.serve import wire
from sc2cli.serve.protocols import infill, native, openai

from ..checkpoints import hub_config, write_test_tokenizer

KEYS = {
    "infill": ["input_prefix", "input_suffix", "input_extra", "prompt", "n_predict", "stop", "temperature",
               "top_k", "top_p", "seed", "t_max_predict_ms", "response_fields", "stream", "raw", "id_slot",
               "client_id", "samplers", "cache_prompt", "model"],
    "openai": ["prompt", "suffix", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "best_of",
               "echo", "logprobs", "stream", "user", "raw", "model"],
    "native": ["prefix", "suffix", "path", "repo", "context", "metadata", "max_tokens", "sampling", "stop",
               "raw", "heal", "budget", "eol"],
}  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def bodies(protocol: str) -> st.SearchStrategy[dict]:
    keys = st.sampled_from(KEYS[protocol]) | st.text(max_size=8)
    extra = st.lists(
        st.fixed_dictionaries(
            {"text": st.text(max_size=30)}, optional={"filename": st.text(max_size=8), "time": json_values}
        ),
        max_size=3,
    )
    special = {
        "input_extra": extra,
        "context": st.lists(st.fixed_dictionaries({"path": st.text(max_size=8), "text": st.text(max_size=30)}), max_size=3),
        "sampling": st.dictionaries(st.sampled_from(["temperature", "top_k", "top_p", "seed"]), scalars, max_size=4),
    }  # fmt: skip
    fixed = {k: special.get(k, json_values) for k in KEYS[protocol] if k in special}
    return st.builds(lambda free, known: {**free, **known}, st.dictionaries(keys, json_values, max_size=8),
                     st.fixed_dictionaries({}, optional=fixed))  # fmt: skip


def parse(protocol: str, body: dict):
    if protocol == "infill":
        opts = infill.options(body)
        return infill.parse(body, {infill.UNLIMITED: 64, 0: 1}.get(opts.n_predict, opts.n_predict))
    if protocol == "openai":
        openai.options(body)
        return openai.parse(body)
    return native.parse(dict(body))


@pytest.mark.parametrize("protocol", sorted(KEYS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_parsing_raises_nothing_but_input_errors(protocol, data):
    body = data.draw(bodies(protocol))
    try:
        request = parse(protocol, body)
    except InputError as e:
        said = re.sub(r"'[^']*'", "''", str(e))  # the client's own field names are quoted back as they came
        assert "--" not in said  # field names, not CLI flags
        return
    assert request.max_tokens >= 1 and request.sampling.temperature >= 0


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_body_bytes_load_or_raise_an_input_error(raw):
    try:
        value = wire.loads(raw)
    except InputError:
        return
    wire.dumps(value)  # what loads accepts can always be written back


def test_deep_nesting_and_odd_numbers_are_input_errors():
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a": NaN}', b"-Infinity", b"1e999", b'"\\udc80"'):
        with pytest.raises(InputError):
            wire.loads(raw)
    assert json.loads(wire.dumps({"a": "é\n"})) == {"a": "é\n"} and wire.dumps({"a": "é"}) == '{"a":"é"}'


@pytest.fixture(scope="module")
def tokenizer_and_config(tmp_path_factory) -> tuple[Tokenizer, ModelConfig]:
    folder: Path = tmp_path_factory.mktemp("tok")
    write_test_tokenizer(folder)
    config = hub_config(vocab_size=Tokenizer.from_folder(folder).vocab_size, max_position_embeddings=8192)
    return Tokenizer.from_folder(folder), ModelConfig.from_dict(config)


control_text = st.lists(
    st.sampled_from([*CONTROL_TOKENS, "a", "\n", " ", "def ", "<", ">"]), max_size=12
).map("".join)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=control_text, suffix=control_text, extra=control_text, line=control_text)
def test_text_never_becomes_control_tokens(tokenizer_and_config, prefix, suffix, extra, line):
    """The same request with each control string replaced by plain text has the same control tokens."""
    tokenizer, config = tokenizer_and_config
    special = set(tokenizer.special.values())

    def controls(clean: bool) -> Counter:
        fix = (lambda s: _plain(s)) if clean else (lambda s: s)
        body = {"input_prefix": fix(prefix), "input_suffix": fix(suffix), "prompt": fix(line), "n_predict": 4,
                "input_extra": [{"text": fix(extra), "filename": "x.py"}]}  # fmt: skip
        try:
            ids = prompt_for(
                parse("infill", body), tokenizer, 8192, config
            ).ids  # room for all: nothing trimmed
        except InputError:
            return Counter({"refused": 1})
        return Counter(i for i in ids if i in special)

    assert controls(clean=False) == controls(clean=True)


def _plain(text: str) -> str:
    for name in CONTROL_TOKENS:
        text = text.replace(name, "x")
    return text
