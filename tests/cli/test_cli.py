"""`sc2 complete` and `sc2 fim` end to end on a tiny random checkpoint: output modes, the prompt it builds,
equality with transformers' greedy generate, and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sc2cli.cli import main
from sc2cli.model.config import ModelConfig

from ..checkpoints import write_tiny_model

SOURCE = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nclass Counter:\n    pass\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), seed=4)


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "myproj"
    (root / ".git").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text(SOURCE)
    (root / "src" / "util.py").write_text("X = 1\n")
    return root


def sc2(capsys, monkeypatch, *args: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    if stdin is not None:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_text_json_and_jsonl_agree(capsys, monkeypatch, model, repo):
    where = f"{repo}/src/app.py:5"
    code, text, err = sc2(capsys, monkeypatch, "complete", where, "-m", model, "--max-tokens", "12")
    assert code == 0 and err == ""
    code, out, _ = sc2(
        capsys, monkeypatch, "complete", where, "-m", model, "--max-tokens", "12", "-f", "json"
    )
    done = json.loads(out)
    assert done["text"] == text
    assert set(done) >= {
        "text",
        "tokens",
        "logprobs",
        "stop_reason",
        "prompt_tokens",
        "completion_tokens",
        "truncated",
        "model",
        "timings",
    }
    assert len(done["tokens"]) == len(done["logprobs"]) == done["completion_tokens"] <= 12
    assert all(lp <= 0 for lp in done["logprobs"]) and done["stop_reason"] in (
        "eos",
        "max_tokens",
        "postprocess",
        "stop",
    )
    assert set(done["timings"]) >= {
        "load_s",
        "prefill_s",
        "decode_s",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    }
    _, out, _ = sc2(capsys, monkeypatch, "complete", where, "-m", model, "--max-tokens", "12", "-f", "jsonl")
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["type"] == "done" and "".join(e["text"] for e in events[:-1]) == text


def test_show_prompt_reads_only_the_tokenizer(capsys, monkeypatch, model, repo, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_bytes((model / "tokenizer.json").read_bytes())
    config = {
        **json.loads((model / "config.json").read_text()),
        "sliding_window": 4096,
    }  # the whole suffix fits
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes(b"garbage")
    expected = (
        "<repo_name>myproj<file_sep>src/util.py\nX = 1\n<file_sep><fim_prefix>src/app.py\n"
        + SOURCE[: SOURCE.index("a + b")]
        + "<fim_suffix>"
        + SOURCE[SOURCE.index("a + b") :]
        + "<fim_middle>"
    )
    code, out, _ = sc2(capsys, monkeypatch, "complete", f"{repo}/src/app.py:5:12", "-m", broken, "--show-prompt",
                       "--context", f"{repo}/src/util.py", "--no-heal")  # fmt: skip
    assert code == 0 and out == expected
    # token healing: the prefix's last token (" ") leaves the prompt, and the note says what must come first
    code, out, err = sc2(capsys, monkeypatch, "complete", f"{repo}/src/app.py:5:12", "-m", broken, "--show-prompt",
                         "--context", f"{repo}/src/util.py", "-v")  # fmt: skip
    assert code == 0 and out == expected.replace(" <fim_suffix>", "<fim_suffix>")
    assert "the completion must start with ' ' (token healing)" in err
    _, out, _ = sc2(
        capsys,
        monkeypatch,
        "complete",
        f"{repo}/src/app.py:5:12",
        "-m",
        broken,
        "--show-prompt",
        "--no-metadata",
    )
    assert out.startswith("<file_sep><fim_prefix>import os")


def test_show_prompt_does_not_import_torch(model, repo):
    script = (
        "import sys\nfrom sc2cli.cli import main\ntry:\n"
        f"    main(['complete', {str(repo / 'src/app.py:2')!r}, '-m', {str(model)!r}, '--show-prompt'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "False"


def test_a_completion_does_not_import_torch_dynamo(model, repo):
    """Building the model on the meta device must not reach torch's Python references (an embedding's
    normal_ there imports torch._dynamo, over a second of every cold start)."""
    script = (
        "import sys\nfrom sc2cli.cli import main\ntry:\n"
        f"    main(['complete', {str(repo / 'src/app.py:2')!r}, '-m', {str(model)!r}, '--max-tokens', '2'])\n"
        "except SystemExit:\n    pass\nprint('torch._dynamo' in sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "False"


def test_a_completion_without_numpy_prints_no_numpy_warning(model, repo):
    """sc2 never uses numpy; torch warns on import when it is missing (an install without the test extras),
    and the command line keeps that off the user's terminal."""
    no_numpy = (
        "import sys\nsys.modules['numpy'] = None  # `import numpy` fails, as where it is not installed\n"
    )
    control = subprocess.run(
        [sys.executable, "-c", no_numpy + "import torch"], capture_output=True, text=True
    )
    if "Failed to initialize NumPy" not in control.stderr:
        pytest.skip("this torch does not warn without numpy")
    script = no_numpy + (
        "from sc2cli.cli import main\ntry:\n"
        f"    main(['complete', {str(repo / 'src/app.py:2')!r}, '-m', {str(model)!r}, '--max-tokens', '2'])\n"
        "except SystemExit as e:\n    sys.exit(e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and "NumPy" not in out.stderr, out.stderr


def test_stdin_buffer_with_path_builds_the_same_prompt(capsys, monkeypatch, model, repo):
    monkeypatch.chdir(repo)
    _, from_file, _ = sc2(capsys, monkeypatch, "complete", "src/app.py:5:8", "-m", model, "--show-prompt")
    _, from_stdin, _ = sc2(
        capsys,
        monkeypatch,
        "complete",
        "-:5:8",
        "--path",
        "src/app.py",
        "-m",
        model,
        "--show-prompt",
        stdin=SOURCE,
    )
    assert from_file == from_stdin and "src/app.py\n" in from_stdin


def test_byte_column(capsys, monkeypatch, model, tmp_path):
    f = tmp_path / "u.py"
    f.write_text("s = 'é' + x\n")
    _, chars, _ = sc2(
        capsys,
        monkeypatch,
        "complete",
        f"{f}:1:9",
        "-m",
        model,
        "--show-prompt",
        "--no-metadata",
        "--no-heal",
    )
    _, chars_by_byte, _ = sc2(
        capsys,
        monkeypatch,
        "complete",
        f"{f}:1:10",
        "--byte-col",
        "-m",
        model,
        "--show-prompt",
        "--no-metadata",
        "--no-heal",
    )
    assert chars == chars_by_byte and "s = 'é' <fim_suffix>+ x" in chars


def test_insert_prints_the_whole_buffer_and_keeps_crlf(capsys, monkeypatch, model, tmp_path):
    f = tmp_path / "w.py"
    original = SOURCE.replace("\n", "\r\n").encode()
    f.write_bytes(original)
    _, out, _ = sc2(
        capsys, monkeypatch, "complete", f"{f}:5", "-m", model, "--max-tokens", "16", "--raw", "-f", "json"
    )
    completion = json.loads(out)["text"]
    _, buffer, _ = sc2(
        capsys, monkeypatch, "complete", f"{f}:5", "-m", model, "--max-tokens", "16", "--raw", "--insert"
    )
    cursor = original.index(b"a + b") + 5
    assert buffer.encode() == original[:cursor] + completion.encode() + original[cursor:]
    assert "\n" not in completion.replace("\r\n", "")  # completions use the file's CRLF
    assert f.read_bytes() == original  # the file itself is never touched


def test_fim_reads_files_and_stdin(capsys, monkeypatch, model, tmp_path):
    (tmp_path / "head.py").write_text("def add(a, b):\n")
    _, out, _ = sc2(
        capsys,
        monkeypatch,
        "fim",
        "--prefix",
        f"@{tmp_path / 'head.py'}",
        "--suffix",
        "-",
        "-m",
        model,
        "--show-prompt",
        "--no-heal",
        stdin="\nprint(1)\n",
    )
    assert out == "<fim_prefix>def add(a, b):\n<fim_suffix>\nprint(1)\n<fim_middle>"
    _, out, _ = sc2(
        capsys,
        monkeypatch,
        "fim",
        "--prefix",
        "x = ",
        "--path",
        "a/b.py",
        "--repo-name",
        "r",
        "-m",
        model,
        "--show-prompt",
        "--no-heal",
    )
    assert out == "<repo_name>r<file_sep><fim_prefix>a/b.py\nx = <fim_suffix><fim_middle>"


def test_greedy_cli_output_is_the_reference_generate(capsys, monkeypatch, model):
    """Token for token what transformers' generate gives for the same prompt ids, logprobs within 1e-4."""
    from transformers import AutoModelForCausalLM

    from sc2cli.completion.request import CompletionRequest, prompt_for
    from sc2cli.completion.tokenizer import Tokenizer

    budget = 2048
    args = [
        "fim",
        "--prefix",
        "def add(a, b):\n    return ",
        "--suffix",
        "\n",
        "-m",
        model,
        "--raw",
        "--no-heal",
        "--max-tokens",
        "24",
        # What the reference below runs in, pinned: `auto` picks bf16 on CPUs with native bf16, a GPU where
        # there is one, and a bigger prompt budget on a GPU.
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--budget",
        str(budget),
    ]
    _, out, _ = sc2(capsys, monkeypatch, *args, "-f", "json")
    ours = json.loads(out)
    tokenizer = Tokenizer.from_folder(model)
    ids = prompt_for(
        CompletionRequest("def add(a, b):\n    return ", "\n", raw=True, heal=False, max_tokens=24),
        tokenizer,
        budget,
        ModelConfig.from_file(Path(model) / "config.json"),
    ).ids
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ref.generation_config.eos_token_id = sorted(tokenizer.stop_ids)
    result = ref.generate(
        torch.tensor([ids]),
        max_new_tokens=24,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = result.sequences[0, len(ids) :].tolist()
    while tokens and tokens[-1] in tokenizer.stop_ids:
        tokens.pop()
    assert ours["tokens"] == tokens and ours["prompt_tokens"] == len(ids)
    logprobs = [
        torch.log_softmax(step[0], -1)[t].item() for step, t in zip(result.logits, tokens, strict=False)
    ]
    torch.testing.assert_close(ours["logprobs"], logprobs, atol=1e-4, rtol=0)
    assert ours["text"] == tokenizer.decode(tokens)


def test_empty_file_and_cursor_at_the_edges_are_valid(capsys, monkeypatch, model, tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("")
    assert sc2(capsys, monkeypatch, "complete", f"{empty}:1", "-m", model, "--max-tokens", "3")[0] == 0
    f = tmp_path / "f.py"
    f.write_text(SOURCE)
    assert sc2(capsys, monkeypatch, "complete", f"{f}:1:1", "-m", model, "--max-tokens", "3")[0] == 0
    assert sc2(capsys, monkeypatch, "complete", f"{f}:10", "-m", model, "--max-tokens", "3")[0] == 0


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str | bytes | None, str]]:
    (tmp / "bin.py").write_bytes(b"\x00\x01\x02")
    (tmp / "latin.py").write_bytes("café = 1\n".encode("latin-1"))
    (tmp / "ok.py").write_text("a = 1\nb = 2\n")
    (tmp / "dir").mkdir()
    (tmp / "notamodel").mkdir()
    (tmp / "notamodel" / "config.json").write_text('{"model_type": "llama"}')
    ok = str(tmp / "ok.py")
    os.mkfifo(tmp / "fifo.py")  # no writer: reading it would wait forever
    with open(tmp / "huge.py", "wb") as f:
        f.truncate(64 << 20 | 1)  # sparse
    (tmp / "long.py").write_text("x = 1\n" + "y" * 5000 + "\n")
    return [
        (["complete", str(tmp / "fifo.py:1")], None, "fifo.py is a FIFO, not a regular file"),
        (["complete", ok + ":1", "--context", str(tmp / "fifo.py")], None, "fifo.py is a FIFO"),
        (["complete", f"{os.devnull}:1"], None, "is a character device, not a regular file"),
        (["fim", "--prefix", f"@{tmp / 'fifo.py'}"], None, "fifo.py is a FIFO"),
        (["complete", str(tmp / "huge.py:1")], None, "huge.py is over 64 MiB"),
        (["complete", "-:1"], b"x\n" * (32 << 20) + b"x", "standard input is over 64 MiB"),
        (
            ["complete", str(tmp / "long.py:2"), "--budget", "64"],
            None,
            "line 2 of .*long.py is over 4096 bytes",
        ),
        (
            ["complete", ok + ":1", "--temperature", "nan"],
            None,
            "--temperature must be a finite number, got nan",
        ),
        (
            ["complete", ok + ":1", "--temperature", "inf"],
            None,
            "--temperature must be a finite number, got inf",
        ),
        (["fim", "--prefix", "a", "--top-p", "nan"], None, "--top-p must be a finite number, got nan"),
        (["complete", str(tmp / "missing.py:1")], None, "missing.py: no such file"),
        (["complete", str(tmp / "dir:1")], None, "is a directory"),
        (["complete", str(tmp / "bin.py:1")], None, "looks like a binary file"),
        (["complete", str(tmp / "latin.py:1")], None, "is not UTF-8 text"),
        (["complete", ok + ":9"], None, r"line 9 is past the end of .*ok.py \(2 lines\)"),
        (["complete", ok + ":1:20"], None, r"column 20 is past the end of line 1 .*\(5 characters\)"),
        (["complete", ok], None, "expected FILE:LINE or FILE:LINE:COL"),
        (["complete", ok + ":1:x"], None, "expected FILE:LINE"),
        (["fim", "--prefix", "-", "--suffix", "-"], "", "only one of --prefix and --suffix"),
        (["fim", "--prefix", "", "--suffix", ""], None, "empty prompt"),
        (
            ["complete", ok + ":1", "-m", str(tmp / "notamodel")],
            None,
            "model_type is 'llama', not 'starcoder2'",
        ),
        (["complete", ok + ":1", "--device", "tpu"], None, "device.*'tpu'"),
        (["complete", ok + ":1", "--dtype", "fp8"], None, "dtype"),
        (["complete", ok + ":1", "--temperature", "-1"], None, "temperature must be ≥ 0"),
        (["complete", ok + ":1", "--top-p", "0"], None, r"top-p must be in \(0, 1\]"),
        (["complete", ok + ":1", "--bogus"], None, "No such option: --bogus"),
        (["complete", "-:1"], b"\xff\xfe", "standard input is not UTF-8"),
    ]


def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, model, tmp_path):
    for args, stdin, message in _bad_inputs(tmp_path):
        if "-m" not in args:
            args = [*args, "-m", str(model)]
        code, out, err = sc2(capsys, monkeypatch, *args, stdin=stdin)
        assert code == 2, (args, err)
        assert out == "" and err.count("\n") == 1 and err.startswith("sc2: error: "), (args, err)
        assert __import__("re").search(message, err), (args, err)


