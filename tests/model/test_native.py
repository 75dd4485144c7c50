"""sc2's own int4 kernel (native.py, int4_vnni.c): it computes exactly the int8-rounded rows times tinygemm's
codes, errs from the exact product only by that rounding, gives each row the same result alone or among
others (so drafts never change a greedy token), keeps non-finite rows non-finite, is used only where it
runs and is trusted, and a model decodes through it with the plan's choice."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import sc2cli
from sc2cli.completion.generate import generate
from sc2cli.completion.speculate import Speculation
from sc2cli.model import native, native_int8
from sc2cli.model.linear import plan_kernels
from sc2cli.model.quant import (
    INT4_INT8_PROMPT_ROWS,
    INT4_PROMPT_ROWS,
    Int4Linear,
    pack_int4,
    quantize_and_pack_int4,
    quantize_int4,
)

from ..checkpoints import hub_config, reference_model, state_dict_of, write_hub_checkpoint
from .test_dequant import assert_within_int8_rounding

needs_kernel = pytest.mark.skipif(
    not native.int4_vnni_works(torch.bfloat16),
    reason="sc2's int4 kernel does not run here (needs a C compiler and AVX-512 VNNI and VBMI)",
)
SHAPES = [(64, 64), (128, 256), (192, 1024)]
# the kernel takes 4 rows at a time (a loop of their own) or 1-3: whole passes and remainders
ROWS = [1, 2, 3, 4, 5, 8, 11]


def quantized(shape, seed=0):
    """(codes int32 (N, K), packed, scales_and_zeros bf16 (K/64, N, 2)), from a random weight."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    codes, scales_and_zeros, _ = quantize_int4(weight)
    return codes, pack_int4(codes), scales_and_zeros.to(torch.bfloat16)


def kernel(x, packed, scales_and_zeros):
    scratch = torch.empty(native.scratch_bytes(*x.shape, 64), dtype=torch.uint8)
    return native.int4_vnni_mm(x, packed, scales_and_zeros, 64, scratch)


def int8_rows(x):
    """Each row rounded as the kernel rounds it: scale max |x| / 127 in fp32, ties to even."""
    scale = x.float().abs().amax(1, keepdim=True) / 127
    return torch.round(x.float() * (1 / scale)).clamp(-127, 127), scale


@needs_kernel
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_the_kernel_multiplies_the_int8_rows_by_the_codes_exactly(shape, rows, dtype):
    """sx * scale * (codes . q - 8 * sum q) + zero * sum x per group, summed in fp32: within fp32's rounding
    of the sums (its int32 dot products are exact)."""
    codes, packed, scales_and_zeros = quantized(shape, seed=rows)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(1)).to(dtype)
    q, sx = int8_rows(x)
    scale, zero = (scales_and_zeros[..., i].double().repeat_interleave(64, 0) for i in (0, 1))
    codes_part = (q.double() * sx.double()) @ ((codes.t().double() - 8) * scale)
    zeros_part = x.double() @ zero
    want = codes_part + zeros_part
    magnitude = (q.double().abs() * sx.double()) @ ((codes.t().double() - 8).abs() * scale) + (
        x.double().abs() @ zero.abs()
    )
    got = kernel(x, packed, scales_and_zeros)
    assert got.dtype == dtype
    rounding = 2**-20 if dtype == torch.float32 else 2**-8
    assert ((got.double() - want).abs() <= rounding * (magnitude + want.abs()) + 1e-12).all()


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_kernel_errs_from_the_exact_product_only_by_rounding_rows_to_int8(shape):
    """Through the layer: each row rounds by at most half its step (max |x| / 254); the zeros' part is
    taken on the unrounded rows, so only the scaled codes count; then the bias and bf16's rounding."""
    _, packed, scales_and_zeros = quantized(shape, seed=3)
    layer = Int4Linear(packed, scales_and_zeros, torch.randn(shape[0]).bfloat16(), shape[1])
    assert layer.use_decode_path("vnni") == "vnni"
    x = torch.randn(5, shape[1], generator=torch.Generator().manual_seed(4)).bfloat16()
    assert_within_int8_rounding(layer, x, 2**-7)


