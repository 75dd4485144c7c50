"""A StarCoder2 checkpoint as a GGUF file, the format llama.cpp reads, so that it runs the same weights.

A GGUF file is `GGUF | version 3 | tensor count | key-value count`, the key-values (the architecture's
hyper-parameters and the tokenizer), one entry per tensor (name, dimensions innermost first, type, offset),
zeros up to a multiple of 32 bytes, then each tensor's bytes, each padded to 32. All little-endian.

What llama.cpp's own converter writes for a StarCoder2 folder, written here without it: matrices in BF16,
norms and biases in F32, the names llama.cpp's `starcoder2` architecture looks up (`token_embd`,
`blk.N.attn_q` ... `output_norm`, `output` when untied), and the byte-level BPE from tokenizer.json
(`tokenizer.ggml.pre` is `starcoder`: digits split one by one, then GPT-2's byte-level rules).

Streamed and torch-free for bf16 checkpoints (the bigcode bf16 files, the tiny model): matrices are
copied byte for byte and bf16 norms widened to f32 exactly, a chunk at a time. An fp32, fp16 or fp64
checkpoint's matrices are rounded to bf16 (to nearest even, as the converter does) by torch, imported
only then. Written to a temporary file and renamed: a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CheckpointError
from ..model.config import ModelConfig
from .layout import CONFIG, TOKENIZER, checkpoint_files, read_config
from .safetensors import TensorEntry, checkpoint_entries

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32  # llama.cpp's default (`general.alignment` unset)
CHUNK_BYTES = 16 << 20
# value types
UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
# tensor types, and the file type of a file whose matrices are BF16
F32, BF16 = 0, 30
FILE_TYPE_BF16 = 32
QUANTIZATION_VERSION = 2
# token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# tokenizer_config.json's `<kind>_token` -> the word in its GGUF key, `tokenizer.ggml.<word>_token_id` (sic)
SPECIAL_TOKENS = {
    "bos": "bos",
    "eos": "eos",
    "unk": "unknown",
    "sep": "seperator",
    "pad": "padding",
    "mask": "mask",
}
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the file: its GGUF name and type, its shape as the checkpoint has it (outermost
    first), and where its values come from."""

    name: str
    kind: int  # F32 or BF16
    shape: tuple[int, ...]
    source: TensorEntry

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * (4 if self.kind == F32 else 2)


def write_gguf(folder: Path, path: Path, name: str | None = None) -> Path:
    """Write `folder`'s checkpoint (config.json, safetensors, tokenizer.json) to `path` as a BF16 GGUF."""
    config = read_config(folder)
    tensors = gguf_tensors(config, checkpoint_entries(checkpoint_files(folder)))
    metadata = hyperparameters(config, name or folder.name) + tokenizer_metadata(folder, config)
    header = file_header(metadata, tensors)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as out:
            out.write(header)
            for tensor in tensors:
                _write_tensor(out, tensor)
                out.write(b"\0" * (-tensor.nbytes % ALIGNMENT))
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def gguf_tensors(config: ModelConfig, entries: dict[str, TensorEntry]) -> list[GgufTensor]:
    """Every tensor llama.cpp's `starcoder2` loads, in file order, each checked against config.json."""
    if not config.use_bias:
        raise CheckpointError("config.json: use_bias is false; llama.cpp's StarCoder2 needs the biases")
    h, v = config.hidden_size, config.vocab_size
    wanted = [("model.embed_tokens.weight", "token_embd.weight", (v, h))]
    for i in range(config.num_hidden_layers):
        for name, shape in sorted(_layer_shapes(config).items()):
            module, _, param = name.rpartition(".")
            wanted.append((f"model.layers.{i}.{name}", f"blk.{i}.{LAYER_NAMES[module]}.{param}", shape))
    wanted += [
        ("model.norm.bias", "output_norm.bias", (h,)),
        ("model.norm.weight", "output_norm.weight", (h,)),
    ]
    if not config.tie_word_embeddings:
        wanted.append(("lm_head.weight", "output.weight", (v, h)))
    return [_tensor(entries, hf, gg, shape) for hf, gg, shape in wanted]


