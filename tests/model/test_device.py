"""`auto` device and dtype: each branch forced, so the suite checks them all whatever CPU it runs on."""

from __future__ import annotations

import pytest
import torch

from sc2cli.errors import InputError
from sc2cli.model import device
from sc2cli.model.device import cpu_has_native_bf16, default_budget, resolve_dtype


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
    ids=["avx2-or-vnni", "avx512-bf16", "amx", "both"],
)
def test_native_bf16_is_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_has_native_bf16() is native


@pytest.mark.parametrize("native", [False, True], ids=["emulated-bf16", "native-bf16"])
def test_auto_dtype_on_a_cpu_is_bf16_with_or_without_native_bf16(monkeypatch, native):
    """Half the memory and ~1.8x fp32's decode even where bf16 is emulated (issue 20); fp32 by name."""
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    for name in (None, "", "auto"):
        assert resolve_dtype(name, torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32  # a named dtype is never changed
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_auto_dtype_on_gpus_and_bad_names():
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("mps")) == torch.float16
    with pytest.raises(InputError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))
    assert (default_budget("cpu"), default_budget("cuda"), default_budget("tpu")) == (2048, 8192, 2048)
