"""The packed-weight cache: quantize once, load the packed weights after; never trust a damaged file."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from sc2cli.checkpoint import packed
from sc2cli.checkpoint.load import MAP_WINDOW_BYTES, load_checkpoint
from sc2cli.folders import cache_folder
from sc2cli.model.config import ModelConfig
from sc2cli.model.quant import QuantizedLinear

from ..checkpoints import (
    MEMORY_TEST_SHAPE,
    hub_config,
    peak_rss_growth,
    write_random_hub_checkpoint,
    write_tiny_model,
)

SCHEMES = ["int8", "int4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=3)


def load(folder, quantize, kernels="int8=weight-only"):
    return load_checkpoint(folder, quantize=quantize, dtype="bf16", device="cpu", kernels=kernels)


def logits(model):
    with torch.no_grad():
        return model(torch.arange(3, 40)[None]).float()


def cache_files():
    return sorted((cache_folder() / "packed").glob("*.safetensors"))


@pytest.mark.parametrize("quantize", SCHEMES)
def test_the_second_load_reads_the_packed_weights_and_computes_the_same(folder, quantize):
    first = load(folder, quantize)
    assert "packed-weight cache" not in first.kernels and len(cache_files()) == 1
    second = load(folder, quantize)
    assert "packed-weight cache" in second.kernels
    assert torch.equal(logits(first), logits(second))
    assert second.model.embed_tokens.weight.dtype == torch.bfloat16


def test_each_scheme_and_kernel_path_has_its_own_file(folder):
    load(folder, "int4")
    load(folder, "int8", kernels="int8=weight-only")
    load(folder, "int8", kernels="int8=dynamic")
    assert len(cache_files()) == 3 and all(f.stat().st_mode & 0o777 for f in cache_files())


def _damage_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [_damage_last_byte, lambda p: os.truncate(p, p.stat().st_size - 3), lambda p: p.write_bytes(b"\x08" + b"\0" * 7 + b"{}")],
    ids=["flipped-byte", "truncated", "garbage"],
)  # fmt: skip
def test_a_damaged_cache_file_is_ignored_and_rebuilt(folder, damage):
    fresh = logits(load(folder, "int4"))
    [path] = cache_files()
    damage(path)
    again = load(folder, "int4")
    assert "packed-weight cache" not in again.kernels  # quantized anew, not read from the damaged file
    assert torch.equal(logits(again), fresh)
    assert "packed-weight cache" in load(folder, "int4").kernels  # and rewritten whole


def test_a_file_of_another_user_is_not_trusted(folder, monkeypatch):
    load(folder, "int4")
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache_files()[0]).st_uid + 1)
    assert "packed-weight cache" not in load(folder, "int4").kernels


def test_a_changed_checkpoint_gets_a_new_cache_file(tmp_path):
    target = write_tiny_model(tmp_path / "t", seed=1)
    before = logits(load(target, "int4"))
    write_tiny_model(tmp_path / "t", seed=5)  # new weights: the file's size may match, its mtime does not
    stat = (target / "model.safetensors").stat()
    os.utime(target / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = load(target, "int4")
    assert "packed-weight cache" not in after.kernels and not torch.equal(logits(after), before)
    assert len(cache_files()) == 2


def test_an_unwritable_cache_folder_only_costs_the_cache(folder, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SC2_CACHE_DIR", str(blocker))
    assert "packed-weight cache" not in load(folder, "int4").kernels
    assert "packed-weight cache" not in load(folder, "int4").kernels


def _age(path, days):
    when = os.stat(path).st_mtime - days * 86400
    os.utime(path, (when, when))


def test_a_write_deletes_packed_files_unused_for_a_month_and_a_read_marks_its_file_used(folder, tmp_path):
    load(folder, "int4")
    [used] = cache_files()
    _age(used, packed.UNUSED_DAYS + 1)
    assert "packed-weight cache" in load(folder, "int4").kernels  # read: now used again
    assert os.stat(used).st_mtime > time.time() - 60
    stale, recent = (cache_folder() / "packed" / f"{c * 40}.safetensors" for c in "ab")  # other keys
    crashed, unrelated = (
        cache_folder() / "packed" / f".{'c' * 40}.safetensors.12.tmp",
        cache_folder() / "packed" / "notes.txt",
    )
    linked = cache_folder() / "packed" / f"{'d' * 40}.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    for path in (stale, recent, crashed, unrelated, outside):
        path.write_bytes(b"old")
    linked.symlink_to(outside)
    for path in (stale, unrelated, outside):
        _age(path, packed.UNUSED_DAYS + 1)
    _age(recent, packed.UNUSED_DAYS - 1)  # another environment's, used within the month
    _age(crashed, 2)
    load(folder, "int8")  # a write
    left = {p.name for p in (cache_folder() / "packed").iterdir()}
    assert stale.name not in left and crashed.name not in left
    assert {recent.name, unrelated.name, linked.name, used.name} <= left and outside.exists()


def test_pruning_spares_other_users_files(folder, monkeypatch):
    stale = cache_folder() / "packed" / f"{'a' * 40}.safetensors"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"old")
    _age(stale, packed.UNUSED_DAYS + 1)
    monkeypatch.setattr(packed, "owned_by_user", lambda info: False)
    assert packed.prune(stale.parent, keep=stale.parent / "other") == [] and stale.exists()
    monkeypatch.undo()
    assert packed.prune(stale.parent, keep=stale.parent / "other") == [stale] and not stale.exists()


def test_the_writer_leaves_no_temporary_file(folder):
    load(folder, "int8")
    assert [p.name for p in (cache_folder() / "packed").iterdir()] == [cache_files()[0].name]
    linears = {n for n, m in load(folder, "int8").named_modules() if isinstance(m, QuantizedLinear)}
    [path] = cache_files()
    raw = path.read_bytes()
    key = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["sc2_key"]
    assert packed.packed_usable(path, key, linears)
    assert not packed.packed_usable(path, "another key", linears)
    assert not packed.packed_usable(path, key, linears - {"lm_head"})


@pytest.mark.parametrize("quantize", SCHEMES)
def test_quantizing_peaks_near_the_bf16_weights(tmp_path, quantize):
    """Peak RSS while loading and quantizing stays within 1.15x the bf16 weights: each matrix is quantized
    in row blocks and its bf16 original freed before the next."""
    config = hub_config(**MEMORY_TEST_SHAPE)
    folder = write_random_hub_checkpoint(tmp_path / "big", config, torch.bfloat16)
    bf16_bytes = ModelConfig.from_dict(config).weight_bytes(2)
    warm_up = (  # the quantizers' code and buffers, before measuring
        "from sc2cli.checkpoint.load import load_checkpoint\n"
        "from sc2cli.model.int8 import WeightOnlyInt8Linear\nfrom sc2cli.model.quant import Int4Linear\n"
        "small = torch.nn.Linear(256, 256).bfloat16()\n"
        "Int4Linear.from_linear(small), WeightOnlyInt8Linear.from_linear(small)"
    )
    load = (
        f"model = load_checkpoint({str(folder)!r}, dtype='bf16', device='cpu', quantize={quantize!r}, "
        "kernels='int8=weight-only,int4-prompt=tinygemm,int4-decode=tinygemm')"  # memory, not a kernel probe
    )
    growth = peak_rss_growth(load, warm_up)
    assert growth <= 1.15 * bf16_bytes + MAP_WINDOW_BYTES, (growth, bf16_bytes)  # + the file's mapped window
