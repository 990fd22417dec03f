"""Batch-invariant ops.linear vs torch F.linear (MKL/oneDNN) on SmolLM2's decode shapes, M = 1, 4, 16 rows.

No weight matrix here is larger than this machine's 260 MiB last-level cache, so every shape rotates through
enough copies to touch 384 MiB (as a decode step over all layers does) and is timed from memory. Figures: time ratio to F.linear
in the same run and the fraction of the measured read bandwidth.

    pytest bench/bench_linear.py -s      # writes bench/results/bench_linear.json
"""
import pytest
import torch
import torch.nn.functional as F

from rapid_engine import _ext

pytestmark = pytest.mark.skipif(not _ext.HAS_EXT, reason="CPU kernels not built")

SHAPES = {"qkv": (960, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}  # (N, K)
WORKING_SET = 384 << 20  # bytes of weights per rotation: past the LLC


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_linear_vs_torch(shape, m, dtype, roofline, report):
    import roofline as rl

    n, k = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    copies = -(-WORKING_SET // (n * k * dtype.itemsize))
    weights = [torch.randn(n, k, generator=g).to(dtype) for _ in range(copies)]
    x = torch.randn(m, k, generator=g).to(dtype)
    state = {"i": 0}

    def rotating(fn):
        def call():
            fn(x, weights[state["i"] % len(weights)])
            state["i"] += 1
        return call

    ours = rotating(lambda a, w: torch.ops.rapid.linear(a, w, None))
    theirs = rotating(F.linear)
    bw = roofline.read_gbs()
    t = rl.time_interleaved({"ours": ours, "torch": theirs}, warmup=2, reps=20)
    bw = (bw + roofline.read_gbs()) / 2
    nbytes = n * k * weights[0].element_size()
    row = report(shape=shape, n=n, k=k, m=m, dtype=str(dtype).replace("torch.", ""), ours_us=t["ours"] * 1e6,
                 torch_us=t["torch"] * 1e6, speedup_vs_torch=t["torch"] / t["ours"],
                 ours_gbs=nbytes / t["ours"] / 1e9, read_gbs=bw, fraction_of_read_bw=nbytes / t["ours"] / 1e9 / bw)
    print(f"\n{shape:>8} M={m:<2} {row['dtype']}: ours {row['ours_us']:.0f} us, F.linear {row['torch_us']:.0f} us "
          f"-> {row['speedup_vs_torch']:.2f}x; {row['ours_gbs']:.1f} GB/s = {row['fraction_of_read_bw']:.0%} of read bw")