@needs_kernel
def test_each_row_is_the_same_alone_or_among_others():
    """A token verified among drafts gets exactly the logits it gets alone."""
    _, packed, scales_and_zeros = quantized((192, 1024))
    x = torch.randn(9, 1024, generator=torch.Generator().manual_seed(5)).bfloat16()
    together = kernel(x, packed, scales_and_zeros)  # passes of 4, 4 and 1 rows
    for i in range(9):
        assert torch.equal(kernel(x[i : i + 1], packed, scales_and_zeros)[0], together[i])
    for start, end in ((2, 6), (1, 4), (3, 5), (0, 7)):  # 4 rows, 3, 2, and 4 + 3
        assert torch.equal(kernel(x[start:end], packed, scales_and_zeros), together[start:end])


@needs_kernel
def test_a_non_finite_row_stays_non_finite():
    _, packed, scales_and_zeros = quantized((128, 256))
    x = torch.randn(4, 256).bfloat16()
    x[1, 5], x[2, 200] = float("nan"), float("inf")
    finite = kernel(x, packed, scales_and_zeros).isfinite().all(1)
    assert finite.tolist() == [True, False, False, True]


@needs_kernel
def test_a_layer_takes_rows_of_any_leading_shape_and_layout():
    """A token's call goes straight to the kernel with the activations as they come: (B, T, K), strided or
    not, bf16 or fp32, each row as the 2-D call computes it."""
    _, packed, scales_and_zeros = quantized((128, 256))
    layer = Int4Linear(packed, scales_and_zeros, torch.randn(128).bfloat16(), 256)
    assert layer.use_decode_path("vnni") == "vnni"
    wide = torch.randn(1, 3, 512).bfloat16()
    x = wide[..., ::2]  # (1, 3, 256), not contiguous
    want = layer.product(x.reshape(3, 256).contiguous())
    got = layer(x)
    assert got.shape == (1, 3, 128) and torch.equal(got.reshape(3, 128), want)
    assert torch.equal(layer(x.float()), want.float().view(1, 3, 128))


@needs_kernel
def test_what_the_kernel_cannot_take_stays_on_tinygemm():
    _, packed, scales_and_zeros = quantized((48, 64))  # not whole blocks of 64 rows
    assert Int4Linear(packed, scales_and_zeros, None, 64).use_decode_path("vnni") == "tinygemm"
    _, packed, scales_and_zeros = quantized((64, 64))
    assert Int4Linear(packed, scales_and_zeros.float(), None, 64).use_decode_path("vnni") == "tinygemm"
    assert not native.int4_vnni_fits(64, 64, 8)  # groups the kernel would refuse at run time
    layer = Int4Linear(packed, scales_and_zeros, None, 64)
    assert layer.use_decode_path("no-such-path") == "tinygemm"
    assert layer.use_decode_path("vnni") == "vnni"
    with pytest.raises(ValueError, match="takes no weight"):
        native.int4_vnni_mm(torch.randn(1, 64), packed[:48], scales_and_zeros, 64, torch.empty(1000))


