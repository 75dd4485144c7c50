"""Completing through an engine against the loopback fake, in both protocols: the prompt goes as token ids,
sc2's stop rules end the stream (and the connection, so the engine stops), token healing picks among the
engine's candidates, the vocabulary is checked, and every failure is one line with nothing lost."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from sc2cli.cli import main
from sc2cli.completion.request import CompletionRequest
from sc2cli.completion.tokenizer import Tokenizer
from sc2cli.engines.address import parse_engine_url
from sc2cli.engines.remote import RemoteEngine
from sc2cli.errors import InputError
from sc2cli.model.config import ModelConfig

from ..checkpoints import hub_config, write_test_tokenizer
from .fake_engine import Behaviour, FakeEngine, Script

PROTOCOLS = ("openai", "llama")


@pytest.fixture(autouse=True)
def no_engine_settings(monkeypatch):
    for name in ("SC2_ENGINE", "SC2_ENGINE_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tokenizer and config.json, no weights: all a completion through an engine needs."""
    root = tmp_path_factory.mktemp("tok")
    path = write_test_tokenizer(root)
    vocab = Tokenizer(path).vocab_size
    (root / "config.json").write_text(json.dumps(hub_config(vocab_size=vocab, max_position_embeddings=1024)))
    return root


@pytest.fixture(scope="module")
def tok(folder) -> Tokenizer:
    return Tokenizer.from_folder(folder)


