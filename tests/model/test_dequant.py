"""int4 prompts through unpacked weights: the unpacked weight is exactly the one tinygemm multiplies, the
prompt paths agree with tinygemm (the int8 path within its rows' rounding to int8, and exactly on rows
already in int8), and a model takes the path its plan names, loaded quantized or from the cache."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from sc2cli.checkpoint.load import load_checkpoint
from sc2cli.folders import cache_folder
from sc2cli.model import dequant, native_int4, onednn
from sc2cli.model.dequant import (
    KNOWN_LAYOUTS,
    UnpackScratch,
    cpu_layout,
    int8_mm_fast,
    int8_mm_works,
    unpacked_product,
)
from sc2cli.model.linear import plan_kernels
from sc2cli.model.quant import (
    INT4_INT8_PROMPT_ROWS,
    INT4_PROMPT_PATHS,
    INT4_PROMPT_ROWS,
    Int4Linear,
    quantize_and_pack_int4,
    quantize_int4,
)

from ..checkpoints import write_tiny_model

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SHAPES = [(256, 128), (208, 192), (48, 64)]  # whole blocks; whole blocks and a shorter one; a short one only
needs_layout = pytest.mark.skipif(
    cpu_layout(torch.bfloat16) is None, reason="tinygemm's CPU layout unknown here"
)


needs_int8 = pytest.mark.skipif(
    cpu_layout(torch.bfloat16) is None or not int8_mm_works(),
    reason="tinygemm's CPU layout unknown or torch._int_mm missing here",
)


def packed_weight(shape, dtype, seed=0, with_row_scales=False):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    packed, scales_and_zeros, row_scales = quantize_and_pack_int4(weight)
    if with_row_scales:
        return weight, packed, scales_and_zeros.to(dtype), row_scales
    return weight, packed, scales_and_zeros.to(dtype)


def tinygemm(x, packed, scales_and_zeros):
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scales_and_zeros)


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunking(request, monkeypatch):
    if request.param:  # a block per chunk
        monkeypatch.setattr(dequant, "CHUNK_ELEMENTS", 1)


@needs_layout
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_unpacked_weight_is_exactly_the_one_tinygemm_multiplies(shape, dtype, chunking):
    layout = cpu_layout(dtype)
    if layout is None:
        pytest.skip(f"tinygemm's arithmetic for {dtype} is not reproduced here")
    weight, packed, scales_and_zeros = packed_weight(shape, dtype)
    identity = torch.eye(shape[1], dtype=dtype)
    unpacked = unpacked_product(identity, packed, scales_and_zeros, layout, UnpackScratch())  # (K, N)
    assert torch.equal(unpacked, tinygemm(identity, packed, scales_and_zeros))
    if dtype != torch.float32:  # (code - 8) * scale is exact: the reference rounds only once too
        codes, _, _ = quantize_int4(weight)
        scale, zero = (scales_and_zeros[..., i].float().t().repeat_interleave(64, 1) for i in (0, 1))
        assert torch.equal(unpacked.t(), ((codes - 8) * scale + zero).to(dtype))


@needs_layout
def test_no_other_known_layout_passes_the_check(monkeypatch):
    """The check tells every known arrangement (and order of arithmetic) from this machine's."""
    mine = cpu_layout(torch.bfloat16)
    monkeypatch.setattr(dequant, "KNOWN_LAYOUTS", tuple(other for other in KNOWN_LAYOUTS if other != mine))
    cpu_layout.cache_clear()
    try:
        assert cpu_layout(torch.bfloat16) is None
    finally:
        cpu_layout.cache_clear()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 instruction sets")
@pytest.mark.parametrize(("isa", "layout"), [("avx2", (32, 16, True)), ("default", (32, 1, False))])
def test_the_layouts_of_other_instruction_sets_are_recognised(isa, layout):
    """PyTorch told to dispatch to an older instruction set packs (and computes) otherwise; a CPU without
    AVX2 runs neither `avx2` nor what this machine runs, so the capability is checked too."""
    code = (
        "import torch; from sc2cli.model.dequant import cpu_layout; "
        "print(torch.backends.cpu.get_cpu_capability(), tuple(cpu_layout(torch.bfloat16) or ()))"
    )
    env = os.environ | {"ATEN_CPU_CAPABILITY": isa}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    capability, found = out.stdout.split(maxsplit=1)
    if capability.lower() != isa:
        pytest.skip(f"this CPU cannot run {isa}")
    assert found.strip() == str(layout)


