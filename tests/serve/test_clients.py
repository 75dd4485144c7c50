"""The server as its real clients use it: the requests llama.vim and llama.vscode send (tests/serve/requests/,
written from the plugins' sources: llama.vim's `llama#fim` and `s:ring_update`, llama.vscode's
`createRequestPayload`), every reply field they read, read the way they read it; and the official
`openai` Python client against /v1/completions."""

from __future__ import annotations

import http.client
import json
import math
import re
import uuid
from pathlib import Path

import pytest

from sc2cli.serve import wire

from .test_server import call, start_server, stop

REQUESTS = Path(__file__).parent / "requests"
VIM_CONTENT = re.compile(r'"content"\s*:"')  # llama.vim's \v"content"\s*:" check of the raw reply


def recorded(name: str) -> dict:
    return json.loads((REQUESTS / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    proc, info = start_server(model, tmp_path_factory.mktemp("rt"), "--max-tokens-limit", "1000")
    yield {"port": info["port"], "model": str(model), "proc": proc}
    stop(proc)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from ..checkpoints import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("clientmodel"), seed=6)


def unique_extra(body: dict) -> dict:
    """The request with other-file text never sent before (so no cache already holds it)."""
    tag = uuid.uuid4().hex
    extra = [{**e, "text": f"# {tag}\n" + e["text"] * 8} for e in body["input_extra"]]
    return {**body, "input_extra": extra}


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_llama_vim_fim_reply_passes_its_raw_check_and_fills_its_info_line(server):
    status, raw = call(
        server["port"], "POST", "/infill", recorded("llama_vim_fim"), {"Authorization": "Bearer "}
    )
    text = raw.decode()
    assert status == 200 and "\n" not in text and re.match(r"^\s*{", text) and VIM_CONTENT.search(text)
    reply = json.loads(text)
    assert set(reply) == set(recorded("llama_vim_fim")["response_fields"])  # flat keys, nothing else
    assert isinstance(reply["content"], str) and is_int(reply["tokens_cached"])
    assert isinstance(reply["truncated"], bool)
    for side in ("prompt", "predicted"):
        assert is_int(reply[f"timings/{side}_n"])  # printf('%d')
        for unit in ("ms", "per_token_ms", "per_second"):
            assert is_number(reply[f"timings/{side}_{unit}"])
    assert reply["timings/prompt_n"] > 0


def test_llama_vim_cache_warming_request_is_quick_empty_and_warms(server):
    warm = unique_extra(recorded("llama_vim_warm"))
    status, raw = call(server["port"], "POST", "/infill", warm)
    assert (status, raw) == (200, b"{}")  # response_fields [""] asks for nothing
    fim = {**recorded("llama_vim_fim"), "input_extra": warm["input_extra"], "n_predict": 2}
    cold = {**fim, "input_extra": unique_extra(recorded("llama_vim_warm"))["input_extra"]}  # never warmed
    warmed = json.loads(call(server["port"], "POST", "/infill", fim)[1])["tokens_cached"]
    unwarmed = json.loads(call(server["port"], "POST", "/infill", cold)[1])["tokens_cached"]
    assert warmed > unwarmed + 20  # the other file's tokens were computed by the warming request


def test_warming_reply_in_full_reports_a_limit_and_no_text(server):
    body = {**unique_extra(recorded("llama_vscode_warm")), "input_prefix": "x = ", "response_fields": []}
    reply = json.loads(call(server["port"], "POST", "/infill", body)[1])
    assert reply["content"] == "" and reply["tokens_predicted"] == 0 and reply["stop_type"] == "limit"
    assert reply["timings"]["predicted_n"] == 0 and reply["tokens_evaluated"] > 0
    assert reply["generation_settings"]["n_predict"] == 0


def test_llama_vscode_fim_reply_has_what_its_status_bar_reads(server):
    status, raw = call(server["port"], "POST", "/infill", recorded("llama_vscode_fim"))
    reply = json.loads(raw)
    assert status == 200 and "content" in reply and isinstance(reply["content"], str)  # n_cmpl: one object
    assert is_int(reply["generation_settings"]["n_ctx"]) and reply["generation_settings"]["n_ctx"] > 0
    assert reply["generation_settings"]["n_predict"] == 128 and is_int(reply["tokens_cached"])
    timings = reply["timings"]
    for name in ("prompt_n", "predicted_n"):
        assert is_int(timings[name])
    for name in ("prompt_ms", "prompt_per_second", "predicted_ms", "predicted_per_second"):
        assert is_number(timings[name])  # .toFixed(2)
    assert reply["stop"] is True and reply["stop_type"] in ("eos", "limit", "word")
    assert reply["tokens_predicted"] == timings["predicted_n"] <= 128
    status, raw = call(server["port"], "POST", "/infill", recorded("llama_vscode_warm"))
    assert status == 200 and json.loads(raw)["content"] == ""


def test_drafted_tokens_are_in_the_timings_as_llama_cpp_reports_them(server):
    body = {"input_prefix": "def total(items):\n", "input_suffix": "\n", "n_predict": 12, "raw": True}
    first, again = (json.loads(call(server["port"], "POST", "/infill", body)[1]) for _ in range(2))
    assert again["content"] == first["content"]
    t = again["timings"]  # drafted from the prompt and the first answer
    assert (
        is_int(t["draft_n"]) and is_int(t["draft_n_accepted"]) and 0 < t["draft_n_accepted"] <= t["draft_n"]
    )
    one = json.loads(call(server["port"], "POST", "/infill", {**body, "n_predict": 1})[1])
    assert "draft_n" not in one["timings"]  # nothing drafted: left out, as llama.cpp does


def test_no_limit_is_bounded_by_the_context(server):
    body = {"input_prefix": "def f(x):\n", "input_suffix": "", "n_predict": -1, "raw": True}
    reply = json.loads(call(server["port"], "POST", "/infill", body)[1])
    n_ctx = reply["generation_settings"]["n_ctx"]
    assert reply["generation_settings"]["n_predict"] == -1
    assert 0 < reply["tokens_predicted"] <= min(1000, n_ctx // 2)
    assert reply["truncated"] == (reply["stop_type"] == "limit")


def test_every_reply_is_compact_json_on_one_line(server):
    port = server["port"]
    replies = [
        call(port, "POST", "/infill", {"input_prefix": "a = 'é' + ", "input_suffix": "", "n_predict": 3})[1],
        call(port, "POST", "/v1/completions", {"prompt": "x = ", "max_tokens": 3})[1],
        call(port, "POST", "/v1/complete", {"prefix": "x = ", "max_tokens": 3})[1],
        call(port, "POST", "/infill", {"input_prefix": 1})[1],
        call(port, "GET", "/v1/info")[1],
    ]
    streamed = call(
        port, "POST", "/infill", {"input_prefix": "x = ", "input_suffix": "", "n_predict": 3, "stream": True}
    )[1]
    replies += [line[6:].encode() for line in streamed.decode().split("\n\n") if line.startswith("data: ")]
    for raw in replies:
        assert raw.decode() == wire.dumps(json.loads(raw)), raw  # no space after ':' or ',', no \u escapes


def test_a_replaced_infill_request_reports_cancelled(server):
    port = server["port"]
    long = {
        "input_prefix": "def f(x):\n",
        "input_suffix": "",
        "n_predict": 900,
        "raw": True,
        "client_id": "vim-1",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        "/infill",
        body=json.dumps({**long, "stream": True}),
        headers={"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.readline().startswith(b"data: ")  # the older one is generating: its first token is out
    newer = json.loads(call(port, "POST", "/infill", {**long, "n_predict": 2})[1])
    events = [json.loads(line[6:]) for line in response.read().split(b"\n") if line.startswith(b"data: ")]
    conn.close()
    assert events[-1]["stop_type"] == "cancelled" and events[-1]["tokens_predicted"] < 900
    assert newer["stop_type"] != "cancelled"


# --- the official openai client


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key="unused", max_retries=0)


def test_openai_client_completes_streams_and_echoes(client, server):
    prompt = "def add(a, b):\n    return "
    done = client.completions.create(model=server["model"], prompt=prompt, suffix="\n", max_tokens=5)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    assert done.choices[0].finish_reason in ("stop", "length")
    chunks = client.completions.create(
        model=server["model"], prompt=prompt, suffix="\n", max_tokens=5, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    echoed = client.completions.create(
        model=server["model"], prompt=prompt, suffix="\n", max_tokens=5, echo=True
    )
    assert echoed.choices[0].text == prompt + done.choices[0].text


def test_openai_client_logprobs_are_the_tokens_generated(client, server):
    done = client.completions.create(
        model=server["model"], prompt="x = ", max_tokens=6, logprobs=0, extra_body={"raw": True}
    )
    logprobs = done.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == done.usage.completion_tokens
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(len(logprobs.tokens))]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": 1e-300}, "BadRequestError", "field 'temperature'"),
        ({"n": 2}, "BadRequestError", "one completion per request"),
        ({"logprobs": 3}, "BadRequestError", "field 'logprobs'"),
        ({"model": "gpt-3.5-turbo-instruct"}, "NotFoundError", "does not exist"),
        ({"max_tokens": 10**9}, "BadRequestError", "over this server's limit"),
    ],
)
def test_openai_client_errors_carry_our_message(client, server, kwargs, error, message):
    import openai

    args = {"model": server["model"], "prompt": "x = ", "max_tokens": 2, **kwargs}
    with pytest.raises(getattr(openai, error)) as caught:
        client.completions.create(**args)
    assert message in caught.value.body["message"] and message in str(caught.value)
    assert str(caught.value.code) == str(caught.value.status_code)  # some versions keep it a str
    after = client.completions.create(
        model=server["model"], prompt="x = ", max_tokens=2
    )  # same connection pool
    assert after.object == "text_completion"


def test_llama_cpp_completion_continues_a_text_or_token_id_prompt(server):
    """llama.cpp's /completion: a text prompt and the same prompt as token ids give the same greedy
    completion, in /infill's reply shape; ids of control tokens stay text; bad prompts are 400s."""
    from sc2cli.completion.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(Path(server["model"]))
    text = "def add(a, b):\n    return "
    body = {
        "n_predict": 6,
        "temperature": 0,
        "response_fields": ["content", "stop_type", "timings/predicted_n"],
    }
    status, raw = call(server["port"], "POST", "/completion", {**body, "prompt": text})
    assert status == 200 and VIM_CONTENT.search(raw.decode())
    by_text = json.loads(raw)
    assert (
        set(by_text) == {"content", "stop_type", "timings/predicted_n"}
        and by_text["timings/predicted_n"] >= 1
    )
    ids = tokenizer.encode(text)
    status, raw = call(server["port"], "POST", "/completion", {**body, "prompt": ids})
    assert status == 200 and json.loads(raw) == {
        **by_text,
        "timings/predicted_n": by_text["timings/predicted_n"],
    }
    assert json.loads(raw)["content"] == by_text["content"]
    # a control token's id is its spelling as text, never a control token in sc2's prompt
    eos = tokenizer.special["<|endoftext|>"]
    status, raw = call(server["port"], "POST", "/completion", {**body, "prompt": [*ids[:2], eos, "x"]})
    assert status == 200
    for bad in ({"prompt": [10**9]}, {"prompt": {"a": 1}}, {"prompt": [1.5]}, {"input_prefix": "x"}):
        status, raw = call(server["port"], "POST", "/completion", {**body, **bad})
        assert status == 400 and "error" in json.loads(raw)
