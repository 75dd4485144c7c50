"""`sc2 eval` end to end with the tiny model on a repository built in the test: the table, the JSON,
determinism, one-line errors and Ctrl-C."""

from __future__ import annotations

import json

import pytest

from sc2cli.cli import main
from sc2cli.eval import completers

FAST = ["-m", "tiny", "--max-tokens", "6", "--budget", "512", "--limit", "3"]


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(["eval", *args])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def _without_timings(report: dict) -> dict:
    for config in report["configurations"]:
        config.pop("ttft_p50_ms"), config.pop("total_p50_ms")
        for sample in config["samples"]:
            sample.pop("ttft_ms"), sample.pop("total_ms")
    return report


def test_two_runs_give_the_same_json_apart_from_timings(history, capsys, monkeypatch):
    monkeypatch.chdir(history)
    args = [*FAST, "--vary", "heal=on,off", "--format", "json", "--seed", "3"]
    code, out, _ = _run(capsys, *args)
    assert code == 0
    first = json.loads(out)
    assert [c["configuration"] for c in first["configurations"]] == ["heal=on", "heal=off"]
    assert [c["n"] for c in first["configurations"]] == [3, 3] and not first["interrupted"]
    for config in first["configurations"]:
        samples = config["samples"]
        assert config["exact_match"] == pytest.approx(sum(s["exact"] for s in samples) / 3, abs=1e-4)
        assert all(s["expected"] and s["path"] in ("shapes.py", "main.py") for s in samples)
    assert _without_timings(json.loads(_run(capsys, *args)[1])) == _without_timings(first)


def test_auto_context_off_sends_no_documents(history, capsys, monkeypatch):
    monkeypatch.chdir(history)
    code, out, _ = _run(
        capsys, *FAST, "--vary", "auto-context=on,off", "--format", "json", "--spans", "random"
    )
    on, off = json.loads(out)["configurations"]
    assert code == 0 and all(s["context"] == [] for s in off["samples"])
    assert any("shapes.py" in s["context"] for s in on["samples"] if s["path"] == "main.py") or not any(
        s["path"] == "main.py" for s in on["samples"]
    )


def test_the_table_has_one_row_per_configuration(history, capsys, monkeypatch):
    monkeypatch.chdir(history)
    code, out, _ = _run(capsys, *FAST, "--vary", "context-budget=0.1,0.4")
    assert code == 0
    assert "context-budget=0.1" in out and "context-budget=0.4" in out and "first-line EM" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--vary", "heal=maybe"], "heal takes on or off"),
        (["--vary", "speed=1"], "KEY one of"),
        (["--server", "http://127.0.0.1:9", "--vary", "quantize=none,int8"], "leave out --server"),
        (["nowhere.py"], "no such file"),
    ],
)
def test_errors_are_one_line(history, capsys, monkeypatch, args, words):
    monkeypatch.chdir(history)
    code, out, err = _run(capsys, *FAST, *args)
    assert code == 2 and words in err and err.count("\n") == 1 and not out


def test_outside_git_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *FAST)
    assert code == 2 and "not in a git repository" in err and err.count("\n") == 1


def test_ctrl_c_prints_the_partial_results_and_exits_130(history, capsys, monkeypatch):
    real = completers.in_process

    def interrupted_after_two(*args, **kwargs):
        open_real = real(*args, **kwargs)

        def open_completer(settings):
            engine = open_real(settings)
            calls = []

            class Interrupting:
                default_budget = engine.default_budget

                def stream(self, request):
                    calls.append(request)
                    if len(calls) == 3:
                        raise KeyboardInterrupt
                    return engine.stream(request)

            return Interrupting()

        return open_completer

    monkeypatch.setattr(completers, "in_process", interrupted_after_two)
    monkeypatch.chdir(history)
    code, out, err = _run(capsys, *FAST, "--vary", "heal=on,off", "--format", "json")
    report = json.loads(out)
    assert code == 130 and report["interrupted"] and "partial" in err
    assert [c["n"] for c in report["configurations"]] == [2, 0]
