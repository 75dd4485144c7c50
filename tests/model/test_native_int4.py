"""sc2's own int4 kernels (native_int4.py; int4_vnni.c with AVX-512, int4_avx2.c with AVX2), each where it
runs: it computes exactly the int8-rounded rows times tinygemm's codes, errs from the exact product only by
that rounding, gives each row the same result alone or among others (so drafts never change a greedy
token), keeps non-finite rows non-finite, is used only where it runs, and a model decodes through it with
the plan's choice. The VNNI library's unpacking for int8 prompts is tested here too."""

from __future__ import annotations

import pytest
import torch

import sc2cli
from sc2cli.completion.generate import generate
from sc2cli.completion.speculate import Speculation
from sc2cli.model import native, native_int4, native_int8
from sc2cli.model.dequant import cpu_layout
from sc2cli.model.linear import plan_kernels
from sc2cli.model.quant import (
    INT4_INT8_PROMPT_ROWS,
    INT4_PROMPT_ROWS,
    Int4Linear,
    pack_int4,
    quantize_and_pack_int4,
    quantize_int4,
)

from .test_dequant import assert_within_int8_rounding
from .test_native import write_small_checkpoint

KERNELS = list(native_int4.KERNELS)
RUNS = {path: native_int4.int4_works(path, torch.bfloat16) for path in KERNELS}
needs_vnni = pytest.mark.skipif(
    not RUNS["vnni"],
    reason="sc2's VNNI int4 kernel does not run here (needs a C compiler, AVX-512 VNNI and VBMI)",
)
SHAPES = [(64, 64), (128, 256), (192, 1024)]  # whole blocks of either kernel
# each kernel takes 4 rows at a time or 1-3: whole passes and remainders
ROWS = [1, 2, 3, 4, 5, 8, 11]


@pytest.fixture(params=KERNELS)
def path(request):
    """Each kernel that runs on this CPU (the other is skipped with its reason)."""
    if not RUNS[request.param]:
        needs = {"vnni": "AVX-512 VNNI and VBMI", "avx2": "AVX2, FMA and PyTorch's 32-row int4 layout"}
        pytest.skip(
            f"sc2's {request.param} int4 kernel does not run here (needs a C compiler, {needs[request.param]})"
        )
    return request.param


def quantized(shape, seed=0):
    """(codes int32 (N, K), packed, scales_and_zeros bf16 (K/64, N, 2)), from a random weight."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    codes, scales_and_zeros, _ = quantize_int4(weight)
    return codes, pack_int4(codes), scales_and_zeros.to(torch.bfloat16)


def kernel(x, packed, scales_and_zeros, path):
    scratch = torch.empty(native_int4.scratch_bytes(*x.shape, 64), dtype=torch.uint8)
    return native_int4.int4_mm(x, packed, scales_and_zeros, 64, scratch, path=path)


def int8_rows(x):
    """Each row rounded as the kernel rounds it: scale max |x| / 127 in fp32, ties to even."""
    scale = x.float().abs().amax(1, keepdim=True) / 127
    return torch.round(x.float() * (1 / scale)).clamp(-127, 127), scale


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_the_kernel_multiplies_the_int8_rows_by_the_codes_exactly(path, shape, rows, dtype):
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
    got = kernel(x, packed, scales_and_zeros, path)
    assert got.dtype == dtype
    rounding = 2**-20 if dtype == torch.float32 else 2**-8
    assert ((got.double() - want).abs() <= rounding * (magnitude + want.abs()) + 1e-12).all()


def test_the_largest_int8_rows_against_the_largest_codes_sum_exactly(path):
    """Every code 15 or 0 against rows of +-127 (after rounding): the sums the AVX2 kernel keeps in int16
    (16 inputs: 15 * 127 * 16 = 30480 of 32767) are at their largest, and must not wrap or
    saturate."""
    K, N = 1024, 64
    codes = torch.full((N, K), 15, dtype=torch.int32)
    codes[1::2] = 0  # every other row: the most negative (0 - 8) against the same rows
    packed = pack_int4(codes)
    scales_and_zeros = torch.stack([torch.ones(K // 64, N), torch.zeros(K // 64, N)], -1).bfloat16()
    x = torch.full((2, K), 127.0)  # each row's scale 1, so nothing but whole numbers below 2**24
    x[1] = -127
    got = kernel(x, packed, scales_and_zeros, path)
    want = x @ (codes.t().float() - 8)  # exact in fp32 too
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_kernel_errs_from_the_exact_product_only_by_rounding_rows_to_int8(path, shape):
    """Through the layer: each row rounds by at most half its step (max |x| / 254); the zeros' part is
    taken on the unrounded rows, so only the scaled codes count; then the bias and bf16's rounding."""
    _, packed, scales_and_zeros = quantized(shape, seed=3)
    layer = Int4Linear(packed, scales_and_zeros, torch.randn(shape[0]).bfloat16(), shape[1])
    assert layer.use_decode_path(path) == path
    x = torch.randn(5, shape[1], generator=torch.Generator().manual_seed(4)).bfloat16()
    assert_within_int8_rounding(layer, x, 2**-7)


