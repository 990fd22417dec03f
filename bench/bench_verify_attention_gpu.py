"""GPU benchmark of verify_attention: CUDA vs Triton vs torch SDPA (bf16 KV), Llama-3.1-8B heads.

Shapes: 32 q heads, 8 kv heads, D 128, batch 1; S 4K..128K; n_query 1, 4, 11; KV bf16/int8/int4/fp8.
Every figure is a ratio measured in the same run: achieved GB/s over the card's copy bandwidth
(a large device-to-device copy, re-measured between shapes), quantized over bf16 time, 11 queries
over 1, and SDPA over our time. Caches rotate so the working set exceeds L2, as a decode step over
many layers does. Skips cleanly without a GPU.

  python bench/bench_verify_attention_gpu.py [--quick]   # sweep; JSON to bench/results/
  pytest bench/bench_verify_attention_gpu.py             # pytest-benchmark on a few shapes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
FORMATS = ("bf16", "int8", "int4", "fp8")


def _kernels():
    """name -> fn(q, k, v, k_scale, k_zero, v_scale, v_zero, seqlens, kv_dtype, sm_scale) available here."""
    from rapid_engine import _ext
    out = {}
    if _ext.HAS_CUDA_KERNELS:
        out["cuda"] = torch.ops.rapid.verify_attention
    if _ext.HAS_TRITON:
        from rapid_engine.triton.verify_attention import verify_attention_triton
        out["triton"] = verify_attention_triton
    return out


def copy_bandwidth(nbytes: int = 1 << 30, iters: int = 10) -> float:
    """Device copy bandwidth in bytes/s, counting read + write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(times)