def sc2(capsys, monkeypatch, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def script(tok: Tokenizer, text: str, *, end: bool = True) -> Script:
    return Script(tok.encode(text) + ([tok.eos_id] if end else []))


def fim(capsys, monkeypatch, folder, url, prefix, suffix="", *more: str) -> tuple[int, str, str]:
    return sc2(
        capsys,
        monkeypatch,
        "fim",
        "--prefix",
        prefix,
        "--suffix",
        suffix,
        "-m",
        folder,
        "--engine",
        url,
        *more,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stop_rules_end_the_stream_and_the_engine_stops(capsys, monkeypatch, folder, tok, protocol):
    tail = "x = 1\n" * 150
    with FakeEngine(script(tok, "return a + b\n\n\ndef other():\n" + tail), tok, delay=0.002) as engine:
        code, out, err = fim(
            capsys, monkeypatch, folder, engine.url(protocol), "def add(a, b):\n    ", "", "--no-heal",
            "--max-tokens", "400",
        )  # fmt: skip
        assert (code, out, err) == (0, "return a + b", "")
        assert engine.generated[-1] < len(engine.backend.tokens)  # the client hung up: the engine stopped
    path, headers, body = engine.requests[-1]
    assert path == ("/v1/completions" if protocol == "openai" else "/completion")
    assert body["prompt"][0] == tok.special["<fim_prefix>"] and all(
        isinstance(i, int) for i in body["prompt"]
    )
    assert body["temperature"] == 0 and body["stream"] is True
    assert body.get("max_tokens", body.get("n_predict")) == 400
    assert "Authorization" not in headers


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_control_token_ends_the_completion_though_the_engine_goes_on(
    capsys, monkeypatch, folder, tok, protocol
):
    ids = [*tok.encode("y = 2"), tok.special["<file_sep>"], *tok.encode("leak")]
    with FakeEngine(Script([*ids, tok.eos_id]), tok) as engine:
        code, out, _ = fim(
            capsys, monkeypatch, folder, engine.url(protocol), "x = 1\n", "", "--raw", "--no-heal"
        )
    assert (code, out) == (0, "y = 2")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_character_split_across_tokens_arrives_whole(capsys, monkeypatch, folder, tok, protocol):
    single = {b: i for i, b in enumerate(tok.token_bytes) if len(b) == 1}
    ids = [*tok.encode("s = '"), single[b"\xc3"], single[b"\xbc"], *tok.encode("'"), tok.eos_id]
    with FakeEngine(Script(ids), tok) as engine:
        code, out, _ = fim(
            capsys, monkeypatch, folder, engine.url(protocol), "x = 1\n", "", "--raw", "--no-heal"
        )
    assert (code, out) == (0, "s = 'ü'")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_json_output_counts_tokens_and_says_why_it_stopped(capsys, monkeypatch, folder, tok, protocol):
    with FakeEngine(script(tok, "value = 42\nmore = 1\n", end=False), tok) as engine:
        code, out, _ = fim(
            capsys, monkeypatch, folder, engine.url(protocol), "x = 1\n", "", "--raw", "--no-heal",
            "--max-tokens", "3", "-f", "json",
        )  # fmt: skip
    done = json.loads(out)
    assert code == 0 and done["stop_reason"] == "max_tokens" and done["completion_tokens"] == 3
    assert done["text"] == tok.decode(tok.encode("value = 42\nmore = 1\n")[:3])


def engine_for(folder, tok, url: str) -> RemoteEngine:
    config = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()), "config.json")
    return RemoteEngine(parse_engine_url(url), tok, config, name="test", default_budget=512)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_healing_continues_from_the_likeliest_candidate_that_fits(folder, tok, protocol):
    request = CompletionRequest(prefix="x = ", max_tokens=8, raw=True)
    probe = engine_for(folder, tok, "llama+http://127.0.0.1:9")
    healed = probe.prompt(request).heal
    assert healed, "the prompt's last token must be healable for this test"
    fits = [i for i, b in enumerate(tok.token_bytes) if b.startswith(healed) and i not in tok.stop_ids]
    other = next(
        i for i, b in enumerate(tok.token_bytes) if not b.startswith(healed) and i not in tok.stop_ids
    )
    assert len(fits) >= 2
    tops = {0: [(other, -0.1), (fits[0], -2.0), (fits[1], -1.0), (tok.eos_id, -0.05)]}
    rest = tok.encode("s\n")
    with FakeEngine(Script([other, *rest, tok.eos_id], tops), tok) as engine:
        remote = engine_for(folder, tok, engine.url(protocol))
        remote.check()
        events = list(remote.stream(request))
        first, second = [b for p, _, b in engine.requests if "complet" in p]
    done = events[-1]
    assert first["prompt"] == list(probe.prompt(request).ids)
    assert first.get("logprobs", first.get("n_probs")) == 20 and first["stream"] is False
    assert second["prompt"] == [*first["prompt"], fits[1]]  # the best fitting one, not `other` nor EOS
    expected = tok.token_bytes[fits[1]][len(healed) :] + tok.token_bytes[other] + b"s\n"
    assert done.text == expected.decode() and done.healed == healed.decode()
    assert done.tokens[0] == fits[1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_healing_is_dropped_when_no_candidate_fits(folder, tok, protocol):
    request = CompletionRequest(prefix="import o", max_tokens=4, raw=True)
    probe = engine_for(folder, tok, "llama+http://127.0.0.1:9")
    healed = probe.prompt(request).heal
    other = next(
        i for i, b in enumerate(tok.token_bytes) if not b.startswith(healed) and i not in tok.stop_ids
    )
    with FakeEngine(Script([other, tok.eos_id], {0: [(other, -0.1)]}), tok) as engine:
        events = list(engine_for(folder, tok, engine.url(protocol)).stream(request))
        second = [b for p, _, b in engine.requests if "complet" in p][-1]
    unhealed = probe.prompt(CompletionRequest(prefix="import o", max_tokens=4, raw=True, heal=False))
    assert second["prompt"] == list(unhealed.ids) and events[-1].healed == ""
    assert events[-1].text == tok.token_bytes[other].decode()


# ------------------------------------------------------------------------------------------- failures


def test_an_engine_that_is_not_there(capsys, monkeypatch, folder):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once it is closed
    code, out, err = fim(capsys, monkeypatch, folder, f"llama+http://127.0.0.1:{port}", "x = ")
    assert code == 1 and out == ""
    assert (
        err
        == f"sc2: error: cannot reach the engine at llama+http://127.0.0.1:{port}: connection refused; is it running?\n"
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_http_error_carries_the_engines_message(capsys, monkeypatch, folder, tok, protocol):
    with FakeEngine(script(tok, "1"), tok, Behaviour(status=503, message="model\noverloaded")) as engine:
        code, out, err = fim(capsys, monkeypatch, folder, engine.url(protocol), "x = ", "", "--no-heal")
    assert code == 1 and out == ""
    assert err == f"sc2: error: the engine at {engine.url(protocol)} answered 503: model overloaded\n"


def test_the_token_goes_as_a_bearer_header_and_is_never_shown(capsys, monkeypatch, folder, tok):
    secret = "s3cret-token-value"
    with FakeEngine(script(tok, "1\n"), tok, Behaviour(token=secret)) as engine:
        url = engine.url("openai")
        code, _, err = fim(capsys, monkeypatch, folder, url, "x = ", "", "--no-heal")
        assert code == 1 and "answered 401: Invalid API Key (check --engine-token or SC2_ENGINE_TOKEN)" in err
        monkeypatch.setenv("SC2_ENGINE_TOKEN", secret)
        code, out, err = fim(capsys, monkeypatch, folder, url, "x = ", "", "--no-heal", "-v")
        assert code == 0 and out == "1" and "warning" not in err
        monkeypatch.delenv("SC2_ENGINE_TOKEN")
        code, out, err = fim(
            capsys, monkeypatch, folder, url, "x = ", "", "--no-heal", "--engine-token", secret
        )
        assert code == 0 and "--engine-token on the command line is visible to other users" in err
    assert engine.requests[-1][1]["Authorization"] == f"Bearer {secret}"
    assert all(secret not in text for text in (out, err))


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (Behaviour(n_vocab=50_000), "serves fake-sc2 with 50000 tokens"),
        (Behaviour(tokenize_shift=1), "tokenizes differently from"),
    ],
)
def test_another_vocabulary_is_refused(capsys, monkeypatch, folder, tok, behaviour, message):
    with FakeEngine(script(tok, "1"), tok, behaviour) as engine:
        code, out, err = fim(capsys, monkeypatch, folder, engine.url("llama"), "x = ")
    assert code == 1 and out == "" and message in err and err.count("\n") == 1
    assert not [p for p, _, _ in engine.requests if "complet" in p]  # refused before any completion


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        (Behaviour(cut_after=3), "the engine closed the stream before the completion ended"),
        (Behaviour(error_after=3), "CUDA out of memory"),
        (Behaviour(stall_after=3, stall_s=3), "sent nothing for 0.5s"),
    ],
)
def test_a_broken_stream_prints_what_arrived_and_says_so(
    capsys, monkeypatch, folder, tok, protocol, behaviour, why
):
    with FakeEngine(script(tok, "alpha beta gamma delta\n"), tok, behaviour) as engine:
        url = engine.url(protocol, "token_timeout=0.5")
        code, out, err = fim(capsys, monkeypatch, folder, url, "x = ", "", "--raw", "--no-heal")
    arrived = tok.decode(tok.encode("alpha beta gamma delta\n")[:3])
    assert code == 1 and out == arrived
    assert err.startswith("sc2: error: the engine's stream was cut after 3 tokens (") and why in err
    assert err.endswith("; the completion is partial\n") and err.count("\n") == 1