def test_each_row_is_the_same_alone_or_among_others(path):
    """A token verified among drafts gets exactly the logits it gets alone."""
    _, packed, scales_and_zeros = quantized((192, 1024))
    x = torch.randn(9, 1024, generator=torch.Generator().manual_seed(5)).bfloat16()
    together = kernel(x, packed, scales_and_zeros, path)  # passes of 4, 4 and 1 rows
    for i in range(9):
        assert torch.equal(kernel(x[i : i + 1], packed, scales_and_zeros, path)[0], together[i])
    for start, end in ((2, 6), (1, 4), (3, 5), (0, 7)):  # 4 rows, 3, 2, and 4 + 3
        assert torch.equal(kernel(x[start:end], packed, scales_and_zeros, path), together[start:end])


def test_a_non_finite_row_stays_non_finite(path):
    _, packed, scales_and_zeros = quantized((128, 256))
    x = torch.randn(4, 256).bfloat16()
    x[1, 5], x[2, 200] = float("nan"), float("inf")
    finite = kernel(x, packed, scales_and_zeros, path).isfinite().all(1)
    assert finite.tolist() == [True, False, False, True]


def test_a_layer_takes_rows_of_any_leading_shape_and_layout(path):
    """A token's call goes straight to the kernel with the activations as they come: (B, T, K), strided or
    not, bf16 or fp32, each row as the 2-D call computes it."""
    _, packed, scales_and_zeros = quantized((128, 256))
    layer = Int4Linear(packed, scales_and_zeros, torch.randn(128).bfloat16(), 256)
    assert layer.use_decode_path(path) == path
    wide = torch.randn(1, 3, 512).bfloat16()
    x = wide[..., ::2]  # (1, 3, 256), not contiguous
    want = layer.product(x.reshape(3, 256).contiguous())
    got = layer(x)
    assert got.shape == (1, 3, 128) and torch.equal(got.reshape(3, 128), want)
    assert torch.equal(layer(x.float()), want.float().view(1, 3, 128))


def test_what_the_kernel_cannot_take_stays_on_tinygemm(path):
    _, packed, scales_and_zeros = quantized((48, 64))  # not whole blocks of 32 or 64 rows
    assert Int4Linear(packed, scales_and_zeros, None, 64).use_decode_path(path) == "tinygemm"
    _, packed, scales_and_zeros = quantized((64, 64))
    assert Int4Linear(packed, scales_and_zeros.float(), None, 64).use_decode_path(path) == "tinygemm"
    assert not native_int4.int4_fits(64, 64, 8, path)  # groups the kernel would refuse at run time
    assert native_int4.int4_fits(64, 64, 16, path)
    layer = Int4Linear(packed, scales_and_zeros, None, 64)
    assert layer.use_decode_path("no-such-path") == "tinygemm"
    assert layer.use_decode_path(path) == path
    with pytest.raises(ValueError, match="takes no weight"):
        native_int4.int4_mm(
            torch.randn(1, 64), packed[:48], scales_and_zeros, 64, torch.empty(1000), path=path
        )


def test_only_the_kernel_for_the_layout_pytorch_packs_here_runs():
    """PyTorch packs int4 weights in 64-row blocks with AVX-512 and in 32-row ones without: each kernel
    reads one, and runs only where it is the one packed here."""
    layout = cpu_layout(torch.bfloat16)
    for path, reads in native_int4.LAYOUTS.items():
        if layout is None or layout[:2] != reads[:2]:
            assert not native_int4.int4_works(path, torch.bfloat16)
    assert not any(native_int4.int4_works(path, torch.float32) for path in KERNELS)  # bf16 scales only


@pytest.mark.parametrize("kernel_path", KERNELS)
def test_a_kernel_runs_wherever_it_builds_on_its_layout(kernel_path):
    """Built here, on the layout PyTorch packs here, a kernel must agree with tinygemm: a kernel that
    computed wrongly would otherwise be set aside quietly and its tests skipped."""
    library, layout = native._library(native_int4.KERNELS[kernel_path]), cpu_layout(torch.bfloat16)
    if library is None or layout is None or layout[:2] != native_int4.LAYOUTS[kernel_path][:2]:
        pytest.skip(f"the {kernel_path} kernel does not build here, or PyTorch packs another layout")
    assert native_int4.int4_works(kernel_path, torch.bfloat16)


