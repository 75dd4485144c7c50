"""sc2's native kernels' machinery (native.py: each library built once per machine, loaded only when the
user's own and no one else's to write, built again when damaged) and its bf16 kernel; the int4 kernels are
tested in test_native_int4.py."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import sc2cli
from sc2cli.completion.generate import generate
from sc2cli.completion.speculate import Speculation
from sc2cli.model import native

from ..checkpoints import hub_config, reference_model, state_dict_of, write_hub_checkpoint

# a library this CPU has the instructions for (None: none does, as on a CPU without AVX2)
BUILDABLE = next((name for name, (_, flags, *_) in native.LIBRARIES.items() if native._cpu_has(flags)), None)


@pytest.fixture
def fresh_library():
    native._library.cache_clear()
    yield
    native._library.cache_clear()


def test_a_library_someone_else_could_write_is_not_loaded(tmp_path):
    folder = tmp_path / "native"
    folder.mkdir(mode=0o700)
    library = folder / "int4_vnni-0.so"
    library.write_bytes(b"\x7fELF")
    library.chmod(0o755)
    folder.chmod(0o700)
    assert native._trusted(library)
    library.chmod(0o775)
    assert not native._trusted(library)
    library.chmod(0o755)
    folder.chmod(0o777)
    assert not native._trusted(library)
    assert not native._trusted(folder / "missing.so")


@pytest.mark.skipif(BUILDABLE is None, reason="this CPU has none of the native kernels' instructions")
def test_a_damaged_library_is_built_again_not_loaded(fresh_library, monkeypatch, tmp_path):
    """A library cut short (a crash mid-write by an older version) fails to load and is replaced."""
    monkeypatch.setenv("SC2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
    path = native.library_path(os.environ["CC"], BUILDABLE)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")
    assert native._library(BUILDABLE) is not None
    assert path.read_bytes()[:4] == b"\x7fELF"


def write_small_checkpoint(folder):
    """Shapes the kernels take (64-row blocks, head size 32) but the vocabulary's (208 rows: tinygemm)."""
    config = hub_config(
        vocab_size=208, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, sliding_window=None,
    )  # fmt: skip
    return write_hub_checkpoint(folder, config, state_dict_of(reference_model(config, 13), True))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("native"))


# ------------------------------------------------------------------------------------------------ bf16


needs_bf16_kernel = pytest.mark.skipif(
    not native.bf16_gemv_works(),
    reason="sc2's bf16 kernel does not run here (needs a C compiler, and native bf16 or AVX2 and FMA)",
)


def test_the_bf16_kernel_runs_wherever_it_builds():
    """Built here (AVX512-BF16's or, without native bf16, AVX2's, which has a second order), it must agree
    with exact maths: a kernel that computed wrongly would otherwise be set aside quietly and its tests
    skipped."""
    if native._bf16_library() is None:
        pytest.skip("no bf16 kernel builds here (needs a C compiler, and native bf16 or AVX2 and FMA)")
    assert native.bf16_gemv_works()
    assert native.bf16_gemv_works(stream=True) == (native._library("bf16_gemv") is None)


@pytest.fixture(params=["native", "stream"])
def order(request):
    """The bf16 kernel's orders through a weight that run here: `stream` only in AVX2's kernel."""
    if not native.bf16_gemv_works(request.param == "stream"):
        pytest.skip(
            f"sc2's bf16 kernel does not run here in its {request.param!r} order (AVX2's kernel only)"
        )
    return request.param


@needs_bf16_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", [(4, 32), (36, 96), (96, 64), (260, 1024)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_bf16_kernel_is_the_exact_product_rounded_once(shape, rows, with_bias, order):
    """bf16 products are exact in fp32 and summed in fp32: within fp32 sums' rounding, then one bf16
    rounding of the result (bias included)."""
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(shape, generator=g).bfloat16()
    bias = torch.randn(shape[0], generator=g).bfloat16() if with_bias else None
    x = torch.randn(rows, shape[1], generator=g).bfloat16()
    want = x.double() @ weight.double().t() + (0 if bias is None else bias.double())
    magnitude = x.double().abs() @ weight.double().abs().t()
    stream = order == "stream"
    got = native.bf16_gemv(x, weight, bias, stream)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, shape[0])
    assert ((got.double() - want).abs() <= 2**-8 * want.abs() + 2**-20 * magnitude + 1e-30).all()
    together = native.bf16_gemv(x.view(1, rows, -1), weight, bias, stream)[0]  # (B, T, K), as the model's
    alone = [native.bf16_gemv(x[i : i + 1], weight, bias, stream)[0] for i in range(rows)]
    assert all(torch.equal(alone[i], together[i]) for i in range(rows))


@needs_bf16_kernel
def test_the_bf16_decode_path_takes_few_rows_and_only_weights_it_fits(monkeypatch, order):
    from sc2cli.model.linear import UPCAST_MIN_ROWS, Scratch, UpcastLinear

    linear = torch.nn.Linear(64, 96).bfloat16()
    layer = UpcastLinear(linear, Scratch(), decode=order, prefill="linear")
    assert layer.native_fits
    calls = []
    monkeypatch.setattr(
        native,
        "bf16_gemv",
        lambda x, w, b, stream: calls.append((x.shape, stream)) or torch.zeros(*x.shape[:-1], 96),
    )
    layer(torch.randn(1, 3, 64).bfloat16())
    layer(torch.randn(1, UPCAST_MIN_ROWS, 64).bfloat16())  # a prompt: the prefill path
    assert calls == [((1, 3, 64), order == "stream")]
    odd = UpcastLinear(torch.nn.Linear(48, 96).bfloat16(), Scratch(), decode=order, prefill="linear")
    assert not odd.native_fits  # 48 inputs: not whole 32s; F.linear then
    out = odd(torch.randn(1, 2, 48).bfloat16())
    assert out.shape == (1, 2, 96) and len(calls) == 1


@needs_bf16_kernel
def test_a_bf16_model_decodes_through_the_kernel_and_drafts_change_no_greedy_token(
    checkpoint, monkeypatch, order
):
    monkeypatch.setenv("SC2_KERNELS", f"decode={order},prefill=linear")
    model = sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa")
    assert f"decode {order}" in model.kernels
    piece = assert_drafts_change_no_greedy_token(model, seed=1)
    monkeypatch.setenv("SC2_KERNELS", "decode=linear,prefill=linear")
    reference = sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa")
    ids = torch.tensor([piece])  # fewer rows than a prompt: the decode paths
    with torch.inference_mode():
        a, b = model(ids).float(), reference(ids).float()
    assert (a - b).abs().max() <= 0.05 * b.abs().max()


def assert_drafts_change_no_greedy_token(model, seed: int) -> list[int]:
    """Greedy with drafts equals greedy without, on a random prompt and on a repeated piece (drafts
    accepted); returns the piece."""
    g = torch.Generator().manual_seed(seed)
    piece = torch.randint(10, 200, (5,), generator=g).tolist()
    for prompt in (torch.randint(10, 200, (30,), generator=g).tolist(), piece * 5):
        plain = [s.token for s in generate(model, prompt, max_new_tokens=30)]
        fast = [s.token for s in generate(model, prompt, max_new_tokens=30, speculation=Speculation())]
        assert fast == plain
    return piece
