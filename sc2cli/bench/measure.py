"""Timing and machine figures: medians after warm-ups, tokens per second from when each token arrived,
memory bandwidth and peak memory. Measurements only: nothing here asserts a time."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ..completion.generate import PromptCache, generate, prefill
from ..model.model import Starcoder2


def median_time(fn: Callable[[], Any], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_bandwidth(device: torch.device | None = None, size_mb: int = 512) -> dict[str, float]:
    """Copy (read + write) and read bandwidth of `device`'s memory (the CPU's main memory by default), in
    GB/s, on buffers far larger than caches."""
    device = device or torch.device("cpu")
    a = torch.ones(size_mb << 18, dtype=torch.float32, device=device)  # size_mb MiB
    b = torch.empty_like(a)
    wait = waiter(device)
    copy = median_time(lambda: (b.copy_(a), wait()), 5)
    read = median_time(lambda: (a.sum(), wait()), 5)
    return {"copy_gbps": round(2 * a.nbytes / copy / 1e9, 1), "read_gbps": round(a.nbytes / read / 1e9, 1)}


def waiter(device: torch.device) -> Callable[[], None]:
    """What waits for `device`'s queued work before a time is taken: a GPU runs it after the call returns."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 1, (n,), generator=g).tolist()


def ours_prefill(model: Starcoder2, ids: list[int]) -> Callable[[], Any]:
    wait = waiter(model.device)  # the logits come back before a GPU has computed them

    def run() -> None:
        prefill(model, ids, PromptCache(model, len(ids) + 1))
        wait()

    return run


def theirs_prefill(twin, ids: list[int]) -> Callable[[], Any]:
    tensor, wait = torch.tensor([ids], device=twin.device), waiter(twin.device)

    def run() -> None:
        with torch.inference_mode():
            twin(tensor, logits_to_keep=1)
        wait()

    return run


def ours_generate(model: Starcoder2, ids: list[int], n: int) -> Callable[[], list[float]]:
    """A run of `n` new tokens; returns when each arrived."""

    def run() -> list[float]:  # no stop ids: random weights run to n
        return [time.perf_counter() for _ in generate(model, ids, max_new_tokens=n)]

    return run


class TokenClock:
    """When each new token arrived, as a transformers streamer (`put` gets the prompt first, then each
    new token; `end` at the finish)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def theirs_generate(twin, ids: list[int], n: int) -> Callable[[], list[float]]:
    tensor = torch.tensor([ids], device=twin.device)

    def run() -> list[float]:
        clock = TokenClock()
        with torch.inference_mode():
            twin.generate(tensor, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
        return clock.times

    return run


def decode_rate(run: Callable[[], list[float]], runs: int, warmup: int = 1) -> float:
    """Tokens per second of decode alone: from the first new token to the last of a run (the prompt's
    prefill comes before the first), median over `runs` after `warmup` runs."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(runs):
        times = run()
        rates.append((len(times) - 1) / max(times[-1] - times[0], 1e-9))
    return statistics.median(rates)


def interleaved(runs: int, engines: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """`runs` rounds, each measuring every engine once, back to back: each engine's samples in round order."""
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, measure in engines.items():
            samples[name].append(measure())
    return samples


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of the rounds' ratios: engines measured back to back share the machine's state of the
    moment (its memory bandwidth drifts by a third over minutes on shared hosts), which the ratio of two
    medians, taken from different rounds, does not."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
