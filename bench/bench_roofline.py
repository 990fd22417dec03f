"""This machine's roofline: streaming read bandwidth and dense matmul throughput.

    pytest bench/bench_roofline.py -s        (or: python bench/bench_roofline.py)

Also a self-check of InterleavedRoofline: a plain copy (reads n bytes, writes n bytes) must land at a
sane fraction of the measured read bandwidth, or every other benchmark's fraction is meaningless.
"""
from __future__ import annotations

import torch

import roofline as rl


def test_read_bandwidth(report):
    samples = [rl.read_bandwidth_gbs(512 << 20, reps=3) for _ in range(3)]
    print(f"\nstreaming read (512 MiB, torch.sum): samples {[round(s, 1) for s in samples]} GB/s")
    report(read_gbs_best=max(samples), read_gbs_min=min(samples), spread=max(samples) / min(samples))


def test_matmul_throughput(report):
    fp32 = rl.matmul_gflops(torch.float32, 1024, reps=3)
    bf16 = rl.matmul_gflops(torch.bfloat16, 1024, reps=3)
    print(f"\nmatmul 1024^3: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s (bf16/fp32 = {bf16 / fp32:.2f})")
    report(fp32_gflops=fp32, bf16_gflops=bf16, bf16_over_fp32=bf16 / fp32)


def test_copy_fraction_of_read_bandwidth(roofline, report):
    src = torch.randn(32 << 20)  # 128 MiB
    dst = torch.empty_like(src)
    r = roofline.measure(lambda: dst.copy_(src), bytes_moved=2 * src.numel() * 4, reps=5)
    print(f"\ncopy 128 MiB: {r.achieved_gbs:.1f} GB/s = {r.fraction:.2f} x streaming read ({r.read_gbs:.1f} GB/s)")
    # A copy also writes; it cannot beat a pure read by much, and it is not 10x slower either.
    assert 0.1 < r.fraction < 1.5, r
    report(**r.as_dict())


if __name__ == "__main__":
    print(rl.machine_info())
    print(f"read bandwidth: {rl.read_bandwidth_gbs():.1f} GB/s")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"matmul {dtype}: {rl.matmul_gflops(dtype):.0f} GFLOP/s")