def _layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Each tensor of a layer (its name under `model.layers.N.`) and its shape."""
    h, kv, ff = config.hidden_size, config.num_key_value_heads * config.head_dim, config.intermediate_size
    matrices = {
        "self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, h), "mlp.c_fc": (ff, h), "mlp.c_proj": (h, ff),
    }  # fmt: skip  # (out, in)
    shapes = {
        f"{norm}.{p}": (h,)
        for norm in ("input_layernorm", "post_attention_layernorm")
        for p in ("weight", "bias")
    }
    for module, shape in matrices.items():
        shapes |= {f"{module}.weight": shape, f"{module}.bias": shape[:1]}
    return shapes


def _tensor(entries: dict[str, TensorEntry], hf: str, gg: str, shape: tuple[int, ...]) -> GgufTensor:
    entry = entries.get(hf)
    if entry is None:
        raise CheckpointError(f"missing tensor {hf} in the checkpoint")
    if entry.shape != shape:
        raise CheckpointError(
            f"{entry.path}: tensor {hf} has shape {list(entry.shape)}, but config.json implies {list(shape)}"
        )
    return GgufTensor(gg, F32 if len(shape) == 1 else BF16, shape, entry)


# ------------------------------------------------------------------------------------------------ metadata

Metadata = list[tuple[str, int, Any]]  # (key, value type, value); an array's type is (ARRAY, item type)


def hyperparameters(config: ModelConfig, name: str) -> Metadata:
    arch = "starcoder2"
    return [
        ("general.architecture", STRING, arch),
        ("general.type", STRING, "model"),
        ("general.name", STRING, name),
        (f"{arch}.block_count", UINT32, config.num_hidden_layers),
        (f"{arch}.context_length", UINT32, config.max_position_embeddings),
        (f"{arch}.embedding_length", UINT32, config.hidden_size),
        (f"{arch}.feed_forward_length", UINT32, config.intermediate_size),
        (f"{arch}.attention.head_count", UINT32, config.num_attention_heads),
        (f"{arch}.attention.head_count_kv", UINT32, config.num_key_value_heads),
        (f"{arch}.rope.freq_base", FLOAT32, config.rope_theta),
        (f"{arch}.attention.layer_norm_epsilon", FLOAT32, config.norm_epsilon),
        ("general.file_type", UINT32, FILE_TYPE_BF16),
        ("general.quantization_version", UINT32, QUANTIZATION_VERSION),
    ]


def tokenizer_metadata(folder: Path, config: ModelConfig) -> Metadata:
    """tokenizer.json as llama.cpp's BPE tokenizer reads it: every id's token and type (ids the file lacks
    are unused `[PADn]`), the merges, the special tokens' ids. (A folder with only vocab.json and
    merges.txt is refused: sc2's own checkpoints and the bigcode repos have tokenizer.json.)"""
    try:
        tok = json.loads((folder / TOKENIZER).read_text(encoding="utf-8"))
        model = tok["model"]
        if model.get("type", "BPE") != "BPE":
            raise CheckpointError(
                f"{folder / TOKENIZER}: a {model.get('type')} tokenizer; llama.cpp's needs BPE"
            )
        tokens, types = _vocabulary(tok, config.vocab_size, folder)
        merges = [
            m if isinstance(m, str) else " ".join(p.replace(" ", "Ġ") for p in m) for m in model["merges"]
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{folder / TOKENIZER}: unreadable tokenizer ({e})") from None
    ids = _special_ids(folder, tok, config)
    adds = _adds_special_tokens(folder, tok)
    return [
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.pre", STRING, _pre_tokenizer(tok, folder)),
        ("tokenizer.ggml.tokens", (ARRAY, STRING), tokens),
        ("tokenizer.ggml.token_type", (ARRAY, INT32), types),
        ("tokenizer.ggml.merges", (ARRAY, STRING), merges),
        *((f"tokenizer.ggml.{SPECIAL_TOKENS[kind]}_token_id", UINT32, i) for kind, i in ids.items()),
        *((f"tokenizer.ggml.add_{kind}_token", BOOL, value) for kind, value in adds.items()),
    ]


def _vocabulary(tok: dict, size: int, folder: Path) -> tuple[list[str], list[int]]:
    by_id: dict[int, str] = {int(i): t for t, i in tok["model"]["vocab"].items()}
    kinds = dict.fromkeys(by_id, NORMAL)
    for added in tok.get("added_tokens", []):
        i, text = int(added["id"]), added["content"]
        by_id[i] = text
        special = added.get("special") or (text.startswith("<|") and text.endswith("|>"))
        kinds[i] = CONTROL if special else USER_DEFINED
    if by_id and max(by_id) >= size:
        raise CheckpointError(f"{folder / TOKENIZER}: token id {max(by_id)} is beyond vocab_size {size}")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    return tokens, [kinds.get(i, UNUSED) for i in range(size)]


def _pre_tokenizer(tok: dict, folder: Path) -> str:
    """StarCoder2's pre-tokenizer (each digit apart, then GPT-2's byte-level split) is llama.cpp's
    `starcoder`. llama.cpp names each pre-tokenizer it implements rather than describing one, so any other
    is refused rather than guessed: a wrong name would tokenize differently without an error."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    digits, byte_level = steps if len(steps) == 2 else ({}, {})
    if not (
        digits.get("type") == "Digits"
        and digits.get("individual_digits")
        and byte_level.get("type") == "ByteLevel"
        and byte_level.get("use_regex", True)
    ):
        raise CheckpointError(
            f"{folder / TOKENIZER}: not StarCoder2's pre-tokenizer; llama.cpp would split text differently"
        )
    return "starcoder"


def _optional_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    return value if isinstance(value, dict) else {}


def _special_ids(folder: Path, tok: dict, config: ModelConfig) -> dict[str, int]:
    """Each special token's id: named in tokenizer_config.json (`bos_token`: text or {content}), else
    config.json's `bos_token_id` and the like."""
    settings = _optional_json(folder / "tokenizer_config.json")
    raw_config = _optional_json(folder / CONFIG)
    added = {a["content"]: int(a["id"]) for a in tok.get("added_tokens", [])}
    ids: dict[str, int] = {}
    for kind in SPECIAL_TOKENS:
        entry = settings.get(f"{kind}_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        i = added.get(text) if isinstance(text, str) else None
        i = i if i is not None else raw_config.get(f"{kind}_token_id")
        if isinstance(i, int) and 0 <= i < config.vocab_size:
            ids[kind] = i
    return ids


def _adds_special_tokens(folder: Path, tok: dict) -> dict[str, bool]:
    """Whether llama.cpp should put BOS/EOS around a prompt: never after a byte-level post-processor (StarCoder2's),
    else as tokenizer_config.json says."""
    post = tok.get("post_processor") or {}
    if post.get("type") == "ByteLevel":
        return {"bos": False, "eos": False}
    settings = _optional_json(folder / "tokenizer_config.json")
    return {
        k: settings[f"add_{k}_token"]
        for k in ("bos", "eos")
        if isinstance(settings.get(f"add_{k}_token"), bool)
    }


# ------------------------------------------------------------------------------------------------ encoding


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


SCALARS = {UINT32: "<I", INT32: "<i", FLOAT32: "<f", BOOL: "<?"}


def _value(kind: int | tuple[int, int], value: Any) -> bytes:
    if isinstance(kind, tuple):
        item = kind[1]
        head = struct.pack("<IIQ", ARRAY, item, len(value))
        if item == STRING:
            return head + b"".join(_string(v) for v in value)
        return head + array("i" if item == INT32 else "I", value).tobytes()
    body = _string(value) if kind == STRING else struct.pack(SCALARS[kind], value)
    return struct.pack("<I", kind) + body


def file_header(metadata: Metadata, tensors: list[GgufTensor]) -> bytes:
    """Everything before the first tensor's bytes: counts, key-values, tensor entries, padding."""
    if sys.byteorder != "little":
        raise CheckpointError("writing GGUF files needs a little-endian machine")
    parts = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(metadata))]
    parts += [_string(key) + _value(kind, value) for key, kind, value in metadata]
    offset = 0
    for t in tensors:
        dims = tuple(reversed(t.shape))  # ggml counts dimensions from the innermost
        parts.append(_string(t.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, t.kind, offset))
        offset += t.nbytes + (-t.nbytes % ALIGNMENT)
    header = b"".join(parts)
    return header + b"\0" * (-len(header) % ALIGNMENT)


