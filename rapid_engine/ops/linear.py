"""Batch-invariant small-M linear: y = x @ weight.T + bias, where row m of y depends only on row m of x.

torch's CPU GEMM picks different blockings (and summation orders) for different row counts, so
F.linear(x[:n]) row 0 is not bit-equal to F.linear(x[:1]). Speculative verification runs n draft
tokens at once and must reproduce one-at-a-time decoding exactly, hence this op: the C++ kernel
(csrc/cpu/linear.cpp) sums every output in a fixed order whatever M is, and reads each weight row
once for all M rows, so it costs a GEMV's memory traffic. bf16 weights run on the CPU's bf16 units: AMX tiles
where present (M = 11 costs about what M = 1 does), else vdpbf16ps; fp32 / fp16 on fp32 FMAs. Each path is
invariant on its own; the path is fixed per machine (RAPID_CPU_ISA forces one). Without the extension (or on GPU),
`linear_fn` falls back to one F.linear per row, which is invariant but reads the weights M times.

    x [..., K] fp32/bf16/fp16; weight [N, K] same dtype; bias [N] or None -> [..., N] in x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rapid_engine import _ext
from rapid_engine.ops import _registry


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The specification, in float64, returned in x's dtype."""
    y = x.double() @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)


def _rowwise_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Invariant fallback: every row goes through the same M=1 GEMV that single-token decoding uses."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.cat([F.linear(rows[i:i + 1], weight, bias) for i in range(rows.shape[0])]) if rows.shape[0] \
        else F.linear(rows, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _fake(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_registry.define("linear", _rowwise_torch)
_registry.register_fake("linear", _fake)


def _check(x, weight, bias):
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"linear: x must be float32/bfloat16/float16, got {x.dtype}")
    if weight.dim() != 2 or weight.dtype != x.dtype or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"linear: weight must be [N, {x.shape[-1]}] of dtype {x.dtype}, "
                         f"got {list(weight.shape)} {weight.dtype}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype):
        raise ValueError(f"linear: bias must be [{weight.shape[0]}] of dtype {x.dtype}, got {list(bias.shape)} {bias.dtype}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"):
    """Batch-invariant x @ weight.T + bias (see module doc). backend: auto|torch|cpu."""
    _check(x, weight, bias)
    backend = _ext.resolve_backend(backend, x.device, "linear")
    if backend == "cpu":
        return torch.ops.rapid.linear(x, weight, bias)
    if backend == "torch":
        return _rowwise_torch(x, weight, bias)
    raise ValueError(f"linear: backend {backend!r} has no kernel for this op; use 'auto', 'torch' or 'cpu'")


def linear_fn(device: torch.device):
    """The linear to call in a hot loop on `device` (resolved once, no per-call checks).

    CPU: the batch-invariant kernel (or row-by-row torch without the extension), so speculative greedy
    decoding emits exactly the tokens of plain decoding. CUDA: cuBLAS on all rows at once. Row-by-row
    would read the weights once per verified token (an 11-token verify step would cost several decode
    steps); GPU greedy decoding is therefore exact only up to GEMM rounding.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return F.linear
    if _ext.resolve_backend("auto", device, "linear") == "cpu":
        return torch.ops.rapid.linear.default
    return _rowwise_torch
