"""Tiny random StarCoder2 checkpoints, written the two ways they exist in the wild: by transformers'
`save_pretrained` (newer config layout) and as the bigcode repos publish them (top-level `rope_theta`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

TINY: dict[str, Any] = {
    "model_type": "starcoder2",
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "norm_epsilon": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": None,
    "use_bias": True,
    "hidden_act": "gelu_pytorch_tanh",
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def hub_config(**overrides: Any) -> dict[str, Any]:
    """A config.json dict in the bigcode layout, with leftover keys as the real files have."""
    return {
        "architectures": ["Starcoder2ForCausalLM"],
        "attention_dropout": 0.1,
        "residual_dropout": 0.1,
        "embedding_dropout": 0.1,
        "activation_function": "gelu",
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        **TINY,
        **overrides,
    }


def reference_model(config: dict[str, Any], seed: int = 0):
    """transformers' Starcoder2ForCausalLM with every parameter (biases and norms included) random."""
    import transformers
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    hf_keys = {k: v for k, v in config.items() if k not in ("rope_theta", "torch_dtype", "architectures")}
    hf_keys.setdefault("tie_word_embeddings", True)
    if int(transformers.__version__.split(".")[0]) >= 5:
        hf_keys["rope_parameters"] = {"rope_type": "default", "rope_theta": config["rope_theta"]}
    else:
        hf_keys["rope_theta"] = config["rope_theta"]
    hf_config = Starcoder2Config(**hf_keys)
    torch.manual_seed(seed)
    model = Starcoder2ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


def state_dict_of(model, tied: bool) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


def write_hub_checkpoint(
    folder: Path,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
) -> Path:
    """config.json + model.safetensors (or `shards` files and an index), as the hub repos hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.to(dtype) for k, v in state.items()}
    if shards == 1:
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, folder / fname, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


MEMORY_TEST_SHAPE = {
    "vocab_size": 8192, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 2,
}  # fmt: skip  # ~100M parameters: big enough for peak-memory tests to mean something, quick to write


def peak_rss_growth(load: str, warm_up: str = "") -> int:
    """How far a fresh process's peak RSS grows while it runs the statement `load`, after torch's own
    warm-up (its meta-tensor machinery: ~70 MB of code) and `warm_up`; one thread, as the tests budget."""
    script = "\n".join([
        "import torch",
        "from sc2cli.model.config import ModelConfig",
        "from sc2cli.model.model import Starcoder2",
        "def rss(field):",
        "    for line in open('/proc/self/status'):",
        "        if line.startswith(field):",
        "            return int(line.split()[1]) * 1024",
        "with torch.device('meta'):",
        "    Starcoder2(ModelConfig(num_hidden_layers=1))",
        warm_up,
        "before = rss('VmRSS:')",
        load,
        "print(rss('VmHWM:') - before)",
    ])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def write_random_hub_checkpoint(folder: Path, config: dict[str, Any], dtype: torch.dtype) -> Path:
    """Random weights (seeded) of `config`'s shapes, written as a hub checkpoint in `dtype`."""
    from sc2cli.model.config import ModelConfig
    from sc2cli.model.model import Starcoder2

    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in Starcoder2(ModelConfig.from_dict(config)).named_parameters()}
    state = {n: torch.randn(s).to(dtype) for n, s in shapes.items()}
    return write_hub_checkpoint(folder, config, state, dtype=dtype)


SPECIAL_TOKENS = [
    "<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>",
]  # fmt: skip
SAMPLE_CODE = '''import os
import sys


def add(a, b):
    """Return the sum of a and b."""
    return a + b


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


if __name__ == "__main__":
    print(add(1, 2), Counter().increment())
    for i in range(10):
        print(i, "ünïcödé ✓ 日本語")
'''


def write_test_tokenizer(folder: Path, vocab_size: int = 300) -> Path:
    """A small byte-level BPE with StarCoder2's control tokens first (ids 0-6), as the real one is built."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([SAMPLE_CODE] * 4, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def write_tiny_model(folder: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """A random checkpoint with a working tokenizer: enough for end-to-end CLI runs."""
    path = write_test_tokenizer(folder)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(path)).get_vocab_size()
    config = hub_config(vocab_size=vocab, max_position_embeddings=1024, sliding_window=64, **overrides)
    ref = reference_model(config, seed=seed)
    return write_hub_checkpoint(folder, config, state_dict_of(ref, config.get("tie_word_embeddings", True)))