@needs_kernel
def test_rows_of_a_prompt_take_the_prompt_path_not_the_kernel(monkeypatch):
    _, packed, scales_and_zeros = quantized((64, 64))
    layer = Int4Linear(packed, scales_and_zeros, None, 64)
    layer.use_decode_path("vnni")
    calls = []
    product = layer.product

    class Spy:  # the kernel's product, counting the rows it is given
        dtype, K = product.dtype, product.K

        def __call__(self, x):
            calls.append(x.numel() // self.K)
            return product(x)

    layer.product = Spy()
    layer(torch.randn(3, 64).bfloat16())
    layer(torch.randn(INT4_PROMPT_ROWS - 1, 64).bfloat16())
    layer(torch.randn(INT4_PROMPT_ROWS, 64).bfloat16())  # tinygemm: this layer's prompt path
    assert calls == [3, INT4_PROMPT_ROWS - 1]


@needs_kernel
@pytest.mark.parametrize("span", [(0, 64), (64, 192), (0, 256)])
def test_unpacking_for_prompts_gives_each_weight_as_an_int8_number(span):
    """(code - 8) times its group's whole multiple of the row's scale, rows in their own order."""
    weight = torch.randn(256, 192, generator=torch.Generator().manual_seed(11)) * 0.05
    codes, scales_and_zeros, row_scales = quantize_int4(weight)
    multipliers = (scales_and_zeros[..., 0] / row_scales).round()  # (G, N), whole numbers 1..16
    start, end = span
    chunk = multipliers[:, start:end].to(torch.int8).contiguous()
    out = torch.empty(192, end - start, dtype=torch.int8)
    got = native.unpack_int8(pack_int4(codes), span, chunk, 64, out)
    want = (codes[start:end] - 8) * multipliers[:, start:end].repeat_interleave(64, 0).t()  # (n, K)
    assert torch.equal(got, want.t().to(torch.int8))
    with pytest.raises(ValueError, match="cannot unpack"):
        native.unpack_int8(pack_int4(codes), (32, 96), chunk, 64, out)  # not whole blocks


@needs_kernel
@pytest.mark.parametrize("shape", [(256, 128), (208, 192), (48, 64)], ids=str)
@pytest.mark.parametrize("per_block", [False, True], ids=["one-chunk", "a-block-per-chunk"])
def test_prompts_in_int8_come_out_the_same_unpacked_here_or_by_pytorch(shape, per_block, monkeypatch):
    from sc2cli.model import dequant

    if per_block:
        monkeypatch.setattr(dequant, "INT8_CHUNK_ELEMENTS", 1)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(12)) * 0.05
    packed, scales_and_zeros, row_scales = quantize_and_pack_int4(weight)
    scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
    x = torch.randn(
        INT4_INT8_PROMPT_ROWS + 3, shape[1], generator=torch.Generator().manual_seed(13)
    ).bfloat16()
    prompt = (x, packed, scales_and_zeros, row_scales, native.LAYOUT, dequant.UnpackScratch())
    plain = dequant.int8_product(*prompt)
    assert torch.equal(plain, dequant.int8_product(*prompt, dequant.Native(native.unpack_int8)))
    if native_int8.int8_rows_work():  # rounding and scaling in one pass each too
        helpers = dequant.Native(native.unpack_int8, native_int8.round_rows_int8, native_int8.scale_rows)
        assert torch.equal(plain, dequant.int8_product(*prompt, helpers))
        assert torch.equal(plain, dequant.int8_product(*prompt, dequant.Native(None, *helpers[1:])))
    calls = []
    monkeypatch.setattr(native, "unpack_int8", lambda *a: calls.append(a[1]) or native_unpack(*a))
    layer = Int4Linear(packed, scales_and_zeros, None, shape[1], row_scales)
    assert layer.use_prompt_path("int8") == "int8"
    assert torch.equal(layer(x), dequant.int8_product(*prompt).to(torch.bfloat16))
    assert calls == [
        (a, b)
        for a, b, layout in dequant.chunks(shape[0], shape[1], native.LAYOUT, dequant.INT8_CHUNK_ELEMENTS)
        if layout == native.LAYOUT
    ]


native_unpack = native.unpack_int8


@pytest.fixture
def fresh_library():
    native._library.cache_clear()
    native._agrees.cache_clear()
    yield
    native._library.cache_clear()
    native._agrees.cache_clear()


def test_without_a_compiler_int4_stays_on_tinygemm(fresh_library, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert native._library("int4_vnni") is None
    assert not native.int4_vnni_works(torch.bfloat16)
    plan = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "int4-decode=vnni")
    assert plan[(128, 256)]["int4-decode"] == "tinygemm"


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


@needs_kernel
def test_a_damaged_library_is_built_again_not_loaded(fresh_library, monkeypatch, tmp_path):
    """A library cut short (a crash mid-write by an older version) fails to load and is replaced."""
    monkeypatch.setenv("SC2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
    path = native.library_path(os.environ["CC"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")
    assert native._library("int4_vnni") is not None
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_the_plan_offers_the_kernel_where_it_runs(monkeypatch):
    import sc2cli.model.kernels as kernels

    measured = []
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x: measured.append(sorted(candidates)) or "vnni"
    )
    plan = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "int4-prompt=tinygemm")
    works = native.int4_vnni_works(torch.bfloat16)
    assert plan[(128, 256)]["int4-decode"] == ("vnni" if works else "tinygemm")
    assert measured == ([["tinygemm", "vnni"]] if works else [])
    small = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "auto", weight_bytes=4096)
    assert small[(128, 256)]["int4-decode"] == "tinygemm"  # unmeasured, nothing compiled for it


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


def load(checkpoint, decode, monkeypatch):
    monkeypatch.setenv("SC2_KERNELS", f"int4-prompt=tinygemm,int4-decode={decode}")
    return sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa", quantize="int4")