def make_caches(S: int, kv_dtype: str, n: int, seed: int = 0):
    """n independent quantized (k, v) caches [1, KV_HEADS, S, HEAD_DIM] on the GPU."""
    from rapid_engine.ops.reference import quantize_kv
    gen = torch.Generator(device="cuda").manual_seed(seed)
    caches = []
    for _ in range(n):
        parts = []
        for _kv in range(2):
            x = torch.randn(1, KV_HEADS, S, HEAD_DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
            data, scale, zero = quantize_kv(x, kv_dtype)
            parts.append((data, scale if scale.numel() else None, zero if zero.numel() else None))
        caches.append(parts)
    return caches


def kv_bytes(S: int, kv_dtype: str) -> int:
    """Bytes one call must read: K and V data plus their scales/zeros."""
    per_token = {"bf16": 2 * HEAD_DIM, "fp16": 2 * HEAD_DIM, "fp32": 4 * HEAD_DIM, "int8": HEAD_DIM + 4,
                 "fp8": HEAD_DIM + 4, "int4": HEAD_DIM // 2 + 4 * (HEAD_DIM // 32)}[kv_dtype]
    return 2 * KV_HEADS * S * per_token


def time_rotating(fn, arg_sets, iters: int) -> float:
    """Median seconds per call, cycling through arg_sets (distinct caches) so L2 does not hold the KV."""
    for a in arg_sets[:2]:
        fn(*a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(iters):
        a = arg_sets[i % len(arg_sets)]
        start.record()
        fn(*a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _n_caches(S: int, kv_dtype: str) -> int:
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    return max(2, min(16, math.ceil(4 * l2 / kv_bytes(S, kv_dtype))))


def _sdpa_args(caches, nq):
    """SDPA on the same logical cache in bf16 (the baseline a user would otherwise run)."""
    from rapid_engine.ops.reference import dequantize_kv
    out = []
    S = caches[0][0][0].shape[2]
    mask = None
    if nq > 1:  # bottom-right causal: query i sees keys <= S - nq + i
        i = torch.arange(nq, device="cuda")[:, None]
        mask = torch.arange(S, device="cuda")[None, :] <= (S - nq + i)
    for (kd, ks, kz), (vd, vs, vz) in caches:
        kvd = {torch.int8: "int8", torch.uint8: "int4", torch.float8_e4m3fn: "fp8"}.get(kd.dtype, "bf16")
        k = dequantize_kv(kd, ks, kz, kvd, HEAD_DIM).to(torch.bfloat16) if kvd != "bf16" else kd
        v = dequantize_kv(vd, vs, vz, kvd, HEAD_DIM).to(torch.bfloat16) if kvd != "bf16" else vd
        q = torch.randn(1, Q_HEADS, nq, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        out.append((q, k, v, mask))
    return out


def _sdpa(q, k, v, mask):
    try:  # torch >= 2.5 reads the 8 KV heads once per group
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except TypeError:
        g = Q_HEADS // KV_HEADS
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)


def run_sweep(seq_lens, n_queries, formats, iters: int) -> dict:
    kernels = _kernels()
    props = torch.cuda.get_device_properties(0)
    rows = []
    for S in seq_lens:
        for kv_dtype in formats:
            n = _n_caches(S, kv_dtype)
            caches = make_caches(S, kv_dtype, n)
            for nq in n_queries:
                bw = copy_bandwidth()  # re-measured next to every group of timed calls
                seqlens = torch.full((1,), S, dtype=torch.int32, device="cuda")
                q = torch.randn(1, nq, Q_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
                arg_sets = [(q, kd, vd, ks, kz, vs, vz, seqlens, kv_dtype, 1 / math.sqrt(HEAD_DIM))
                            for (kd, ks, kz), (vd, vs, vz) in caches]
                flops = 4 * Q_HEADS * nq * S * HEAD_DIM
                nbytes = kv_bytes(S, kv_dtype)
                for name, fn in kernels.items():
                    t = time_rotating(fn, arg_sets, iters)
                    rows.append(dict(backend=name, kv_dtype=kv_dtype, S=S, n_query=nq, time_us=t * 1e6,
                                     gb_s=nbytes / t / 1e9, frac_copy_bw=nbytes / t / bw,
                                     tflop_s=flops / t / 1e12, copy_bw_gb_s=bw / 1e9))
                if kv_dtype == "bf16":
                    t = time_rotating(_sdpa, _sdpa_args(caches[: min(n, 4)], nq), iters)
                    rows.append(dict(backend="sdpa", kv_dtype="bf16", S=S, n_query=nq, time_us=t * 1e6,
                                     gb_s=nbytes / t / 1e9, frac_copy_bw=nbytes / t / bw,
                                     tflop_s=flops / t / 1e12, copy_bw_gb_s=bw / 1e9))
            del caches
            torch.cuda.empty_cache()
    _add_ratios(rows)
    return dict(device=props.name, sm_count=props.multi_processor_count, torch=torch.__version__,
                shapes=dict(q_heads=Q_HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, batch=1), rows=rows)


def _add_ratios(rows):
    """vs_bf16: time / bf16 time (same backend, S, n_query); vs_nq1: time / n_query=1 time;
    sdpa_speedup: SDPA bf16 time / this time."""
    key = {(r["backend"], r["kv_dtype"], r["S"], r["n_query"]): r["time_us"] for r in rows}
    for r in rows:
        b16 = key.get((r["backend"], "bf16", r["S"], r["n_query"]))
        one = key.get((r["backend"], r["kv_dtype"], r["S"], 1))
        sdpa = key.get(("sdpa", "bf16", r["S"], r["n_query"]))
        r["vs_bf16"] = r["time_us"] / b16 if b16 else None
        r["vs_nq1"] = r["time_us"] / one if one else None
        r["sdpa_speedup"] = sdpa / r["time_us"] if sdpa else None


def print_table(result: dict) -> None:
    print(f"{result['device']} ({result['sm_count']} SMs), torch {result['torch']}")
    hdr = f"{'backend':7} {'kv':5} {'S':>7} {'nq':>3} {'us':>9} {'GB/s':>7} {'%copy':>6} {'TF/s':>6} " \
          f"{'xbf16':>6} {'xnq1':>5} {'vsSDPA':>6}"
    print(hdr)
    fmt = lambda x, f: format(x, f) if x is not None else "-"  # noqa: E731
    for r in result["rows"]:
        print(f"{r['backend']:7} {r['kv_dtype']:5} {r['S']:>7} {r['n_query']:>3} {r['time_us']:>9.1f} "
              f"{r['gb_s']:>7.0f} {100 * r['frac_copy_bw']:>5.0f}% {r['tflop_s']:>6.1f} "
              f"{fmt(r['vs_bf16'], '6.2f'):>6} {fmt(r['vs_nq1'], '5.2f'):>5} {fmt(r['sdpa_speedup'], '6.2f'):>6}")


# ---- pytest-benchmark entry points (a few shapes; the sweep above is the full report) ----

@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("kv_dtype", ["bf16", "int8", "int4"])
@pytest.mark.parametrize("n_query", [1, 11])
def test_verify_attention_gpu(benchmark, backend, kv_dtype, n_query):
    kernels = _kernels()
    if backend not in kernels:
        pytest.skip(f"{backend} kernels not built")
    S = 32768
    caches = make_caches(S, kv_dtype, _n_caches(S, kv_dtype))
    seqlens = torch.full((1,), S, dtype=torch.int32, device="cuda")
    q = torch.randn(1, n_query, Q_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    arg_sets = [(q, kd, vd, ks, kz, vs, vz, seqlens, kv_dtype, 1 / math.sqrt(HEAD_DIM))
                for (kd, ks, kz), (vd, vs, vz) in caches]
    state = {"i": 0}

    def step():
        a = arg_sets[state["i"] % len(arg_sets)]
        state["i"] += 1
        kernels[backend](*a)
        torch.cuda.synchronize()

    benchmark(step)
    bw = copy_bandwidth()
    gbs = kv_bytes(S, kv_dtype) / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(gb_s=gbs, frac_copy_bw=gbs * 1e9 / bw, device=torch.cuda.get_device_name())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="S 4K and 32K only, fewer iterations")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/verify_attention_gpu_<card>.json)")
    args = ap.parse_args()
    if not HAS_GPU:
        print("bench_verify_attention_gpu: no CUDA GPU here, nothing to measure")
        return
    seq = (4096, 32768) if args.quick else (4096, 16384, 32768, 65536, 131072)
    t0 = time.time()
    result = run_sweep(seq, (1, 4, 11), FORMATS, iters=20 if args.quick else 50)
    result["wall_s"] = time.time() - t0
    print_table(result)
    card = result["device"].replace(" ", "_").replace("/", "_")
    path = args.out or os.path.join(os.path.dirname(__file__), "results", f"verify_attention_gpu_{card}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
