"""Settings: config file, SC2_* variables, command-line options and defaults, and the `sc2 config` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sc2cli import settings
from sc2cli.errors import InputError
from sc2cli.settings import Settings, load_settings, resolve_settings


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private config folder, and no SC2_* variable from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("SC2_"):
            monkeypatch.delenv(name)
    folder = tmp_path / "config"
    monkeypatch.setenv("SC2_CONFIG_DIR", str(folder))
    return folder


def write_config(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text, encoding="utf-8")


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from sc2cli.cli import main

    with pytest.raises(SystemExit) as exit:
        main(list(args))
    captured = capsys.readouterr()
    return exit.value.code, captured.out, captured.err


def test_defaults() -> None:
    assert load_settings() == Settings()
    assert Settings() == Settings(
        model="bigcode/starcoder2-3b",
        device="auto",
        dtype="auto",
        attn="auto",
        max_tokens=128,
        prompt_budget=None,
        offline=False,
        quantize="none",
    )


def test_option_beats_environment_beats_file_beats_default(config_dir: Path, monkeypatch) -> None:
    write_config(config_dir, json.dumps({"model": "7b", "max_tokens": 64, "dtype": "fp32", "attn": "eager"}))
    monkeypatch.setenv("SC2_MAX_TOKENS", "32")
    monkeypatch.setenv("SC2_DTYPE", "bf16")
    got, sources = resolve_settings({"max_tokens": 16, "device": None, "attn": None})
    assert (got.max_tokens, got.dtype, got.model, got.attn, got.device) == (16, "bf16", "7b", "eager", "auto")
    assert sources == {
        "model": "file",
        "device": "default",
        "dtype": "environment",
        "attn": "file",
        "max_tokens": "option",
        "prompt_budget": "default",
        "offline": "default",
        "quantize": "default",
        "engine": "default",
    }


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("device", "CUDA:1", "cuda:1"),
        ("device", "mps", "mps"),
        ("dtype", "FP16", "fp16"),
        ("attn", "flash", "flash"),
        ("max_tokens", " 7 ", 7),
        ("prompt_budget", "auto", None),
        ("prompt_budget", "4096", 4096),
        ("offline", "yes", True),
        ("offline", "0", False),
        ("model", " bigcode/starcoder2-15b ", "bigcode/starcoder2-15b"),
    ],
)
def test_values_from_the_environment_are_parsed(key, value, expected, monkeypatch) -> None:
    monkeypatch.setenv(f"SC2_{key.upper()}", value)
    assert getattr(load_settings(), key) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_tokens", "abc", "SC2_MAX_TOKENS: max_tokens must be a whole number ≥ 1, got 'abc'"),
        ("max_tokens", "0", "SC2_MAX_TOKENS: max_tokens must be a whole number ≥ 1, got '0'"),
        (
            "prompt_budget",
            "8",
            "SC2_PROMPT_BUDGET: prompt_budget must be a whole number ≥ 16 or auto, got '8'",
        ),
        ("device", "gpu", "SC2_DEVICE: device must be one of auto, cpu, cuda, mps, got 'gpu'"),
        ("dtype", "int8", "SC2_DTYPE: dtype must be one of auto, bf16, fp16, fp32, got 'int8'"),
        ("attn", "fast", "SC2_ATTN: attn must be one of auto, sdpa, flash, eager, got 'fast'"),
        ("offline", "maybe", "SC2_OFFLINE: offline must be true or false, got 'maybe'"),
        ("model", " ", "SC2_MODEL: model must be a folder"),
    ],
)
def test_a_bad_environment_value_names_the_variable_and_the_key(key, value, message, monkeypatch) -> None:
    monkeypatch.setenv(f"SC2_{key.upper()}", value)
    with pytest.raises(InputError) as failure:
        load_settings()
    assert str(failure.value).startswith(message)


def test_a_bad_option_value_names_the_option() -> None:
    with pytest.raises(InputError, match=r"^--max-tokens must be a whole number ≥ 1, got '-3'$"):
        load_settings({"max_tokens": "-3"})
    with pytest.raises(InputError, match="^--max-tokens must be a whole number"):
        load_settings({"max_tokens": True})  # a bool is not a number, though Python says it is an int
    with pytest.raises(InputError, match=r"^--budget must be a whole number ≥ 16 or auto, got '10'$"):
        load_settings({"prompt_budget": settings.Given("10", "--budget")})  # the option the user typed
    assert load_settings({"prompt_budget": settings.Given(None, "--budget")}).prompt_budget is None
    with pytest.raises(ValueError, match="'temperature' is not a setting"):
        load_settings({"temperature": 0.2})  # a caller's mistake, not the user's


def test_bad_config_files_name_the_file_and_the_key(config_dir: Path) -> None:
    path = config_dir / "config.json"
    write_config(config_dir, '{"max_tokens": 0}')
    with pytest.raises(InputError, match=rf"^{path}: max_tokens must be a whole number ≥ 1, got '0'$"):
        load_settings()
    write_config(config_dir, '{"temperature": 0.2}')
    with pytest.raises(InputError, match=rf"^{path}: unknown setting 'temperature'; remove it with"):
        load_settings()
    write_config(config_dir, '{"model": "7b",\n')
    with pytest.raises(InputError, match=rf"^{path}: not valid JSON \(line 2"):
        load_settings()
    write_config(config_dir, '["7b"]')
    with pytest.raises(InputError, match="expected a JSON object"):
        load_settings()
    write_config(config_dir, "")
    assert load_settings() == Settings()


def test_config_path_follows_sc2_config_dir_else_platformdirs(config_dir: Path, monkeypatch) -> None:
    assert settings.config_path() == config_dir / "config.json"
    monkeypatch.delenv("SC2_CONFIG_DIR")
    import platformdirs

    assert settings.config_path() == platformdirs.user_config_path("sc2") / "config.json"


def test_set_and_unset_write_the_file(config_dir: Path) -> None:
    assert settings.set_value("max-tokens", "64") == ("max_tokens", 64)
    assert settings.set_value("prompt_budget", "AUTO") == ("prompt_budget", "auto")
    assert settings.set_value("offline", "on") == ("offline", True)
    assert settings.set_value("model", "someone/starcoder2-ft") == ("model", "someone/starcoder2-ft")
    stored = json.loads((config_dir / "config.json").read_text())
    assert stored == {
        "max_tokens": 64,
        "prompt_budget": "auto",
        "offline": True,
        "model": "someone/starcoder2-ft",
    }
    got = load_settings()
    assert (got.max_tokens, got.prompt_budget, got.offline) == (64, None, True)
    assert settings.unset_value("max_tokens") is True
    assert settings.unset_value("max_tokens") is False
    assert "max_tokens" not in json.loads((config_dir / "config.json").read_text())
    with pytest.raises(InputError, match=r"^unknown setting 'colour'; known settings: model, device, dtype"):
        settings.set_value("colour", "red")
    with pytest.raises(
        InputError, match=r"^sc2 config set dtype: dtype must be one of auto, bf16, fp16, fp32"
    ):
        settings.set_value("dtype", "fp8")
    assert not list(config_dir.glob(".*.tmp"))  # the atomic write left nothing behind


def test_unset_cleans_an_unknown_key_out_of_the_file(config_dir: Path) -> None:
    write_config(config_dir, '{"temperature": 0.2, "model": "7b"}')
    assert settings.unset_value("temperature") is True
    assert load_settings().model == "7b"
    with pytest.raises(InputError, match="unknown setting 'colour'"):
        settings.unset_value("colour")


# ---------------------------------------------------------------------------------------------------------
# sc2 config
# ---------------------------------------------------------------------------------------------------------


def test_config_commands(config_dir: Path, capsys, monkeypatch) -> None:
    code, out, _ = run_cli(capsys, "config", "path")
    assert code == 0 and out == f"{config_dir / 'config.json'}\n"
    code, out, err = run_cli(capsys, "config", "set", "max_tokens", "64")
    assert code == 0 and out == "" and err == f"sc2: max_tokens = 64 saved in {config_dir / 'config.json'}\n"
    monkeypatch.setenv("SC2_MODEL", "7b")
    code, out, _ = run_cli(capsys, "config", "show")
    assert code == 0
    assert out.splitlines() == [
        "model = 7b  (SC2_MODEL)",
        "device = auto  (default)",
        "dtype = auto  (default)",
        "attn = auto  (default)",
        "max_tokens = 64  (file)",
        "prompt_budget = auto  (default)",
        "offline = false  (default)",
        "quantize = none  (default)",
        "engine = none  (default)",
    ]
    code, out, _ = run_cli(capsys, "config", "show", "--json")
    assert json.loads(out)["max_tokens"] == 64
    code, _, err = run_cli(capsys, "config", "unset", "max_tokens")
    assert code == 0 and "max_tokens removed from" in err


def test_config_errors_are_one_line(capsys) -> None:
    code, out, err = run_cli(capsys, "config", "set", "max_tokens", "lots")
    assert code == 2 and out == ""
    assert err == "sc2: error: sc2 config set max_tokens: max_tokens must be a whole number ≥ 1, got 'lots'\n"
    code, _, err = run_cli(capsys, "config", "set", "colour", "red")
    assert code == 2 and err.startswith("sc2: error: unknown setting 'colour'") and err.count("\n") == 1


def test_config_commands_do_not_import_torch(config_dir: Path) -> None:
    env = {**os.environ, "SC2_CONFIG_DIR": str(config_dir)}
    for args in (["config", "show"], ["config", "set", "dtype", "bf16"], ["--help"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "sc2cli", *args],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert "torch" not in imported and "huggingface_hub" not in imported, args


def test_config_set_where_it_cannot_write_is_one_line_and_saves_nothing(
    capsys, monkeypatch, tmp_path
) -> None:
    folder = tmp_path / "config"
    monkeypatch.setenv("SC2_CONFIG_DIR", str(folder))
    assert run_cli(capsys, "config", "set", "model", "3b")[0] == 0
    (folder / f".config.json.{os.getpid()}.tmp").mkdir()  # the temporary file cannot be written, even by root
    before = sorted(folder.iterdir()), (folder / "config.json").read_text()
    code, out, err = run_cli(capsys, "config", "set", "model", "7b")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(
        f"sc2: error: cannot write the config file {folder / 'config.json'}: Is a directory"
    )
    assert (
        "saved in" not in err and (sorted(folder.iterdir()), (folder / "config.json").read_text()) == before
    )
    (folder / f".config.json.{os.getpid()}.tmp").rmdir()
    before = sorted(folder.iterdir()), (folder / "config.json").read_text()

    def read_only(*args: object) -> None:  # what a read-only folder does to the rename (root ignores modes)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", read_only)
    for args in (("set", "model", "7b"), ("unset", "model")):
        code, out, err = run_cli(capsys, "config", *args)
        assert code == 1 and err.count("\n") == 1 and "Permission denied; nothing saved" in err, err
        assert (sorted(folder.iterdir()), (folder / "config.json").read_text()) == before  # no temp file left
