"""The GGUF writer, read back by a small GGUF reader written here from the format's description: header,
key-values, tensor entries, alignment, and each tensor's bytes against the checkpoint's."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from sc2cli.checkpoint.gguf import BF16, CONTROL, F32, NORMAL, UNUSED, bf16_to_f32, write_gguf
from sc2cli.checkpoint.safetensors import read_header
from sc2cli.errors import CheckpointError

from ..checkpoints import SPECIAL_TOKENS, hub_config, write_random_hub_checkpoint, write_test_tokenizer

VOCAB = 320  # more ids than the test tokenizer's ~300: the rest are unused


# ------------------------------------------------------------------------------------------------ a reader

SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    """A GGUF file's key-values, tensor entries and data start, parsed from scratch."""

    def __init__(self, path):
        self.raw = path.read_bytes()
        self.pos = 0
        assert self.raw[:4] == b"GGUF"
        self.pos = 4
        self.version, n_tensors, n_kv = self._take("<IQQ")
        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            (kind,) = self._take("<I")
            self.metadata[key] = self._value(kind)
        self.alignment = self.metadata.get("general.alignment", 32)
        self.tensors = {}
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._take("<I")
            dims = self._take(f"<{n_dims}Q")
            kind, offset = self._take("<IQ")
            self.tensors[name] = (kind, dims, offset)
        self.data_start = self.pos + (-self.pos % self.alignment)

    def _take(self, fmt):
        values = struct.unpack_from(fmt, self.raw, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def _string(self):
        (n,) = self._take("<Q")
        text = self.raw[self.pos : self.pos + n].decode("utf-8")
        self.pos += n
        return text

    def _value(self, kind):
        if kind == 8:
            return self._string()
        if kind == 9:
            item, count = self._take("<IQ")
            return [self._value(item) for _ in range(count)]
        return self._take("<" + SCALARS[kind])[0]

    def tensor_bytes(self, name):
        kind, dims, offset = self.tensors[name]
        n = 1
        for d in dims:
            n *= d
        start = self.data_start + offset
        return self.raw[start : start + n * (4 if kind == F32 else 2)]


def checkpoint(folder, dtype, **overrides):
    config = hub_config(vocab_size=VOCAB, **overrides)
    write_random_hub_checkpoint(folder, config, dtype)
    write_test_tokenizer(folder)
    return folder


def stored(folder, name):
    """A tensor's bytes as the checkpoint's safetensors file holds them."""
    for path in sorted(folder.glob("*.safetensors")):
        entry = read_header(path).get(name)
        if entry is not None:
            return path.read_bytes()[entry.begin : entry.end]
    raise KeyError(name)


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("bf16"), torch.bfloat16)


# ------------------------------------------------------------------------------------------------ tests


def test_a_bf16_checkpoint_round_trips_byte_for_byte(bf16_folder, tmp_path):
    path = write_gguf(bf16_folder, tmp_path / "out" / "model.gguf", "tiny-test")
    gguf = Reader(path)
    meta, config = gguf.metadata, json.loads((bf16_folder / "config.json").read_text())
    assert gguf.version == 3 and meta["general.architecture"] == "starcoder2"
    assert meta["general.name"] == "tiny-test" and meta["general.file_type"] == 32
    assert (meta["starcoder2.block_count"], meta["starcoder2.embedding_length"]) == (2, 64)
    assert (meta["starcoder2.attention.head_count"], meta["starcoder2.attention.head_count_kv"]) == (4, 2)
    assert meta["starcoder2.rope.freq_base"] == config["rope_theta"]
    assert meta["starcoder2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    layers = [f"blk.{i}.{n}" for i in range(2) for n in (
        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_up", "ffn_down",
    )]  # fmt: skip
    expected = {"token_embd.weight", "output_norm.weight", "output_norm.bias"}
    expected |= {f"{n}.{p}" for n in layers for p in ("weight", "bias")}
    assert set(gguf.tensors) == expected  # tied: no output.weight
    kind, dims, _ = gguf.tensors["blk.0.attn_k.weight"]
    assert kind == BF16 and dims == (64, 32)  # innermost first: (out 2 heads x 16, in 64) reversed
    assert gguf.tensors["blk.1.ffn_norm.bias"][:2] == (F32, (64,))
    assert gguf.data_start % 32 == 0 and all(offset % 32 == 0 for _, _, offset in gguf.tensors.values())
    last = max(gguf.tensors, key=lambda n: gguf.tensors[n][2])
    assert len(gguf.raw) == gguf.data_start + gguf.tensors[last][2] + len(gguf.tensor_bytes(last)) + (
        -len(gguf.tensor_bytes(last)) % 32
    )
    assert gguf.tensor_bytes("token_embd.weight") == stored(bf16_folder, "model.embed_tokens.weight")
    assert gguf.tensor_bytes("blk.1.ffn_down.weight") == stored(
        bf16_folder, "model.layers.1.mlp.c_proj.weight"
    )
    norm = torch.frombuffer(
        bytearray(stored(bf16_folder, "model.layers.0.input_layernorm.weight")), dtype=torch.bfloat16
    )
    widened = torch.frombuffer(bytearray(gguf.tensor_bytes("blk.0.attn_norm.weight")), dtype=torch.float32)
    assert torch.equal(norm.float(), widened)