@needs_layout
@pytest.mark.parametrize("path", ["dequant", "dequant-fp32", "dequant-fp32-onednn"])
@pytest.mark.parametrize("rows", [INT4_PROMPT_ROWS, 200, 333])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prompt_paths_agree_with_tinygemm_within_bf16_rounding(shape, rows, path, chunking):
    if path.endswith("onednn") and not onednn.fp32_works():
        pytest.skip("oneDNN's fp32 inner product does not run in this build")
    _, packed, scales_and_zeros = packed_weight(shape, torch.bfloat16, seed=rows)
    layer = Int4Linear(packed, scales_and_zeros, None, shape[1])
    assert layer.use_prompt_path(path) == path
    x = torch.randn(2, rows, shape[1], generator=torch.Generator().manual_seed(1)).bfloat16()
    got, want = layer(x), tinygemm(x.reshape(-1, shape[1]), packed, scales_and_zeros).view(2, rows, -1)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    # the same sums of the same products: apart from the order of the sums, only the weights' rounding to
    # bf16 (dequant; dequant-fp32 multiplies tinygemm's fp32 weights) and the outputs' rounding differ
    tolerance = (2**-7 if path == "dequant" else 2**-8) * want.float().abs().max()
    assert (got.float() - want.float()).abs().max() <= tolerance


def weights_tinygemm_multiplies(packed, scales_and_zeros):
    """(K, N) fp64: each weight alone, through tinygemm (the product with an identity matrix)."""
    k = packed.shape[1] * 2
    return tinygemm(torch.eye(k, dtype=scales_and_zeros.dtype), packed, scales_and_zeros).double()


@needs_int8
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_int8_path_is_exact_on_rows_already_in_int8(shape, dtype, chunking):
    """Rows that are whole multiples of their max / 127 lose nothing to int8: the product is tinygemm's
    weights times them, rounded once (fp32: to fp32's sums)."""
    _, packed, scales_and_zeros, row_scales = packed_weight(shape, dtype, seed=7, with_row_scales=True)
    layer = Int4Linear(packed, scales_and_zeros, None, shape[1], row_scales)
    assert layer.use_prompt_path("int8") == "int8"
    generator = torch.Generator().manual_seed(2)
    steps = torch.randint(-127, 128, (INT4_PROMPT_ROWS, shape[1]), generator=generator)
    steps[:, 0] = 127  # each row's largest
    x = (steps * 2.0**-9).to(dtype)  # exact in every dtype
    want = x.double() @ weights_tinygemm_multiplies(packed, scales_and_zeros)
    before = x.clone()
    got = layer(x).double()
    assert torch.equal(x, before)  # scaled in a copy, fp32 rows too
    rounding = {torch.float32: 2**-20, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    assert (got - want).abs().max() <= rounding * want.abs().max()


@needs_int8
@pytest.mark.parametrize("rows", [INT4_PROMPT_ROWS, 333])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_int8_path_errs_only_by_its_rows_rounding_to_int8(shape, rows, chunking):
    """Each row rounds to int8 by at most half its step (max |x| / 254); the product then errs by at most
    that times the sum of |w| of each output (the zeros' part is taken on the unrounded rows, so only the
    scaled codes count), plus the output's rounding to bf16."""
    _, packed, scales_and_zeros, row_scales = packed_weight(
        shape, torch.bfloat16, seed=rows, with_row_scales=True
    )
    layer = Int4Linear(packed, scales_and_zeros, torch.randn(shape[0]).bfloat16(), shape[1], row_scales)
    assert layer.use_prompt_path("int8") == "int8"
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(3)).bfloat16()
    assert_within_int8_rounding(layer, x, 2**-8)


def assert_within_int8_rounding(layer: Int4Linear, x: torch.Tensor, output_rounding: float) -> None:
    """`layer(x)` errs from the exact product with tinygemm's weights by no more than rounding each row to
    int8 (half its step), then the output's rounding (relative)."""
    weights = weights_tinygemm_multiplies(layer.packed, layer.scales_and_zeros)  # (K, N)
    zeros = layer.scales_and_zeros[..., 1].double().repeat_interleave(64, 0)  # (K, N)
    exact = x.double() @ weights + layer.bias.double()
    half_step = x.double().abs().amax(1, keepdim=True) / 254  # (rows, 1)
    bound = half_step * (weights - zeros).abs().sum(0) + output_rounding * exact.abs() + 1e-6
    got = layer(x).double()
    assert (got - exact).abs().le(bound).all()
    assert (got - exact).abs().max() > 0  # the rows did round: the bound is what is tested


@needs_int8
def test_the_int8_path_keeps_a_non_finite_row_non_finite():
    """A NaN or Inf in a row (damaged weights, an overflow) must reach the logits, where generation
    reports it, rather than be rounded into a finite int8 row."""
    _, packed, scales_and_zeros, row_scales = packed_weight((256, 128), torch.bfloat16, with_row_scales=True)
    layer = Int4Linear(packed, scales_and_zeros, None, 128, row_scales)
    layer.use_prompt_path("int8")
    x = torch.randn(INT4_PROMPT_ROWS, 128).bfloat16()
    x[3, 5], x[7, 0] = float("nan"), float("inf")
    out = layer(x)
    finite = out.isfinite().all(1)
    assert not finite[3] and not finite[7] and finite[[0, 1, 2, 4, 5, 6, 8]].all()