def test_a_cut_stream_keeps_the_users_buffer_and_reports_json(capsys, monkeypatch, folder, tok):
    with FakeEngine(script(tok, "alpha beta gamma\n"), tok, Behaviour(cut_after=2)) as engine:
        code, out, err = sc2(
            capsys, monkeypatch, "complete", "-:1", "-m", folder, "--engine", engine.url("llama"), "--raw",
            "--no-heal", "--insert", "-f", "json", stdin="x = \nkeep me\n",
        )  # fmt: skip
    record = json.loads(out)
    arrived = tok.decode(tok.encode("alpha beta gamma\n")[:2])
    assert code == 1 and record["stop_reason"] == "cut" and record["text"] == arrived
    assert record["buffer"] == "x = " + arrived + "\nkeep me\n"
    assert "cut after 2 tokens" in err


def test_an_error_before_any_token_is_the_engines_message(capsys, monkeypatch, folder, tok):
    with FakeEngine(script(tok, "1"), tok, Behaviour(error_after=0)) as engine:
        code, out, err = fim(capsys, monkeypatch, folder, engine.url("openai"), "x = ", "", "--no-heal")
    assert (code, out) == (1, "")
    assert err == f"sc2: error: the engine at {engine.url('openai')} failed: CUDA out of memory\n"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8000", "use openai+http://HOST:PORT/v1 or llama+http://HOST:PORT"),
        ("vllm+http://127.0.0.1:8000", "use openai+http://HOST:PORT/v1"),
        ("openai+http://user:pw@127.0.0.1:8000/v1", "no credentials in the URL"),
        ("llama+http://127.0.0.1:8080?token_timeout=0", "token_timeout must be > 0"),
        ("llama+http://127.0.0.1:8080?speed=9", "unknown parameter 'speed'"),
    ],
)
def test_engine_urls(url, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        parse_engine_url(url)


def test_engine_url_parts():
    a = parse_engine_url("openai+https://gpu.example:8443/v1/?heal_top=5&connect_timeout=2")
    assert (a.protocol, a.tls, a.host, a.port, a.path, a.root) == (
        "openai",
        True,
        "gpu.example",
        8443,
        "/v1",
        "",
    )
    assert (a.heal_top, a.connect_timeout, str(a)) == (5, 2.0, "openai+https://gpu.example:8443/v1")


def test_the_engine_setting_routes_every_completion(capsys, monkeypatch, folder, tok):
    with FakeEngine(script(tok, "7\n"), tok) as engine:
        code, _, err = sc2(capsys, monkeypatch, "config", "set", "engine", engine.url("llama"))
        assert code == 0
        code, out, _ = sc2(capsys, monkeypatch, "fim", "--prefix", "x = ", "-m", folder, "--no-heal")
        assert (code, out) == (0, "7")
    code, _, err = sc2(capsys, monkeypatch, "config", "set", "engine", "http://nope")
    assert code == 2 and "engine must be none, openai+http(s)://HOST:PORT/v1" in err
