"""spec_sample speed: the kernel against its read floor and against the torch reference, in one run.

    pytest bench/bench_spec_sample.py -s          (CPU rows; GPU rows run when a GPU is present)

The step reads (2 gamma + 1) x V floats per row (gamma+1 logit rows, gamma draft rows): `x_floor` is the
kernel's time over the time that read takes at the streaming read bandwidth measured between the timed rounds
(roofline.InterleavedRoofline). The timed calls rotate over copies of the inputs until they exceed the
last-level cache (every shape here fits in this CPU's 260 MiB L3), so the read really comes from memory.
`vs_torch` is the torch reference's time over the kernel's (float64 oracle).
Settings from the issue: top-p 0.9, eta 10, temperature 1, drafts sampled from a draft distribution that is
the target's softmax plus noise, so acceptance is realistic (neither all nor nothing).
"""
from __future__ import annotations

import math

import pytest
import torch

import roofline as rl
from rapid_engine import _ext
from rapid_engine.ops import reference as R

VOCABS = (32_000, 128_000, 152_064)
GAMMAS = (4, 10)
BATCHES = (1, 8)
WORKING_SET = 384 << 20  # bytes of inputs the timed calls cycle through: past the LLC
SETTINGS = dict(temperature=1.0, top_k=0, top_p=0.9, eta=10.0, tail_alpha=0.1, residual="exact")


def _inputs(B, G, V, device):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, G + 1, V, generator=g) * 3  # [B, G+1, V]
    q = torch.softmax(z[:, :G] + torch.randn(B, G, V, generator=g), -1)  # [B, G, V] a near-miss drafter
    d = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, G)
    u = torch.rand(B, G + 1, dtype=torch.float64, generator=g)
    return [t.to(device) for t in (z, d, q, u)]


def _args(z, d, q, u):
    s = SETTINGS
    return (z, d, q, u, s["temperature"], s["top_k"], s["top_p"], s["eta"], s["tail_alpha"], s["residual"])


def _kernel_fn(backend, args):
    if backend == "triton":
        from rapid_engine.triton.spec_sample import spec_sample_triton
        return lambda: spec_sample_triton(*args)
    return lambda: torch.ops.rapid.spec_sample(*args)


def _device_backends():
    out = []
    if _ext.HAS_EXT:
        out.append(("cpu", "cpu"))
    if torch.cuda.is_available():
        if _ext.HAS_CUDA_KERNELS:
            out.append(("cuda", "cuda"))
        if _ext.HAS_TRITON:
            out.append(("cuda", "triton"))
    return out or [pytest.param(("cpu", "cpu"), marks=pytest.mark.skip(reason="no kernel backend built"))]


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("G", GAMMAS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("device_backend", _device_backends(), ids=lambda db: f"{db[0]}-{db[1]}")
def test_spec_sample_speed(device_backend, B, G, V, roofline, report):
    device, backend = device_backend
    if device != roofline.device:
        pytest.skip(f"the session's roofline probes {roofline.device}")
    inputs = _inputs(B, G, V, device)
    args = _args(*inputs)
    floor_bytes = B * (2 * G + 1) * V * 4
    n_copies = math.ceil(WORKING_SET / floor_bytes)
    copies = [args] + [_args(*(t.clone() for t in inputs)) for _ in range(n_copies - 1)]
    kernel = rl.rotating([_kernel_fn(backend, a) for a in copies])  # the next copy of the inputs each call
    r = roofline.measure(kernel, floor_bytes, reps=10 if V * B * G < 4_000_000 else 5)
    ref_s = rl.time_call(lambda: R.spec_sample(*args), warmup=1, reps=3, device=device)
    n_acc = float(_kernel_fn(backend, args)()[1].float().mean())
    row = report(device=device, backend=backend, B=B, gamma=G, V=V, kernel_us=r.seconds * 1e6,
                 floor_us=floor_bytes / (r.read_gbs * 1e9) * 1e6, x_floor=1 / r.fraction, read_gbs=r.read_gbs,
                 torch_ref_us=ref_s * 1e6, vs_torch=ref_s / r.seconds, mean_accepted=n_acc, **SETTINGS)
    print(f"\n{device}/{backend} B={B} gamma={G} V={V}: {row['kernel_us']:.0f} us = {row['x_floor']:.2f}x floor "
          f"({row['read_gbs']:.1f} GB/s), {row['vs_torch']:.1f}x faster than torch ref, accepted {n_acc:.2f}")
