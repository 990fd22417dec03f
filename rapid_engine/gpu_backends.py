"""Which verify-attention backend a CUDA card runs under backend="auto", from measured data.

MEASURED holds device times (us, CUDA-graph replay, batch 1) of the default CUDA kernel (staged) and of the
Triton kernel for the shapes the engine runs: Llama-3.1-8B heads (32 q / 8 kv, D 128) and SmolLM2 heads
(9 q / 3 kv, D 64), one query (decode) and 11 (a gamma = 10 verify). Sources:
  H100: bench/results/gpu_h100/verify_attention_run3_quarters.json (2026-11-26, torch 2.11.0+cu130, Triton 3.6);
  H200: README "GPU: NVIDIA H200" table, bench/results/gpu_h200/verify_attention_run3.log (same day and stack).
Rule: per card, the backend with the lower total time over its measured rows; a card with no rows keeps the
extension's default ("cuda"), as does any card when Triton is not installed.
"""
from __future__ import annotations

import functools

import torch

# (card, heads, kv_dtype, S, n_query): (cuda staged us, triton us)
MEASURED = {
    ("H100", "32q/8kv/D128", "bf16", 32768, 1): (60.9, 53.9),
    ("H100", "32q/8kv/D128", "bf16", 65536, 1): (106.0, 97.1),
    ("H100", "32q/8kv/D128", "bf16", 32768, 11): (67.4, 58.6),
    ("H100", "32q/8kv/D128", "bf16", 65536, 11): (118.5, 101.8),
    ("H100", "32q/8kv/D128", "int8", 32768, 1): (53.1, 39.1),
    ("H100", "32q/8kv/D128", "int8", 65536, 1): (99.5, 70.0),
    ("H100", "32q/8kv/D128", "int8", 32768, 11): (61.8, 52.4),
    ("H100", "32q/8kv/D128", "int8", 65536, 11): (114.8, 95.8),
    ("H100", "32q/8kv/D128", "int4", 32768, 1): (78.5, 71.9),
    ("H100", "32q/8kv/D128", "int4", 65536, 1): (147.6, 136.5),
    ("H100", "32q/8kv/D128", "int4", 32768, 11): (84.1, 65.5),
    ("H100", "32q/8kv/D128", "int4", 65536, 11): (156.1, 121.2),
    ("H100", "9q/3kv/D64", "bf16", 32768, 1): (26.5, 16.3),
    ("H100", "9q/3kv/D64", "bf16", 65536, 1): (40.3, 26.2),
    ("H100", "9q/3kv/D64", "bf16", 32768, 11): (28.8, 17.2),
    ("H100", "9q/3kv/D64", "int8", 32768, 1): (22.8, 17.7),
    ("H100", "9q/3kv/D64", "int4", 65536, 1): (49.3, 50.8),  # the one row where CUDA is ahead (by 3%)
    ("H200", "32q/8kv/D128", "bf16", 32768, 1): (77.2, 40.2),
    ("H200", "32q/8kv/D128", "bf16", 65536, 1): (145.7, 72.8),
    ("H200", "32q/8kv/D128", "bf16", 32768, 11): (89.8, 44.9),
    ("H200", "32q/8kv/D128", "int8", 32768, 1): (77.2 * 1.57, 40.2 * 0.96),  # README: each x its bf16 time
    ("H200", "32q/8kv/D128", "int4", 32768, 1): (77.2 * 1.14, 40.2 * 1.75),
    ("H200", "9q/3kv/D64", "bf16", 32768, 1): (34.3, 14.9),
}


def card_family(name: str) -> str | None:
    """"NVIDIA H100 80GB HBM3" -> "H100"; None for a card with no measurements."""
    for fam in sorted({k[0] for k in MEASURED}):
        if fam in name.upper():
            return fam
    return None


def _triton_available() -> bool:  # imported lazily: Triton is optional
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001  (a broken install is "not available", never an import error here)
        return False
    return True


def choose(card: str, kv_dtype: str | None = None, n_query: int | None = None) -> str:
    """"cuda" or "triton" for a card name, over the rows matching kv_dtype / n_query (None = all)."""
    fam = card_family(card)
    rows = [t for k, t in MEASURED.items() if k[0] == fam and kv_dtype in (None, k[2]) and n_query in (None, k[4])]
    if not rows:
        return "cuda"
    cuda_us, triton_us = sum(r[0] for r in rows), sum(r[1] for r in rows)
    return "triton" if triton_us < cuda_us else "cuda"


@functools.lru_cache(maxsize=None)
def verify_attention_backend(device) -> str:
    """What Model passes for backend="auto" on `device`: "triton" where it measured faster and is usable, else
    "auto" (the extension's default order: cuda kernels if built, then triton, then torch)."""
    from rapid_engine import _ext

    device = torch.device(device)
    if device.type != "cuda" or choose(torch.cuda.get_device_name(device)) != "triton":
        return "auto"
    return "triton" if _triton_available() and _ext.triton_usable(device) else "auto"
