"""Timing and the memory roofline, shared by every benchmark in bench/.

This machine's read bandwidth drifts a lot between runs (24 to 55 GB/s for the same loop), so an
absolute GB/s means little. What holds is a fraction measured in one process: `InterleavedRoofline`
measures a large streaming read right before each timed round of a kernel and reports the kernel's
achieved GB/s divided by the bandwidth of that round. `time_interleaved` times several callables
round-robin so a drift hits all of them alike and their ratios hold.

Works on CPU and CUDA (pass device="cuda"; timings synchronize the device).
"""
from __future__ import annotations

import itertools
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable, *, warmup: int = 2, reps: int = 10, device="cpu") -> float:
    """Median wall seconds of fn() over `reps` calls, after `warmup` untimed ones."""
    if reps < 1:
        raise ValueError(f"time_call: reps must be >= 1, got {reps}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_interleaved(fns: dict, *, warmup: int = 2, reps: int = 10, device="cpu") -> dict:
    """Median seconds per name, timing the callables round-robin (one call each per round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rotating(calls: list) -> Callable:
    """One callable that runs the next of `calls` each time, round robin. Benchmarks give it one call per
    copy of their inputs, enough copies to exceed the last-level cache, so each timed call reads memory."""
    it = itertools.cycle(calls)
    return lambda: next(it)()


def _read_buffer(nbytes: int, device) -> torch.Tensor:
    # ones(), not empty(): touching every page now keeps page faults out of the timed reads.
    return torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)


def _best_read_seconds(buf: torch.Tensor, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        _sync(buf.device)
        t0 = time.perf_counter()
        buf.sum()  # one streaming pass, a handful of flops per 64-byte line: bandwidth bound
        _sync(buf.device)
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth_gbs(nbytes: int = 512 << 20, *, reps: int = 5, device="cpu") -> float:
    """Best-of-`reps` streaming read bandwidth (GB/s, 1e9 bytes) of a buffer of `nbytes`."""
    buf = _read_buffer(nbytes, device)
    buf.sum()  # warm-up
    return buf.numel() * 4 / _best_read_seconds(buf, reps) / 1e9


def matmul_gflops(dtype: torch.dtype = torch.bfloat16, n: int = 2048, *, reps: int = 5, device="cpu") -> float:
    """Dense [n, n] @ [n, n] throughput in GFLOP/s (2 n^3 flops per product), best of `reps`."""
    return MatmulProbe(dtype, n, device=device, reps=reps).gflops()


class MatmulProbe:
    """The arithmetic roof, sampled on demand like InterleavedRoofline.read_gbs: a dense [n, n] @ [n, n]
    product, best of `reps`. One sample per timed round puts the roof and the kernel in the same machine
    state: on this VM the matmul rate has read 83 and 145 GFLOP/s in two runs an hour apart, and a roof
    measured once per session then says more about that moment than about the kernel."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16, n: int = 2048, *, device="cpu", reps: int = 2):
        g = torch.Generator(device="cpu").manual_seed(0)
        self._a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        self._b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        self._flops = 2 * n**3
        self.device, self.reps = device, reps
        self._a @ self._b  # warm-up (thread pool, packing buffers)
        self.samples: list = []

    def gflops(self) -> float:
        """One throughput sample now (GFLOP/s, best of reps products); kept in samples."""
        best = float("inf")
        for _ in range(self.reps):
            _sync(self.device)
            t0 = time.perf_counter()
            self._a @ self._b
            _sync(self.device)
            best = min(best, time.perf_counter() - t0)
        rate = self._flops / best / 1e9
        self.samples.append(rate)
        return rate

    def best(self) -> float:
        """The arithmetic roof of the run: the best rate sampled so far (GFLOP/s). A floor from one round's
        sample is only that moment's rate; a kernel then beats it whenever the machine was slower during the
        probe than during the kernel (this VM's 11-query table read 0.86-0.93x such a 'floor'). The best
        sample of the run is the rate the machine demonstrably reaches with its bf16 arithmetic (oneDNN on
        AMX tiles where present), so no kernel doing the same flops can go below it."""
        if not self.samples:
            self.gflops()
        return max(self.samples)


@dataclass
class RooflineResult:
    seconds: float          # median seconds per call
    bytes_moved: int        # bytes one call must read/write at minimum (the caller's model)
    achieved_gbs: float     # bytes_moved / seconds
    read_gbs: float         # median streaming-read bandwidth measured between the rounds
    fraction: float         # median over rounds of achieved / that round's read bandwidth

    def as_dict(self) -> dict:
        return asdict(self)


class InterleavedRoofline:
    """Times a memory-bound call with the read bandwidth measured right before each round.

    roof = InterleavedRoofline()                  # allocates the 256 MiB probe buffer once
    r = roof.measure(lambda: op(x), bytes_moved=x.numel() * x.element_size())
    r.fraction  -> e.g. 0.82: the call reads at 82% of what a plain streaming read gets right now
    """

    def __init__(self, nbytes: int = 256 << 20, *, device="cpu", probe_reps: int = 3):
        self.device = device
        self.probe_reps = probe_reps
        self._buf = _read_buffer(nbytes, device)
        self._buf.sum()
        self.read_samples: list = []

    def read_gbs(self) -> float:
        """One bandwidth sample now (best of probe_reps passes); kept in read_samples."""
        gbs = self._buf.numel() * 4 / _best_read_seconds(self._buf, self.probe_reps) / 1e9
        self.read_samples.append(gbs)
        return gbs

    def measure(self, fn: Callable, bytes_moved: int, *, warmup: int = 2, reps: int = 10,
                rounds: int = 3) -> RooflineResult:
        if bytes_moved <= 0:
            raise ValueError(f"measure: bytes_moved must be > 0, got {bytes_moved}")
        for _ in range(warmup):
            fn()
        seconds, reads, fractions = [], [], []
        for _ in range(rounds):
            bw = self.read_gbs()
            t = time_call(fn, warmup=0, reps=reps, device=self.device)
            seconds.append(t)
            reads.append(bw)
            fractions.append(bytes_moved / t / 1e9 / bw)
        t = statistics.median(seconds)
        return RooflineResult(seconds=t, bytes_moved=int(bytes_moved), achieved_gbs=bytes_moved / t / 1e9,
                              read_gbs=statistics.median(reads), fraction=statistics.median(fractions))


def machine_info(device="cpu") -> dict:
    """What produced a figure: CPU model, threads, torch version, GPU name when one is used."""
    info = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            # Shared machines: a load above the core count means every absolute figure is depressed.
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