@needs_kernel
def test_a_model_decodes_through_the_kernel_and_drafts_change_no_greedy_token(checkpoint, monkeypatch):
    model = load(checkpoint, "vnni", monkeypatch)
    assert "decode tinygemm + vnni" in model.kernels  # the 64-row shapes, and the others
    decoders = {m.decode for m in model.modules() if isinstance(m, Int4Linear)}
    assert decoders == {"vnni", "tinygemm"}
    g = torch.Generator().manual_seed(0)
    piece = torch.randint(10, 200, (6,), generator=g).tolist()
    for prompt in (torch.randint(10, 200, (30,), generator=g).tolist(), piece * 4):
        plain = [s.token for s in generate(model, prompt, max_new_tokens=30)]
        speculation = Speculation()
        fast = [s.token for s in generate(model, prompt, max_new_tokens=30, speculation=speculation)]
        assert fast == plain


@needs_kernel
def test_decode_logits_stay_near_tinygemms(checkpoint, monkeypatch):
    ids = torch.randint(10, 200, (1, 12), generator=torch.Generator().manual_seed(2))
    logits = {}
    for decode in ("vnni", "tinygemm"):
        model = load(checkpoint, decode, monkeypatch)
        with torch.inference_mode():
            logits[decode] = model(ids).float()
    difference = (logits["vnni"] - logits["tinygemm"]).abs().max()
    assert 0 < difference <= 0.05 * logits["tinygemm"].abs().max()


# ------------------------------------------------------------------------------------------------ bf16


needs_bf16_kernel = pytest.mark.skipif(
    not native.bf16_gemv_works(),
    reason="sc2's bf16 kernel does not run here (needs a C compiler and native bf16)",
)


@needs_bf16_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", [(4, 32), (96, 64), (260, 1024)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_bf16_kernel_is_the_exact_product_rounded_once(shape, rows, with_bias):
    """bf16 products are exact in fp32 and summed in fp32: within fp32 sums' rounding, then one bf16
    rounding of the result (bias included)."""
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(shape, generator=g).bfloat16()
    bias = torch.randn(shape[0], generator=g).bfloat16() if with_bias else None
    x = torch.randn(rows, shape[1], generator=g).bfloat16()
    want = x.double() @ weight.double().t() + (0 if bias is None else bias.double())
    magnitude = x.double().abs() @ weight.double().abs().t()
    got = native.bf16_gemv(x, weight, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, shape[0])
    assert ((got.double() - want).abs() <= 2**-8 * want.abs() + 2**-20 * magnitude + 1e-30).all()
    together = native.bf16_gemv(x.view(1, rows, -1), weight, bias)[0]  # a (B, T, K) input, as the model's
    assert all(torch.equal(native.bf16_gemv(x[i : i + 1], weight, bias)[0], together[i]) for i in range(rows))


@needs_bf16_kernel
def test_the_bf16_decode_path_takes_few_rows_and_only_weights_it_fits(monkeypatch):
    from sc2cli.model.linear import UPCAST_MIN_ROWS, Scratch, UpcastLinear

    linear = torch.nn.Linear(64, 96).bfloat16()
    layer = UpcastLinear(linear, Scratch(), decode="native", prefill="linear")
    assert layer.native_fits
    calls = []
    monkeypatch.setattr(
        native, "bf16_gemv", lambda x, w, b: calls.append(x.shape) or torch.zeros(*x.shape[:-1], 96)
    )
    layer(torch.randn(1, 3, 64).bfloat16())
    layer(torch.randn(1, UPCAST_MIN_ROWS, 64).bfloat16())  # a prompt: the prefill path
    assert calls == [(1, 3, 64)]
    odd = UpcastLinear(torch.nn.Linear(48, 96).bfloat16(), Scratch(), decode="native", prefill="linear")
    assert not odd.native_fits  # 48 inputs: not whole 32s; F.linear then
    out = odd(torch.randn(1, 2, 48).bfloat16())
    assert out.shape == (1, 2, 96) and calls == [(1, 3, 64)]


@needs_bf16_kernel
def test_a_bf16_model_decodes_through_the_kernel_and_drafts_change_no_greedy_token(checkpoint, monkeypatch):
    monkeypatch.setenv("SC2_KERNELS", "decode=native,prefill=linear")
    model = sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa")
    assert "decode native" in model.kernels
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