def test_the_tokenizer_is_written_as_llama_cpp_reads_it(bf16_folder, tmp_path):
    tok = json.loads((bf16_folder / "tokenizer.json").read_text())
    meta = Reader(write_gguf(bf16_folder, tmp_path / "m.gguf")).metadata
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "starcoder"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == VOCAB
    assert tokens[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS and set(types[: len(SPECIAL_TOKENS)]) == {CONTROL}
    for text, i in tok["model"]["vocab"].items():
        if i >= len(SPECIAL_TOKENS):
            assert tokens[i] == text and types[i] == NORMAL
    size = max(tok["model"]["vocab"].values()) + 1
    assert tokens[size:] == [f"[PAD{i}]" for i in range(size, VOCAB)] and set(types[size:]) == {UNUSED}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    assert meta["tokenizer.ggml.merges"] == merges
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == 0  # from config.json


def test_tokenizer_config_names_the_special_tokens(bf16_folder, tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    for f in bf16_folder.iterdir():
        (folder / f.name).symlink_to(f)
    settings = {"bos_token": "<fim_pad>", "unk_token": {"content": "<file_sep>"}, "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    meta = Reader(write_gguf(folder, tmp_path / "m.gguf")).metadata
    assert meta["tokenizer.ggml.bos_token_id"] == SPECIAL_TOKENS.index("<fim_pad>")
    assert meta["tokenizer.ggml.unknown_token_id"] == SPECIAL_TOKENS.index("<file_sep>")
    assert meta["tokenizer.ggml.eos_token_id"] == 0 and meta["tokenizer.ggml.add_bos_token"] is True


def test_an_fp32_checkpoint_is_rounded_to_bf16_and_its_norms_kept(tmp_path):
    folder = checkpoint(tmp_path / "fp32", torch.float32, tie_word_embeddings=False)
    gguf = Reader(write_gguf(folder, tmp_path / "m.gguf"))
    assert gguf.tensors["output.weight"][:2] == (BF16, (64, VOCAB))
    for name, hf in [
        ("output.weight", "lm_head.weight"),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
    ]:
        bits = struct.unpack(f"<{len(stored(folder, hf)) // 4}I", stored(folder, hf))
        nearest_even = [(u + 0x7FFF + ((u >> 16) & 1)) >> 16 for u in bits]  # no NaN among random normals
        assert gguf.tensor_bytes(name) == struct.pack(f"<{len(bits)}H", *nearest_even)
    assert gguf.tensor_bytes("output_norm.bias") == stored(folder, "model.norm.bias")


def test_bf16_widens_to_f32_exactly():
    values = torch.tensor([0.0, -0.0, 1.0, -3.5, 1e-40, float("inf"), float("-inf"), 3.0e38, 1 / 3])
    b = values.to(torch.bfloat16)
    wide = torch.frombuffer(bf16_to_f32(bytes(b.view(torch.uint8).tolist())), dtype=torch.float32)
    assert torch.equal(wide, b.float())


def test_what_llama_cpp_cannot_read_is_refused_and_nothing_is_left(bf16_folder, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    for f in bf16_folder.iterdir():
        if f.name != "tokenizer.json":
            (folder / f.name).symlink_to(f)
    tok = json.loads((bf16_folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match="pre-tokenizer"):
        write_gguf(folder, tmp_path / "out" / "m.gguf")
    config = json.loads((bf16_folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="missing tensor model.layers.2"):
        write_gguf(folder, tmp_path / "out" / "m.gguf")


def test_a_write_that_fails_midway_leaves_no_file(bf16_folder, tmp_path, monkeypatch):
    from sc2cli.checkpoint import gguf

    def full_disk(out, tensor):
        out.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf, "_write_tensor", full_disk)
    with pytest.raises(OSError):
        write_gguf(bf16_folder, tmp_path / "out" / "m.gguf")
    assert list((tmp_path / "out").iterdir()) == []