@needs_int8
def test_the_int8_path_needs_whole_multiples_and_otherwise_takes_tinygemm():
    _, packed, scales_and_zeros, row_scales = packed_weight((256, 128), torch.bfloat16, with_row_scales=True)
    assert Int4Linear(packed, scales_and_zeros, None, 128).use_prompt_path("int8") == "tinygemm"  # old cache
    skewed = row_scales * 1.5  # the scales are no longer whole multiples of these
    assert Int4Linear(packed, scales_and_zeros, None, 128, skewed).use_prompt_path("int8") == "tinygemm"
    assert Int4Linear(packed, scales_and_zeros, None, 128, row_scales).use_prompt_path("int8") == "int8"


@needs_layout
@pytest.mark.parametrize(
    ("path", "threshold"),
    [("dequant", INT4_PROMPT_ROWS), pytest.param("int8", INT4_INT8_PROMPT_ROWS, marks=needs_int8)],
)
def test_fewer_rows_than_a_prompt_take_tinygemm_whatever_the_path(path, threshold):
    _, packed, scales_and_zeros, row_scales = packed_weight((256, 128), torch.bfloat16, with_row_scales=True)
    layer = Int4Linear(packed, scales_and_zeros, torch.randn(256).bfloat16(), 128, row_scales)
    assert layer.use_prompt_path(path) == path
    x = torch.randn(threshold, 128).bfloat16()
    assert torch.equal(layer(x[1:]), tinygemm(x[1:], packed, scales_and_zeros) + layer.bias)
    assert not torch.equal(layer(x), tinygemm(x, packed, scales_and_zeros) + layer.bias)  # its own path


def test_a_path_this_machine_cannot_run_falls_back_to_tinygemm(monkeypatch):
    import sc2cli.model.quant as quant

    monkeypatch.setattr(quant, "cpu_layout", lambda dtype: None)
    _, packed, scales_and_zeros = packed_weight((256, 128), torch.bfloat16)
    layer = Int4Linear(packed, scales_and_zeros, None, 128)
    assert layer.use_prompt_path("dequant") == "tinygemm" and layer.layout is None


@needs_layout
def test_the_scratch_is_shared_and_stays_the_size_of_a_chunk(monkeypatch):
    monkeypatch.setattr(dequant, "CHUNK_ELEMENTS", 64 * 128)
    scratch = UnpackScratch()
    for seed in range(2):
        _, packed, scales_and_zeros = packed_weight((256, 128), torch.bfloat16, seed)
        layer = Int4Linear(packed, scales_and_zeros, None, 128)
        layer.use_prompt_path("dequant", scratch)
        layer(torch.randn(INT4_PROMPT_ROWS, 128).bfloat16())
    assert layer.scratch is scratch
    assert scratch.buffers["weight"].numel() == 64 * 128  # a chunk of 64 rows, not the 256-row weight


def test_plan_forces_the_int4_prompt_path_and_remembers_what_it_measured(monkeypatch):
    import sc2cli.model.kernels as kernels

    shapes = [(256, 128), (48, 64), (300, 64)]  # the last one tinygemm cannot pack: int8 weights, no choice
    both = "int4-prompt=tinygemm,int4-decode=tinygemm"
    forced = plan_kernels(shapes, "int4", torch.device("cpu"), torch.bfloat16, both)
    assert forced == {
        (256, 128): {"int4-prompt": "tinygemm", "int4-decode": "tinygemm"},
        (48, 64): {"int4-prompt": "tinygemm", "int4-decode": "tinygemm"},
        (300, 64): {},
    }
    if cpu_layout(torch.bfloat16) is None:
        return
    measured = []
    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: measured.append(sorted(candidates)) or "dequant"
    )
    decode = "int4-decode=tinygemm"  # measured in test_native_int4.py
    first = plan_kernels(shapes, "int4", torch.device("cpu"), torch.bfloat16, decode)
    assert first[(256, 128)] == first[(48, 64)] == {"int4-prompt": "dequant", "int4-decode": "tinygemm"}
    unpacked = ["dequant", "dequant-fp32"] + (["dequant-fp32-onednn"] if onednn.fp32_works() else [])
    unpacked += ["int8"] if int8_mm_fast() else []
    own = [path for path in native_int4.KERNELS if native_int4.int4_works(path, torch.bfloat16)]
    assert measured == [
        sorted([*unpacked, *own, "tinygemm"]),
        [*unpacked, "tinygemm"],
    ]  # 48 rows: no kernel's
    assert plan_kernels(shapes, "int4", torch.device("cpu"), torch.bfloat16, decode) == first  # remembered
    assert len(measured) == 2
    assert "int4-prompt 256x128" in (cache_folder() / "kernels.json").read_text()


