"""CPU verify_attention on 1 and on 2 threads: bf16 vs int8 vs int4 time and their thread scaling, per shape.

    PYTHONPATH=. python bench/verify_attention_threads.py [shape,...]     (shapes: llama-65536-1, smol-4096-11, ...)

One thread is timed in per-thread CPU time (another process on the machine does not inflate it); two threads in
wall time. Caches rotate past the 260 MiB LLC. A diagnostic for issue 3's open CPU targets (int8/int4 vs bf16 at
64K, SmolLM2 11 queries): a compute-bound format that scales well below 2x on 2 threads points at the schedule,
not the arithmetic. Not collected as a test.
"""
import math
import sys
import time

import torch

from rapid_engine import ops

HEADS = {"llama": (32, 8, 128), "smol": (9, 3, 64)}
DEFAULT = ["llama-65536-1", "smol-65536-1", "smol-4096-11", "smol-65536-11", "llama-4096-11"]
WORKING_SET = 400 << 20


def time_formats(model: str, S: int, nq: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    qh, kvh, D = HEADS[model]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, nq, qh, D, generator=g)
    sl = torch.tensor([S], dtype=torch.int32)
    n = max(2, math.ceil(WORKING_SET / (2 * kvh * S * D * 2)))
    base = [tuple(torch.randn(1, kvh, S, D, generator=g).to(torch.bfloat16) for _ in range(2)) for _ in range(n)]
    out = {}
    for fmt in ("bf16", "int8", "int4"):
        caches = [(ops.quantize_kv(k, fmt), ops.quantize_kv(v, fmt)) for k, v in base]
        for k, v in caches:
            ops.verify_attention(q, k, v, sl, backend="cpu")
        times = []
        for _ in range(7):
            t0 = clock()
            for k, v in caches:
                ops.verify_attention(q, k, v, sl, backend="cpu")
            times.append((clock() - t0) / len(caches))
        out[fmt] = sorted(times)[len(times) // 2]
    return out


def main() -> None:
    shapes = sys.argv[1].split(",") if len(sys.argv) > 1 else DEFAULT
    for shape in shapes:
        model, S, nq = shape.split("-")
        one, two = (time_formats(model, int(S), int(nq), t) for t in (1, 2))
        print(f"{shape:14s} " + "  ".join(
            f"{f} {one[f] * 1e3:7.3f} -> {two[f] * 1e3:7.3f} ms (x{one[f] / two[f]:.2f}, /bf16 {two[f] / two['bf16']:.2f})"
            for f in one), flush=True)


if __name__ == "__main__":
    main()