# ------------------------------------------------------------------------------------------------ tensor data


def _chunks(entry: TensorEntry) -> Iterator[bytearray]:
    """The tensor's bytes as stored, in chunks of whole values."""
    step = CHUNK_BYTES - CHUNK_BYTES % entry.itemsize
    with open(entry.path, "rb") as f:
        f.seek(entry.begin)
        for start in range(entry.begin, entry.end, step):
            chunk = bytearray(min(step, entry.end - start))
            if f.readinto(chunk) != len(chunk):
                raise CheckpointError(f"{entry.path}: truncated inside tensor {entry.name}")
            yield chunk


def _write_tensor(out: BinaryIO, tensor: GgufTensor) -> None:
    source = tensor.source.dtype
    target = "F32" if tensor.kind == F32 else "BF16"
    for chunk in _chunks(tensor.source):
        if source == target:
            out.write(chunk)
        elif (source, target) == ("BF16", "F32"):
            out.write(bf16_to_f32(chunk))
        elif target == "F32":  # F16 or F64 norms and biases: small
            code = "e" if source == "F16" else "d"
            out.write(
                array("f", struct.unpack(f"<{len(chunk) // tensor.source.itemsize}{code}", chunk)).tobytes()
            )
        else:
            out.write(_to_bf16(chunk, source))


def bf16_to_f32(chunk: bytes | bytearray) -> bytearray:
    """bf16 values widened to f32, exactly: each value's two bytes become the high half of four."""
    wide = bytearray(2 * len(chunk))
    wide[2::4] = chunk[0::2]
    wide[3::4] = chunk[1::2]
    return wide


def _to_bf16(chunk: bytearray, source: str) -> bytearray:
    """F32, F16 or F64 values rounded to bf16, to nearest even (torch's rounding, and llama.cpp's)."""
    import torch  # only for checkpoints not stored in bf16

    dtypes = {"F32": torch.float32, "F16": torch.float16, "F64": torch.float64}
    out = bytearray(len(chunk) * 2 // dtypes[source].itemsize)
    torch.frombuffer(out, dtype=torch.bfloat16).copy_(torch.frombuffer(chunk, dtype=dtypes[source]))
    return out
