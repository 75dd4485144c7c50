"""Inputs of any size: `sc2 complete` reads the window of lines around the cursor that the prompt can use,
and builds exactly the prompt the whole file would give; --insert still prints the whole file."""

from __future__ import annotations

import io
import json
import sys

import pytest

from sc2cli.cli import buffer, main


def sc2(capsys, monkeypatch, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _big_source(lines: int) -> str:
    return "".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n" for i in range(lines // 3))


@pytest.mark.parametrize("line", [1, 700, 1501, 2999])
def test_a_file_larger_than_the_window_gives_the_prompt_of_the_whole_file(
    capsys, monkeypatch, tmp_path, line
):
    f = tmp_path / "big.py"
    f.write_text(_big_source(3000))  # about 100 kB; --budget 128 reads 8 kB each side
    args = [
        "complete",
        f"{f}:{line}:5",
        "-m",
        "tiny",
        "--budget",
        "128",
        "--max-tokens",
        "8",
        "--show-prompt",
    ]
    code, windowed, _ = sc2(capsys, monkeypatch, *args)
    monkeypatch.setattr(buffer, "window_bytes", lambda settings: 1 << 30)  # the whole file
    code_whole, whole, _ = sc2(capsys, monkeypatch, *args)
    assert code == code_whole == 0 and windowed == whole
    code, from_stdin, _ = sc2(
        capsys, monkeypatch, *args[:1], f"-:{line}:5", *args[2:], "--path", f, stdin=f.read_bytes()
    )
    assert code == 0 and from_stdin == whole


def test_insert_prints_the_whole_file_around_the_completion(capsys, monkeypatch, tmp_path):
    f = tmp_path / "big.py"
    source = _big_source(3000).replace("\n", "\r\n")
    f.write_bytes(source.encode())
    where = ["complete", f"{f}:1501:9", "-m", "tiny", "--budget", "128", "--max-tokens", "6", "--no-server"]
    code, out, _ = sc2(capsys, monkeypatch, *where, "-f", "json", "--insert")
    done = json.loads(out)
    cursor = len("".join(source.splitlines(keepends=True)[:1500])) + 8  # line 1501, column 9
    assert code == 0 and done["buffer"] == source[:cursor] + done["text"] + source[cursor:]
    code, out, _ = sc2(capsys, monkeypatch, *where, "--insert")
    assert code == 0 and out == done["buffer"]