@needs_layout
def test_the_probe_times_real_layers_of_every_path():
    """Unmocked: the stand-in layers of each path run (on stand-in packed bytes) and one of them wins."""
    plan = plan_kernels([(128, 256)], "int4", torch.device("cpu"), torch.bfloat16, "auto", remember=False)
    assert plan[(128, 256)]["int4-prompt"] in INT4_PROMPT_PATHS


def test_small_models_take_tinygemm_unmeasured(monkeypatch):
    import sc2cli.model.kernels as kernels

    monkeypatch.setattr(
        kernels, "fastest", lambda candidates, x, evict=None: pytest.fail("measured a tiny model")
    )
    plan = plan_kernels([(256, 128)], "int4", torch.device("cpu"), torch.bfloat16, "auto", weight_bytes=65536)
    assert plan == {(256, 128): {"int4-prompt": "tinygemm", "int4-decode": "tinygemm"}}


@needs_layout
def test_a_model_takes_the_planned_prompt_path_quantized_and_from_the_cache(tmp_path, monkeypatch):
    """Forced paths through load_checkpoint: the layers take them whether quantized now or read from the
    packed-weight cache, the cache serves every path (the path is not part of its key), and a prompt's
    logits on either path agree within bf16 rounding."""
    folder = write_tiny_model(tmp_path / "m", seed=4)

    def load(path):
        monkeypatch.setenv("SC2_KERNELS", f"int4-prompt={path},int8=weight-only")
        model = load_checkpoint(folder, quantize="int4", dtype="bf16", device="cpu")
        layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
        assert layers and {m.prompt for m in layers} == {path}
        assert len({id(m.scratch) for m in layers}) == 1
        return model

    first = load("dequant")
    assert "packed-weight cache" not in first.kernels and "int4 prompts dequant" in first.kernels
    cached = load("dequant")
    assert "packed-weight cache" in cached.kernels and "int4 prompts dequant" in cached.kernels
    other = load("tinygemm")
    assert "packed-weight cache" in other.kernels and "int4 prompts tinygemm" in other.kernels
    ids = torch.randint(0, 200, (1, INT4_PROMPT_ROWS + 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b, c = (model(ids).float() for model in (first, cached, other))
    assert torch.equal(a, b)
    assert (a - c).abs().max() <= 0.03 * c.abs().max()  # bf16 weights vs tinygemm's fp32 ones, 2 layers
    if int8_mm_works():  # the cached scales serve the int8 path too
        in_int8 = load("int8")
        assert "packed-weight cache" in in_int8.kernels and "int4 prompts int8" in in_int8.kernels
        with torch.inference_mode():
            d = in_int8(ids).float()
        assert (d - c).abs().max() <= 0.03 * c.abs().max()


def test_int4_prompt_paths_are_measured_after_the_weights_are_quantized(tmp_path, monkeypatch):
    """The packed-weight cache's key needs only the stored roles before loading; int4's prompt path is
    measured after, on top of the packed weights rather than beside the bf16 ones (peak memory)."""
    import sc2cli.checkpoint.load as load

    order = []
    plan, quantized = load.plan_kernels, load.load_quantized
    monkeypatch.setattr(
        load, "plan_kernels", lambda *a, **k: order.append(tuple(k["roles"])) or plan(*a, **k)
    )
    monkeypatch.setattr(load, "load_quantized", lambda *a: order.append("loaded") or quantized(*a))
    folder = write_tiny_model(tmp_path / "m", seed=2)
    model = load_checkpoint(
        folder, quantize="int4", dtype="bf16", device="cpu", kernels="int4-prompt=tinygemm"
    )
    assert order == [load.STORED_ROLES, "loaded", load.RUN_TIME_ROLES]
    assert "int4 prompts tinygemm" in model.kernels


def test_a_plain_loop_for_int8_products_is_not_offered(monkeypatch):
    """`torch._int_mm` that sums exactly but at a loop's speed (as PyTorch's is on AVX2-only CPUs) is not
    worth timing as an int4 prompt path; one as fast as fp32's product is."""
    from sc2cli.model import dequant

    real, fp32 = torch._int_mm, torch.Tensor.__matmul__

    def loop(a, b):  # the exact sums, after as long as ~20 fp32 products of the shape take
        for _ in range(20):
            fp32(a.float(), b.float())
        return real(a, b)

    for int_mm, fast in ((loop, False), (lambda a, b: fp32(a.float(), b.float()).int(), True)):
        monkeypatch.setattr(torch, "_int_mm", int_mm)
        dequant.int8_mm_fast.cache_clear()
        try:
            assert dequant.int8_mm_fast() == (fast and int8_mm_works())
        finally:
            dequant.int8_mm_fast.cache_clear()
