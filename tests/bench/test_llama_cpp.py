"""llama.cpp beside sc2 in `sc2 bench`: finding a build, the cached GGUF files, llama-bench's JSON lines,
and the bench's wiring, with stand-in `llama-bench` and `llama-quantize` scripts so that it runs where
llama.cpp is not installed. tests/bench/test_llama_cpp_real.py runs the real one when it is at hand."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from sc2cli.bench import run
from sc2cli.bench.llama_cpp import (
    ENV,
    LlamaCppError,
    find_llama_cpp,
    gguf_for,
    gguf_path,
    gguf_usable,
    parse_jsonl,
    tokens_per_second,
)
from sc2cli.bench.run import BenchOptions, run_bench
from sc2cli.cli import main
from sc2cli.errors import InputError
from sc2cli.folders import cache_folder

from ..checkpoints import hub_config, write_random_hub_checkpoint, write_test_tokenizer

# One line of a real llama-bench's `-o jsonl` output (build 0c1e570), cut to the fields read and a few more.
REAL_LINE = (
    '{"build_commit": "0c1e570", "build_number": 1, "cpu_info": "AMD EPYC", "backends": "CPU", '
    '"model_type": "starcoder2 ?B Q4_K - Medium", "n_threads": 2, "n_prompt": 32, "n_gen": 0, '
    '"n_depth": 0, "avg_ns": 627943682, "stddev_ns": 0, "avg_ts": 50.959984, "stddev_ts": 0.000000, '
    '"samples_ns": [ 627943682 ],"samples_ts": [ 50.96 ]}'
)
# A stand-in llama-bench: logs its arguments, prints one JSON line per test as the real one does
# (prompt tokens at 1000 tok/s, generated ones at 100), or fails as told by $FAKE_LLAMA_FAIL.
FAKE_BENCH = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LLAMA_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_LLAMA_FAIL"):
    print("main: error: failed to load model", file=sys.stderr)
    sys.exit(1)
value = lambda flag: int(args[args.index(flag) + 1])
p, n = value("-p"), value("-n")
print("build: 0c1e570 (1) with cc for x86_64-linux-gnu", file=sys.stderr)
print(json.dumps({{"build_commit": "0c1e570", "build_number": 1, "n_prompt": p, "n_gen": n,
                  "avg_ts": 1000.0 if p else 100.0}}))
"""
FAKE_QUANTIZE = """#!{python}
import shutil, sys
if sys.argv[3] == "Q4_K_M":
    print("llama_model_quantize: failed to quantize: out of luck", file=sys.stderr)
    sys.exit(1)
shutil.copyfile(sys.argv[1], sys.argv[2])
"""