def test_rows_of_a_prompt_take_the_prompt_path_not_the_kernel(path):
    _, packed, scales_and_zeros = quantized((64, 64))
    layer = Int4Linear(packed, scales_and_zeros, None, 64)
    layer.use_decode_path(path)
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
    assert layer.use_prompt_path(path) == path and layer.layout is None  # nothing unpacked for it
    layer.prompt_product = layer.product  # the spy again, now for prompts
    layer(torch.randn(INT4_PROMPT_ROWS, 64).bfloat16())
    assert calls == [3, INT4_PROMPT_ROWS - 1, INT4_PROMPT_ROWS]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_a_prompt_through_the_kernel_gives_each_row_what_it_gets_alone(path, dtype):
    """The kernel as a prompt path: every row of a prompt exactly as that row decoded alone, the bias added
    once, within int8 rounding of the exact product."""
    _, packed, scales_and_zeros = quantized((128, 256))
    layer = Int4Linear(packed, scales_and_zeros, torch.randn(128).bfloat16(), 256)
    assert (layer.use_prompt_path(path), layer.use_decode_path(path)) == (path, path)
    x = torch.randn(1, INT4_PROMPT_ROWS + 5, 256, generator=torch.Generator().manual_seed(3)).to(dtype)
    got = layer(x)
    assert got.shape == (1, INT4_PROMPT_ROWS + 5, 128) and got.dtype == dtype
    for i in (0, 1, 77, INT4_PROMPT_ROWS + 4):
        assert torch.equal(got[0, i], layer(x[:, i])[0])
    assert_within_int8_rounding(
        layer, x[0].float(), output_rounding=2**-7 if dtype == torch.bfloat16 else 1e-6
    )


def test_a_prompt_path_the_kernel_cannot_take_stays_on_tinygemm(path):
    _, packed, scales_and_zeros = quantized((48, 64))  # not whole blocks of 32 or 64 rows
    layer = Int4Linear(packed, scales_and_zeros, None, 64)
    assert layer.use_prompt_path(path) == "tinygemm" and layer.prompt_product is None


@needs_vnni
@pytest.mark.parametrize("span", [(0, 64), (64, 192), (0, 256)])
def test_unpacking_for_prompts_gives_each_weight_as_an_int8_number(span):
    """(code - 8) times its group's whole multiple of the row's scale, rows in their own order."""
    weight = torch.randn(256, 192, generator=torch.Generator().manual_seed(11)) * 0.05
    codes, scales_and_zeros, row_scales = quantize_int4(weight)
    multipliers = (scales_and_zeros[..., 0] / row_scales).round()  # (G, N), whole numbers 1..16
    start, end = span
    chunk = multipliers[:, start:end].to(torch.int8).contiguous()
    out = torch.empty(192, end - start, dtype=torch.int8)
    got = native_int4.unpack_int8(pack_int4(codes), span, chunk, 64, out)
    want = (codes[start:end] - 8) * multipliers[:, start:end].repeat_interleave(64, 0).t()  # (n, K)
    assert torch.equal(got, want.t().to(torch.int8))
    with pytest.raises(ValueError, match="cannot unpack"):
        native_int4.unpack_int8(pack_int4(codes), (32, 96), chunk, 64, out)  # not whole blocks


@needs_vnni
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
    layout = native_int4.LAYOUT
    prompt = (x, packed, scales_and_zeros, row_scales, layout, dequant.UnpackScratch())
    plain = dequant.int8_product(*prompt)
    assert torch.equal(plain, dequant.int8_product(*prompt, dequant.Native(native_int4.unpack_int8)))
    if native_int8.int8_rows_work():  # rounding and scaling in one pass each too
        helpers = dequant.Native(native_int4.unpack_int8, native_int8.round_rows_int8, native_int8.scale_rows)
        assert torch.equal(plain, dequant.int8_product(*prompt, helpers))
        assert torch.equal(plain, dequant.int8_product(*prompt, dequant.Native(None, *helpers[1:])))
    calls = []
    monkeypatch.setattr(native_int4, "unpack_int8", lambda *a: calls.append(a[1]) or native_unpack(*a))
    layer = Int4Linear(packed, scales_and_zeros, None, shape[1], row_scales)
    assert layer.use_prompt_path("int8") == "int8"
    assert torch.equal(layer(x), dequant.int8_product(*prompt).to(torch.bfloat16))
    chunks = dequant.chunks(shape[0], shape[1], layout, dequant.INT8_CHUNK_ELEMENTS)
    assert calls == [(a, b) for a, b, chunk_layout in chunks if chunk_layout == layout]


