"""Timers: CUDA events with an L2 flush before every timed call on the GPU, perf_counter on the
CPU; both exclude warm-up and take the median (with the 20th and 80th percentiles as spread)."""

from __future__ import annotations

import random
import statistics
import time

import torch


def summarize(times_ms):
    """Median and quantiles, and the times in the order they were taken (rounds_ms: round i of
    providers timed in turn, for the ratios of report.paired_ratio)."""
    s = sorted(times_ms)
    q = lambda f: s[min(len(s) - 1, int(f * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"median_ms": statistics.median(s), "p20_ms": q(0.2), "p80_ms": q(0.8),
            "reps": len(s), "rounds_ms": list(times_ms)}


class Timer:
    """``measure(setup, fn)``: ``setup(i)`` prepares call i (untimed; e.g. the forward of a
    backward-only measurement, on input set i % K); ``fn(*args)`` is timed."""

    def __init__(self, device: str, warmup: int = 3, reps: int = 20, budget_s: float = 20.0):
        self.device, self.warmup, self.reps, self.budget_s = device, warmup, reps, budget_s
        if device == "cuda":
            # larger than the L2 (50-60 MB on Hopper): zeroing it evicts the inputs
            self._flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")

    def _once(self, fn, args):
        if self.device == "cuda":
            self._flush.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t0) * 1e3

    def measure(self, setup, fn):
        for i in range(self.warmup):
            fn(*setup(i))
        if self.device == "cuda":
            torch.cuda.synchronize()
        times, spent = [], 0.0
        for i in range(self.reps):
            args = setup(i)
            times.append(self._once(fn, args))
            spent += times[-1] / 1e3
            if spent > self.budget_s and len(times) >= 3:  # slow providers: fewer repetitions
                break
        return summarize(times)


    def measure_interleaved(self, calls):
        """``measure`` for several (setup, fn) at once, in rounds of one call of each, in an
        order shuffled per round (seeded: the same in every run), so that no call always follows
        the same one. A call that follows a provider which frees much memory or evicts the
        caches pays for it (on the CPU, the first call after the eager reference and MONAI at
        the bar size took 150 ms more, for the gradient's fresh pages): in a fixed order the
        same provider would pay every time."""
        for i in range(self.warmup):
            for setup, fn in calls:
                fn(*setup(i))
        if self.device == "cuda":
            torch.cuda.synchronize()
        times = [[] for _ in calls]
        spent = 0.0
        for i in range(self.reps):
            for k in random.Random(i).sample(range(len(calls)), len(calls)):
                setup, fn = calls[k]
                times[k].append(self._once(fn, setup(i)))
                spent += times[k][-1] / 1e3
            # at least 9 rounds: the median must not come from the few calls that paid for their
            # predecessor
            if spent > self.budget_s and i >= 8:
                break
        return [summarize(t) for t in times]


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    elems = (2 ** 28) if device == "cuda" else (2 ** 26)  # 1 GiB / 256 MiB of float32
    a = torch.randn(elems, device=device)
    b = torch.empty_like(a)
    t = Timer(device, warmup=3, reps=15)
    r = t.measure(lambda i: (), lambda: b.copy_(a))
    return 2 * a.numel() * a.element_size() / (r["median_ms"] / 1e3) / 1e9