def test_ctrl_c_while_streaming_exits_130_without_a_traceback(model, tmp_path):
    f = tmp_path / "f.py"
    f.write_text(SOURCE)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable,
        "-m",
        "sc2cli",
        "complete",
        f"{f}:5",
        "-m",
        str(model),
        "--raw",
        "--max-tokens",
        "900",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)  # streaming has begun
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert first and proc.returncode == 130
    assert b"Traceback" not in err


def test_version_and_help(capsys, monkeypatch):
    code, out, _ = sc2(capsys, monkeypatch, "--version")
    assert code == 0 and out.startswith("sc2 ")
    code, out, _ = sc2(capsys, monkeypatch, "complete", "-h")
    assert code == 0 and "FILE:LINE[:COL]" in out and "--byte-col" in out


@pytest.mark.parametrize("args", [[], ["config"]], ids=["sc2", "sc2-config"])
def test_a_command_group_alone_shows_its_help_plainly(capsys, monkeypatch, args):
    code, out, err = sc2(capsys, monkeypatch, *args)
    assert (code, err) == (0, "") and out.startswith(f"Usage: {' '.join(['sc2', *args])} ")


def _bad_settings(model: Path, tmp_path: Path) -> list[tuple[list[str], str]]:
    where = tmp_path / "f.py"
    where.write_text("x = 1\n")
    complete = ["complete", f"{where}:1", "-m", str(model), "--show-prompt"]
    return [
        ([*complete, "--budget", "10"], "--budget must be a whole number ≥ 16 or auto, got '10'"),
        ([*complete, "--max-tokens", "0"], "--max-tokens must be a whole number ≥ 1, got '0'"),
        ([*complete, "--dtype", "fp8"], "--dtype must be one of auto, bf16, fp16, fp32, got 'fp8'"),
        ([*complete, "--device", "tpu"], "--device must be one of auto, cpu, cuda, mps, got 'tpu'"),
        ([*complete, "--attn", "fast"], "--attn must be one of auto, sdpa, flash, eager, got 'fast'"),
        ([*complete, "--quantize", "int3"], "--quantize must be one of none, int8, int4, got 'int3'"),
        (["fim", "--prefix", "x", "-m", " "], "--model must be a folder"),
        (["serve", "-m", str(model), "--budget", "3"], "--budget must be a whole number ≥ 16"),
        (["bench", "--shape", "tiny", "--dtype", "fp8"], "--dtype must be one of"),
        (["bench", "--shape", "tiny", "--quantize", "int3"], "--quantize must be one of"),
    ]