def script(path, text):
    path.write_text(text.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A llama.cpp source tree with stand-ins in build/bin; returns the bin folder."""
    folder = tmp_path / "llama.cpp" / "build" / "bin"
    folder.mkdir(parents=True)
    script(folder / "llama-bench", FAKE_BENCH)
    script(folder / "llama-quantize", FAKE_QUANTIZE)
    monkeypatch.setenv("FAKE_LLAMA_LOG", str(tmp_path / "calls.jsonl"))
    return folder


def calls(tmp_path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    write_random_hub_checkpoint(folder, hub_config(vocab_size=320), torch.bfloat16)
    write_test_tokenizer(folder)
    return folder


@pytest.fixture
def quick(monkeypatch):
    """The bench without its memory-bandwidth measurement (half a gigabyte copied ten times)."""
    monkeypatch.setattr(run, "memory_bandwidth", lambda device=None: {"copy_gbps": 1.0, "read_gbps": 1.0})


# ------------------------------------------------------------------------------------------------ finding


def test_found_by_its_bin_folder_its_source_tree_or_the_binary(fake_bin, tmp_path):
    tree = fake_bin.parent.parent
    for given in (fake_bin, tree, fake_bin / "llama-bench"):
        found = find_llama_cpp(str(given))
        assert found is not None and found.bin == fake_bin and found.source == "--llama-cpp"
    (tmp_path / "empty").mkdir()
    (tmp_path / "llama-bench").write_text("not executable")
    for wrong in (tmp_path / "empty", tmp_path / "missing", tmp_path / "llama-bench"):
        with pytest.raises(InputError, match="--llama-cpp .*: no llama-bench there"):
            find_llama_cpp(str(wrong))
    assert find_llama_cpp("none") is None


def test_then_the_environment_then_path(fake_bin, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(fake_bin.parent.parent))
    assert find_llama_cpp(None).source == f"${ENV}"
    assert find_llama_cpp(str(fake_bin)).source == "--llama-cpp"  # the option wins
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match=r"\$SC2_LLAMA_CPP=.*nowhere: no llama-bench there"):
        find_llama_cpp(None)
    monkeypatch.setenv(ENV, "none")
    assert find_llama_cpp(None) is None
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{fake_bin}")
    found = find_llama_cpp(None)
    assert found.bin == fake_bin.resolve() and found.source == "PATH"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_llama_cpp(None) is None


# ------------------------------------------------------------------------------------------------ llama-bench output


def test_json_lines_give_the_figure_of_the_test_asked_for():
    decode = REAL_LINE.replace('"n_prompt": 32, "n_gen": 0', '"n_prompt": 0, "n_gen": 16').replace(
        "50.959984", "7.5"
    )
    records = parse_jsonl(f"warming up\n{REAL_LINE}\n{{not json\n{decode}\n")
    assert len(records) == 2
    assert tokens_per_second(records, 32, 0) == pytest.approx(50.959984)
    assert tokens_per_second(records, 0, 16) == 7.5
    with pytest.raises(LlamaCppError, match="no figure for 64 prompt"):
        tokens_per_second(records, 64, 0)
    with pytest.raises(LlamaCppError):
        tokens_per_second(parse_jsonl(REAL_LINE.replace("50.959984", "0")), 32, 0)


# ------------------------------------------------------------------------------------------------ GGUF files


def test_gguf_files_are_written_once_and_quantized_by_llama_quantize(folder, fake_bin):
    llama = find_llama_cpp(str(fake_bin))
    bf16 = gguf_for(folder, "BF16", llama, "test")
    assert bf16.parent.parent == cache_folder() / "gguf" and bf16.name == "bf16.gguf"
    assert bf16.parent.stat().st_mode & 0o077 == 0
    written = bf16.stat().st_mtime_ns
    q8 = gguf_for(folder, "Q8_0", llama, "test")
    assert q8 == bf16.with_name("q8_0.gguf") and q8.read_bytes() == bf16.read_bytes()
    assert bf16.stat().st_mtime_ns == written  # the BF16 file was reused
    with pytest.raises(LlamaCppError, match="llama-quantize failed .*out of luck"):
        gguf_for(folder, "Q4_K_M", llama, "test")
    assert sorted(p.name for p in bf16.parent.iterdir()) == ["bf16.gguf", "q8_0.gguf"]  # no leftovers


def test_a_cached_file_is_trusted_only_when_it_is_ours_and_whole(folder, fake_bin, monkeypatch):
    path = gguf_for(folder, "BF16", find_llama_cpp(str(fake_bin)), "test")
    assert gguf_usable(path)
    planted = path.with_name("q8_0.gguf")
    planted.symlink_to(path)
    assert not gguf_usable(planted)  # a link could lead anywhere
    with monkeypatch.context() as m:
        m.setattr(os, "getuid", lambda: path.stat().st_uid + 1)
        assert not gguf_usable(path)
    path.write_bytes(b"half a file")
    assert not gguf_usable(path)
    assert gguf_usable(gguf_for(folder, "BF16", find_llama_cpp(str(fake_bin)), "test"))  # written again


def test_a_changed_checkpoint_has_other_gguf_files(folder, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    before = gguf_path(copy, "BF16")
    os.utime(copy / "config.json", ns=(1, 1))
    assert gguf_path(copy, "BF16") != before and gguf_path(copy, "Q8_0").name == "q8_0.gguf"


# ------------------------------------------------------------------------------------------------ the bench


def test_bench_measures_llama_cpp_interleaved_and_prints_the_ratios(
    folder, fake_bin, tmp_path, quick, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    args = ["bench", "-m", str(folder), "--prompt-lengths", "16", "--decode-tokens", "4", "--runs", "2"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--quantize", "int8", "--llama-cpp", str(fake_bin.parent.parent)])
    assert done.value.code == 0
    table = capsys.readouterr().out
    assert "llama.cpp Q8_0" in table and "sc2 / llama.cpp Q8_0" in table and "1000.0" in table
    assert "sc2 / llama.cpp BF16" in table  # a quantized mode's prompts are held to BF16's too
    threads = str(torch.get_num_threads())
    prefill = ["-t", threads, "-p", "16", "-n", "0", "-r", "1", "-o", "jsonl", "-ngl", "0"]
    decode = ["-t", threads, "-p", "0", "-n", "4", "-r", "1", "-o", "jsonl", "-d", "64", "-ngl", "0"]
    q8, bf16 = str(gguf_path(folder, "Q8_0")), str(gguf_path(folder, "BF16"))
    rounds = [[q8, prefill], [bf16, prefill]] * 2 + [[q8, decode]] * 2
    assert calls(tmp_path) == [["-m", gguf, *rest] for gguf, rest in rounds]  # one run each per round


def test_a_quantized_mode_is_held_to_bf16_prompts_even_when_its_own_file_fails(folder, fake_bin, quick):
    options = BenchOptions(model=str(folder), prompt_lengths=(16,), decode_tokens=4, runs=1, quantize="int4",
                           llama_cpp=str(fake_bin))  # fmt: skip
    report = run_bench(options).to_json()  # the stand-in llama-quantize fails for Q4_K_M
    assert any(note.startswith("llama.cpp Q4_K_M:") for note in report["notes"])
    assert set(report["ratios"]) == {"prefill_16_tok_s"}
    sc2 = report["results"]["prefill_16_tok_s"]["sc2"]
    assert report["ratios"]["prefill_16_tok_s"] == {
        "sc2 / llama.cpp BF16": pytest.approx(sc2 / 1000, rel=0.01)
    }


def test_bench_json_has_the_ratios_and_notes_what_failed(folder, fake_bin, quick, capsys, monkeypatch):
    options = BenchOptions(
        model=str(folder), prompt_lengths=(16,), decode_tokens=4, runs=1, llama_cpp=str(fake_bin)
    )
    report = run_bench(options).to_json()
    assert report["results"]["decode_tok_s"]["llama.cpp BF16"] == 100.0
    sc2 = report["results"]["prefill_16_tok_s"]["sc2"]
    assert report["ratios"]["prefill_16_tok_s"]["sc2 / llama.cpp BF16"] == pytest.approx(sc2 / 1000, rel=0.01)
    assert report["setup"]["llama_cpp_build"] == "0c1e570 (1)"
    monkeypatch.setenv("FAKE_LLAMA_FAIL", "1")
    report = run_bench(options).to_json()
    assert not any(e.startswith("llama.cpp") for values in report["results"].values() for e in values)
    assert report["notes"] == [
        "llama.cpp BF16: llama-bench failed (exit 1): main: error: failed to load model"
    ]
    assert report["ratios"] == {}


def test_speculation_on_the_overlap_workload_is_set_against_llama_cpps_plain_decode(folder, fake_bin, quick):
    options = BenchOptions(model=str(folder), prompt_lengths=(16,), decode_tokens=4, runs=1, speculate=True,
                           llama_cpp=str(fake_bin))  # fmt: skip
    report = run_bench(options).to_json()
    overlap = report["results"]["decode_overlap_tok_s"]
    assert overlap["llama.cpp BF16"] == report["results"]["decode_tok_s"]["llama.cpp BF16"] == 100.0
    ratio = report["ratios"]["decode_overlap_tok_s"]["sc2 / llama.cpp BF16"]
    assert ratio == pytest.approx(overlap["sc2"] / 100.0, rel=0.01)
    assert any("plain decode" in note for note in report["notes"])


def test_without_llama_cpp_the_bench_runs_as_before_and_says_so(folder, tmp_path, quick, monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    options = BenchOptions(
        model=str(folder), prompt_lengths=(16,), decode_tokens=4, runs=1, look_for_llama_cpp=True
    )
    report = run_bench(options).to_json()
    assert report["notes"] == ["llama.cpp: not found (give --llama-cpp PATH or set SC2_LLAMA_CPP to compare)"]
    assert set(report["results"]["decode_tok_s"]) == {"sc2"}
    with pytest.raises(SystemExit) as done:
        main(["bench", "-m", str(folder), "--llama-cpp", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and "no llama-bench there" in err


def test_random_shapes_are_written_to_disk_for_a_llama_cpp_given_by_path(
    fake_bin, tmp_path, quick, monkeypatch
):
    small = {"prompt_lengths": (16,), "decode_tokens": 4, "runs": 1}
    report = run_bench(BenchOptions(shape="tiny", layers=1, llama_cpp=str(fake_bin), **small)).to_json()
    assert report["setup"]["model"] == "random tiny" and "llama.cpp BF16" in report["results"]["decode_tok_s"]
    written = calls(tmp_path)[0][1]
    assert written.startswith(str(cache_folder() / "gguf"))
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("PATH", str(fake_bin))
    report = run_bench(BenchOptions(shape="tiny", layers=1, look_for_llama_cpp=True, **small)).to_json()
    assert "not run on random --shape weights" in report["notes"][0] and len(calls(tmp_path)) == 2
