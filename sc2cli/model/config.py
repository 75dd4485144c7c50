"""The model's hyper-parameters, read from the checkpoint's own config.json (Hugging Face names kept)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


@dataclass(frozen=True)
class ModelConfig:
    """A StarCoder2 architecture. Field names are the keys of the bigcode config.json files."""

    vocab_size: int = 49152
    hidden_size: int = 3072
    intermediate_size: int = 12288
    num_hidden_layers: int = 30
    num_attention_heads: int = 24
    num_key_value_heads: int = 2
    hidden_act: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 16384
    norm_epsilon: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    use_bias: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    model_type: str = "starcoder2"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"config.json: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"config.json: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise CheckpointError(f"config.json: hidden_act {self.hidden_act!r} is not supported (tanh GELU)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a config.json dict: the bigcode layout (top-level `rope_theta`) or the newer one
        (`rope_parameters.rope_theta`). Unknown keys (`activation_function`, dropouts, ...) are ignored."""
        model_type = raw.get("model_type")
        if model_type != "starcoder2":
            raise CheckpointError(f"{source}: model_type is {model_type!r}, not 'starcoder2'")
        values = dict(raw)
        rope = values.get("rope_parameters") or values.get("rope_scaling") or {}
        if "rope_theta" not in values and isinstance(rope, dict) and "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) != "default":
            raise CheckpointError(
                f"{source}: rope type {rope.get('rope_type', rope.get('type'))!r} is not supported"
            )
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = values["eos_token_id"][0]
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise CheckpointError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(read_config_json(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        """A config.json in the bigcode layout, readable by transformers too."""
        out: dict[str, Any] = {"architectures": ["Starcoder2ForCausalLM"], **dataclasses.asdict(self)}
        return out

    def weight_bytes(self, bytes_per_param: int = 2) -> int:
        """Bytes of all weights (the embedding counted once when tied)."""
        return self.num_parameters() * bytes_per_param

    def num_parameters(self) -> int:
        h, i, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        kv = self.num_key_value_heads * hd
        bias = 1 if self.use_bias else 0
        attn = h * h + 2 * h * kv + h * h + bias * (h + 2 * kv + h)
        mlp = 2 * h * i + bias * (i + h)
        norms = 2 * 2 * h
        per_layer = attn + mlp + norms
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_hidden_layers * per_layer + 2 * h + head


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A config.json as a dict, or a one-line error saying what is wrong with the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path.parent}: no config.json here; is this a StarCoder2 checkpoint?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read config.json ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: config.json is not a JSON object")
    return raw


# The three bigcode models, as their config.json files describe them.
_BIGCODE_COMMON: dict[str, Any] = {
    "model_type": "starcoder2",
    "vocab_size": 49152,
    "max_position_embeddings": 16384,
    "norm_epsilon": 1e-5,
    "sliding_window": 4096,
    "hidden_act": "gelu_pytorch_tanh",
    "use_bias": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
SHAPES: dict[str, dict[str, Any]] = {
    "3b": {
        **_BIGCODE_COMMON,
        "hidden_size": 3072,
        "intermediate_size": 12288,
        "num_hidden_layers": 30,
        "num_attention_heads": 24,
        "num_key_value_heads": 2,
        "rope_theta": 999999.4420358813,
    },
    "7b": {
        **_BIGCODE_COMMON,
        "hidden_size": 4608,
        "intermediate_size": 18432,
        "num_hidden_layers": 32,
        "num_attention_heads": 36,
        "num_key_value_heads": 4,
        "rope_theta": 1000000,
    },
    "15b": {
        **_BIGCODE_COMMON,
        "hidden_size": 6144,
        "intermediate_size": 24576,
        "num_hidden_layers": 40,
        "num_attention_heads": 48,
        "num_key_value_heads": 4,
        "rope_theta": 100000,
        "tie_word_embeddings": False,
    },
}