def test_a_bad_setting_names_the_option_the_user_typed(capsys, monkeypatch, model, tmp_path):
    for args, message in _bad_settings(model, tmp_path):
        code, out, err = sc2(capsys, monkeypatch, *args)
        assert (code, out) == (2, "") and err.startswith(f"sc2: error: {message}"), (args, err)
        assert err.count("\n") == 1, err


def test_a_bad_setting_from_the_environment_or_the_file_names_its_source(
    capsys, monkeypatch, model, tmp_path
):
    where = tmp_path / "f.py"
    where.write_text("x = 1\n")
    args = ["complete", f"{where}:1", "-m", str(model), "--show-prompt"]
    monkeypatch.setenv("SC2_PROMPT_BUDGET", "3")
    _, _, err = sc2(capsys, monkeypatch, *args)
    assert (
        err == "sc2: error: SC2_PROMPT_BUDGET: prompt_budget must be a whole number ≥ 16 or auto, got '3'\n"
    )
    monkeypatch.delenv("SC2_PROMPT_BUDGET")
    config = Path(os.environ["SC2_CONFIG_DIR"]) / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"prompt_budget": 3}')
    _, _, err = sc2(capsys, monkeypatch, *args)
    assert err == f"sc2: error: {config}: prompt_budget must be a whole number ≥ 16 or auto, got '3'\n"