native_unpack = native_int4.unpack_int8


@pytest.fixture
def fresh_library():
    native._library.cache_clear()
    native_int4._agrees.cache_clear()
    yield
    native._library.cache_clear()
    native_int4._agrees.cache_clear()


def test_without_a_compiler_int4_stays_on_tinygemm(fresh_library, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    for path, library in native_int4.KERNELS.items():
        assert native._library(library) is None
        assert not native_int4.int4_works(path, torch.bfloat16)
    plan = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "int4-decode=vnni")
    assert plan[(128, 256)]["int4-decode"] == "tinygemm"
    plan = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "int4-decode=avx2")
    assert plan[(128, 256)]["int4-decode"] == "tinygemm"


def test_the_plan_offers_the_kernels_where_they_run(monkeypatch):
    import sc2cli.model.kernels as kernels

    measured = []
    own = [path for path in KERNELS if RUNS[path]]
    monkeypatch.setattr(
        kernels,
        "fastest",
        lambda candidates, x, evict=None: measured.append(sorted(candidates)) or sorted(candidates)[0],
    )
    plan = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "int4-prompt=tinygemm")
    assert measured == ([sorted(["tinygemm", *own])] if own else [])
    assert plan[(128, 256)]["int4-decode"] == (sorted(["tinygemm", *own])[0])
    small = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "auto", weight_bytes=4096)
    assert small[(128, 256)]["int4-decode"] == "tinygemm"  # unmeasured, nothing compiled for it
    measured.clear()  # prompts: the kernels beside the paths that unpack
    plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "int4-decode=tinygemm")
    assert len(measured) == 1 and set(own) <= set(measured[0]) and "tinygemm" in measured[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("native_int4"))


def load(checkpoint, decode, monkeypatch, prompt="tinygemm"):
    monkeypatch.setenv("SC2_KERNELS", f"int4-prompt={prompt},int4-decode={decode}")
    return sc2cli.load_model(checkpoint, dtype="bf16", device="cpu", attn="sdpa", quantize="int4")


def test_a_model_decodes_through_the_kernel_and_drafts_change_no_greedy_token(path, checkpoint, monkeypatch):
    model = load(checkpoint, path, monkeypatch)
    decode = model.kernels.rpartition("decode ")[2]  # the shapes it takes, and the vocabulary's
    assert set(decode.split(" + ")) == {path, "tinygemm"}
    decoders = {m.decode for m in model.modules() if isinstance(m, Int4Linear)}
    assert decoders == {path, "tinygemm"}
    g = torch.Generator().manual_seed(0)
    piece = torch.randint(10, 200, (6,), generator=g).tolist()
    for prompt in (torch.randint(10, 200, (30,), generator=g).tolist(), piece * 4):
        plain = [s.token for s in generate(model, prompt, max_new_tokens=30)]
        speculation = Speculation()
        fast = [s.token for s in generate(model, prompt, max_new_tokens=30, speculation=speculation)]
        assert fast == plain


def test_decode_logits_stay_near_tinygemms(path, checkpoint, monkeypatch):
    ids = torch.randint(10, 200, (1, 12), generator=torch.Generator().manual_seed(2))
    logits = {}
    for decode in (path, "tinygemm"):
        model = load(checkpoint, decode, monkeypatch)
        with torch.inference_mode():
            logits[decode] = model(ids).float()
    difference = (logits[path] - logits["tinygemm"]).abs().max()
    assert 0 < difference <= 0.05 * logits["tinygemm"].abs().max()


def test_a_prompt_through_the_kernel_stays_near_tinygemms_logits(path, checkpoint, monkeypatch):
    """A prompt long enough for the prompt path (the shapes the kernel takes; the vocabulary's stays on
    tinygemm), through the kernel and through tinygemm."""
    ids = torch.randint(10, 200, (1, INT4_PROMPT_ROWS + 8), generator=torch.Generator().manual_seed(4))
    logits = {}
    for prompt in (path, "tinygemm"):
        model = load(checkpoint, "tinygemm", monkeypatch, prompt)
        assert {m.prompt for m in model.modules() if isinstance(m, Int4Linear)} == {prompt, "tinygemm"}
        with torch.inference_mode():
            logits[prompt] = model(ids).float()
    difference = (logits[path] - logits["tinygemm"]).abs().max()
    assert 0 < difference <= 0.05 * logits["tinygemm"].abs().max()
