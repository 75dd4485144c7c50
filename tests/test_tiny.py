"""The built-in tiny model (`--model tiny`, sc2cli/tiny/): a genuine StarCoder2 checkpoint that has learned.

Its held-out loss is measured through the package's own loader and the shipped tokenizer, with the
prompt layouts written out here by hand and through sc2's own prompt builder, so a broken loader,
tokenizer or layout fails loudly; transformers loads the same files and must agree with us.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sc2cli
from sc2cli.completion.tokenizer import CONTROL_TOKENS as CONTROL
from sc2cli.model.dequant import int8_mm_fast

from .fixtures import has_tokenizer_fixture, tokenizer_fixture

TINY = Path(sc2cli.__file__).parent / "tiny"
HELDOUT = Path(__file__).parent / "data" / "heldout"

# Mean loss per token on the held-out files, a little above what the shipped model measures (see the
# docstring of sc2cli/train_tiny.py); both stay under half the uniform baseline, 0.5 * ln(4096) = 4.159.
REPO_LOSS_MAX = 3.0  # the training script measures 2.716 on these files
FIM_LOSS_MAX = 3.1  # and 2.815 under its FIM cuts (these differ a little)
# Loss of two-line middles after the prompt sc2 builds: measured 3.61 (4.16 is half the uniform baseline).
PRODUCT_FIM_LOSS_MAX = 3.9

pytestmark = pytest.mark.skipif(
    not (TINY / "model.safetensors").is_file(),
    reason="sc2cli/tiny/model.safetensors is not built yet: python -m sc2cli.train_tiny --out sc2cli/tiny",
)

EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP = range(7)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sc2cli.load_model(TINY, device="cpu", dtype="fp32", attn="sdpa")


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    t.encode_special_tokens = True  # text never turns into control tokens
    return t


def encode(tok, *pieces: str | int) -> list[int]:
    """Control tokens given as ids, text tokenized as plain text."""
    ids: list[int] = []
    for p in pieces:
        ids += [p] if isinstance(p, int) else tok.encode(p, add_special_tokens=False).ids
    return ids


def heldout_files() -> list[tuple[str, str]]:
    return [(p.name, p.read_text(encoding="utf-8")) for p in sorted(HELDOUT.glob("*.py"))]


def repository_document(tok, fim: bool) -> list[int]:
    """`<repo_name>name<file_sep>path\\ncode...<|endoftext|>`. With `fim`, each file is cut into pieces of
    30 lines, each piece one PSM example cut at random characters, with a middle of up to 300 characters
    and a suffix of up to 450 (the shape of the training examples):
    `<file_sep><fim_prefix>path\\nprefix<fim_suffix>suffix<fim_middle>middle`."""
    rng = random.Random(0)
    pieces: list[str | int] = [REPO_NAME, "sc2-heldout"]
    for path, code in heldout_files():
        if not fim:
            pieces += [FILE_SEP, f"{path}\n{code}"]
            continue
        lines = code.splitlines(keepends=True)
        for start in range(0, len(lines), 30):
            chunk = "".join(lines[start : start + 30])
            middle = rng.randint(0, min(300, len(chunk)))
            suffix = rng.randint(0, min(450, len(chunk) - middle))
            lo, hi = len(chunk) - suffix - middle, len(chunk) - suffix
            pieces += [
                FILE_SEP,
                FIM_PREFIX,
                f"{path}\n{chunk[:lo]}",
                FIM_SUFFIX,
                chunk[hi:],
                FIM_MIDDLE,
                chunk[lo:hi],
            ]
    return encode(tok, *pieces, EOS)


@torch.no_grad()
def document_loss(model, ids: list[int], chunk: int = 512) -> float:
    """Mean next-token loss, the document fed through a KV cache in chunks (past the sliding window)."""
    x = torch.tensor([ids])
    cache = model.new_cache(max_length=len(ids))
    total = 0.0
    for start in range(0, len(ids) - 1, chunk):
        end = min(start + chunk, len(ids) - 1)
        logits = model(x[:, start:end], cache)  # (1, T, V)
        total += F.cross_entropy(logits[0], x[0, start + 1 : end + 1], reduction="sum").item()
    return total / (len(ids) - 1)


# ------------------------------------------------------------------------------------------------ learned


def test_the_thresholds_are_under_half_the_uniform_baseline(tok) -> None:
    bar = 0.5 * math.log(tok.get_vocab_size())
    assert max(REPO_LOSS_MAX, FIM_LOSS_MAX) < bar


# int4 (issue 20's report): 2.713 in bf16, 2.744 in int4, 2.742 with int4's prompts multiplied in int8.
INT4_LOSS_RISE_MAX = 0.06


@pytest.fixture(scope="module")
def bf16_loss(tok) -> float:
    bf16 = sc2cli.load_model(TINY, device="cpu", dtype="bf16", attn="sdpa")
    return document_loss(bf16, repository_document(tok, fim=False))


@pytest.mark.parametrize("prompts", ["tinygemm", "int8"])
def test_int4_keeps_the_heldout_loss_near_bf16(tok, bf16_loss, prompts, monkeypatch) -> None:
    """The int4 scheme (whole-multiple scales) and its int8 prompt path, on a model that has learned: a
    wrong scale, zero or column order costs far more than the 0.03 nats measured."""
    if prompts == "int8" and not int8_mm_fast():  # ~25 s through the loop; its maths hold on any CPU
        pytest.skip("torch._int_mm is a plain loop here (PyTorch without an int8 kernel for this CPU)")
    monkeypatch.setenv("SC2_KERNELS", f"int4-prompt={prompts}")
    int4 = sc2cli.load_model(TINY, device="cpu", dtype="bf16", attn="sdpa", quantize="int4")
    if f"int4 prompts {prompts}" not in int4.kernels:
        pytest.skip(f"int4 prompts cannot take {prompts} here: {int4.kernels}")
    rise = document_loss(int4, repository_document(tok, fim=False)) - bf16_loss
    assert 0 < rise < INT4_LOSS_RISE_MAX, f"int4 ({prompts} prompts) changes the held-out loss by {rise:.3f}"


@pytest.mark.parametrize(
    ("fim", "limit"), [(False, REPO_LOSS_MAX), (True, FIM_LOSS_MAX)], ids=["repo", "fim"]
)
def test_heldout_loss(model, tok, fim: bool, limit: float) -> None:
    ids = repository_document(tok, fim)
    assert len(ids) > 4 * model.config.sliding_window  # the window and the cache are both exercised
    loss = document_loss(model, ids)
    assert loss < limit, (
        f"held-out loss {loss:.3f} (limit {limit}, uniform {math.log(tok.get_vocab_size()):.3f})"
    )


def test_heldout_files_are_not_training_data() -> None:
    """The training script drops any source file whose text equals a held-out file."""
    from sc2cli.dev import tinydata

    hashes = {tinydata.text_hash(code) for _, code in heldout_files()}
    assert len(hashes) == len(heldout_files()) >= 5
    assert sum(len(code) for _, code in heldout_files()) > 20_000
    files = tinydata.read_sources(HELDOUT, [p.name for p in HELDOUT.glob("*.py")], frozenset(hashes))
    assert files == []


# ------------------------------------------------------------------------------------------------ completions


# ------------------------------------------------------------------------------------------------ tokenizer


def test_special_tokens_are_starcoder2s(tok) -> None:
    from sc2cli.dev.tinydata import SPECIAL_TOKENS

    assert len(SPECIAL_TOKENS) == 38
    assert [tok.id_to_token(i) for i in range(38)] == list(SPECIAL_TOKENS)
    assert SPECIAL_TOKENS[: len(CONTROL)] == CONTROL
    added = json.loads((TINY / "tokenizer.json").read_text())["added_tokens"]
    assert [(t["id"], t["content"], t["special"]) for t in added] == [
        (i, s, True) for i, s in enumerate(SPECIAL_TOKENS)
    ]
    if has_tokenizer_fixture():
        real = json.loads((tokenizer_fixture() / "tokenizer.json").read_text())["added_tokens"]
        assert [(t["id"], t["content"]) for t in real[:38]] == list(enumerate(SPECIAL_TOKENS))


def test_text_never_becomes_a_control_token(tok) -> None:
    text = "s = '<fim_prefix>' + \"<|endoftext|>\""
    assert not set(tok.encode(text).ids) & set(range(38))
    assert tok.decode(tok.encode(text).ids) == text
    tok.encode_special_tokens = False
    try:
        assert (
            FIM_PREFIX in tok.encode(text).ids
        )  # the string is a special token: only the switch keeps it out
    finally:
        tok.encode_special_tokens = True


def test_pretokenizer_is_starcoder2s(tok) -> None:
    config = json.loads((TINY / "tokenizer.json").read_text())
    assert config["pre_tokenizer"]["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
    byte_level = config["pre_tokenizer"]["pretokenizers"][1]
    assert (byte_level["type"], byte_level["add_prefix_space"], byte_level["use_regex"]) == (
        "ByteLevel",
        False,
        True,
    )
    assert config["decoder"]["type"] == "ByteLevel"
    assert tok.encode("x = 2024").tokens[-4:] == ["2", "0", "2", "4"]


# ------------------------------------------------------------------------------------------------ transformers


def test_transformers_loads_the_same_model(model, tok) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModelForCausalLM.from_pretrained(TINY).float().eval()
    assert type(reference).__name__ == "Starcoder2ForCausalLM"
    ids = torch.tensor([repository_document(tok, fim=True)[:700]])  # longer than the sliding window
    with torch.no_grad():
        ours, theirs = model(ids), reference(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_transformers_tokenizes_the_same(tok) -> None:
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(TINY)
    assert auto.eos_token == "<|endoftext|>"
    assert auto.convert_ids_to_tokens(list(range(7))) == list(CONTROL)
    samples = [code for _, code in heldout_files()] + [
        "x = 12345  # héllo, wörld\n\tif  a:\n\n        pass  "
    ]
    for text in samples:
        ids = auto(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text).ids
        assert auto.decode(ids) == text


# ------------------------------------------------------------------------------------------------ product


def product_fim_losses(model) -> list[float]:
    """For lines of held-out code, the loss of two lines removed from the file, predicted after the prompt
    sc2 itself builds (prompt.py's repository layout, the Tokenizer wrapper, a budget): a broken layout,
    tokenizer or budget shows up here as a loss far above the model's."""
    from sc2cli.completion.prompt import FimTask, build_prompt
    from sc2cli.completion.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(TINY)
    losses = []
    for path, code in heldout_files():
        lines = code.splitlines(keepends=True)
        for cut in range(20, len(lines) - 10, 40):
            prefix, middle = "".join(lines[:cut]), "".join(lines[cut : cut + 2])
            suffix = "".join(lines[cut + 2 : cut + 6])  # a few lines: all of it fits in the 256-token window
            prompt = build_prompt(FimTask(prefix, suffix, path, "sc2-heldout"), tokenizer, 512)
            target = tokenizer.encode(middle)
            ids = torch.tensor([list(prompt.ids) + target])
            with torch.no_grad():
                logits = model(ids)[0, len(prompt.ids) - 1 : -1]  # (len(target), V)
            losses.append(F.cross_entropy(logits, torch.tensor(target)).item())
    return losses


def test_heldout_middles_through_the_products_prompt(model) -> None:
    losses = product_fim_losses(model)
    assert len(losses) >= 20
    mean = sum(losses) / len(losses)
    assert mean < PRODUCT_FIM_LOSS_MAX, f"mean middle loss {mean:.3f} through sc2's prompt"