def test_help_lists_every_setting_names_the_server_token_and_quotes_the_readme(capsys, monkeypatch):
    from sc2cli.settings import KEYS

    _, out, _ = sc2(capsys, monkeypatch, "config", "set", "--help")
    assert all(key in " ".join(out.split()) for key in KEYS)
    _, out, _ = sc2(capsys, monkeypatch, "complete", "--help")
    assert "SC2_SERVER_TOKEN" in out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "SC2_SERVER_TOKEN" in readme
    quantize = " ".join(out.split()).split("--quantize", 1)[1].split(" --", 1)[0]
    figures = __import__("re").findall(r"~\d+(?:\.\d+)?x", quantize)
    assert all(figure in readme for figure in figures), (
        figures,
        quantize,
    )  # a figure quoted is measured there


def test_no_speculate_turns_the_drafts_off_and_changes_no_greedy_token(capsys, monkeypatch, model, repo):
    where = f"{repo}/src/app.py:5"
    args = ("complete", where, "-m", model, "--max-tokens", "12", "-f", "json")
    fast = json.loads(sc2(capsys, monkeypatch, *args)[1])
    plain = json.loads(sc2(capsys, monkeypatch, *args, "--no-speculate")[1])
    assert fast["tokens"] == plain["tokens"] and fast["text"] == plain["text"]
    assert plain["timings"]["drafted_tokens"] == plain["timings"]["accepted_tokens"] == 0
    assert set(fast["timings"]) >= {"drafted_tokens", "accepted_tokens", "acceptance_rate"}
