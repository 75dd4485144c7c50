"""transformers as the reference engine of `sc2 bench --vs transformers`.

sc2cli never imports transformers (a test-only dependency); this module registers it with the bench and
then runs the CLI, from a checkout with the test extra installed:

    python -m tests.vs_transformers bench --shape 3b --vs transformers --prompt-lengths 256 --edits
"""

from __future__ import annotations

import sys

import torch

from sc2cli.bench import REFERENCES, Reference
from sc2cli.model.model import Starcoder2

LOAD = """from transformers import AutoModelForCausalLM
before = rss(); start = time.perf_counter()
AutoModelForCausalLM.from_pretrained(folder, dtype={"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype])
"""


def transformers_twin(model: Starcoder2):
    """transformers' Starcoder2ForCausalLM sharing our (unquantized) weights, no copy."""
    import transformers
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    c = model.config
    keys = {k: v for k, v in c.to_dict().items() if k not in ("rope_theta", "architectures", "model_type")}
    if int(transformers.__version__.split(".")[0]) >= 5:
        keys["rope_parameters"] = {"rope_type": "default", "rope_theta": c.rope_theta}
    else:
        keys["rope_theta"] = c.rope_theta
    hf_config = Starcoder2Config(**keys, attn_implementation="sdpa")
    with torch.device("meta"):
        twin = Starcoder2ForCausalLM(hf_config)
    state = {name: p for name, p in model.named_parameters()}
    if c.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    twin.load_state_dict(state, strict=True, assign=True)
    twin.tie_weights()
    with torch.device(model.device):  # its buffers are computed, not loaded
        twin.model.rotary_emb = type(twin.model.rotary_emb)(hf_config)
    twin.generation_config.eos_token_id = None  # random weights must not stop early
    twin.generation_config.pad_token_id = 0
    return twin.eval()


def register() -> None:
    REFERENCES["transformers"] = Reference(transformers_twin, LOAD)


if __name__ == "__main__":
    from sc2cli.cli import main

    register()
    main(sys.argv[1:])
