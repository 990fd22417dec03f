"""verify_attention: gamma+1 drafted tokens (or a prefill chunk) attend to a long, possibly quantized KV cache.

All n_query x (q_heads / kv_heads) query rows of one KV head share one read of that head's KV.
Backends: "torch" (reference.verify_attention), "cpu" / "cuda" (torch.ops.rapid.verify_attention),
"triton" (rapid_engine.triton.verify_attention). Argument errors are ValueError here, TORCH_CHECK in the C++ launchers.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Union

import torch

from rapid_engine import _ext
from rapid_engine.ops import _registry, reference
from rapid_engine.ops.kv_quant import QuantizedKV, as_quantized

_Q_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _verify_attention_fake(q, k, v, k_scale, k_zero, v_scale, v_zero, seqlens, kv_dtype, sm_scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


_registry.define("verify_attention", reference.verify_attention)
_registry.register_fake("verify_attention", _verify_attention_fake)


def _scale_spec_uncached(shape: tuple, kv_dtype: str):
    """((scale shape, dtype), (zero shape, dtype)) for logical shape [B, H, S, D]; shape None = absent."""
    _, sshape, zshape = reference.kv_storage_shape(shape, kv_dtype)
    _, sdt, zdt = reference.kv_storage_dtypes(kv_dtype)
    return (sshape, sdt), (zshape, zdt)


_scale_spec_cached = functools.lru_cache(maxsize=256)(_scale_spec_uncached)


def _scale_spec(shape: tuple, kv_dtype: str):
    """_scale_spec_uncached, cached in eager mode (a decode loop asks for the same few shapes every layer);
    while torch.compile traces, shapes may be symbolic (unhashable) and the cache is left alone."""
    if torch.compiler.is_compiling():
        return _scale_spec_uncached(shape, kv_dtype)
    return _scale_spec_cached(shape, kv_dtype)


def _check_scales(name: str, kv: QuantizedKV, shape: tuple) -> None:
    """Shapes/dtypes/device of one QuantizedKV's scale and zero for its format; shape: logical [B, H, S, D]."""
    for part, t, (want, dt) in zip(("scale", "zero"), (kv.scale, kv.zero), _scale_spec(shape, kv.kv_dtype)):
        if want is None:
            if t is not None and t.numel():
                raise ValueError(f"verify_attention: {name}.{part} must be None for kv_dtype {kv.kv_dtype!r}")
            continue
        if t is None or t.shape != want or t.dtype != dt:
            got = None if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise ValueError(f"verify_attention: {name}.{part} must be {dt} {want} for kv_dtype "
                             f"{kv.kv_dtype!r}, got {got}")
        if t.device != kv.data.device:
            raise ValueError(f"verify_attention: {name}.{part} is on {t.device}, data on {kv.data.device}")


def check_verify_args(q: torch.Tensor, k: QuantizedKV, v: QuantizedKV, seqlens: torch.Tensor) -> None:
    """Shape/dtype/device checks shared by every backend (no device sync: seqlens values are
    checked by the kernels' launchers and by the torch path). Runs once per layer per decode step, so
    each shape is read once (a few microseconds in all)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"verify_attention: q must be [B, n_query, q_heads, D], got {tuple(getattr(q, 'shape', ()))}")
    if q.dtype not in _Q_DTYPES:
        raise ValueError(f"verify_attention: q must be float32, bfloat16 or float16, got {q.dtype}")
    if q.stride(-1) != 1:
        raise ValueError("verify_attention: q's last dimension must be contiguous (stride 1)")
    B, nq, qh, D = q.shape
    if k.kv_dtype != v.kv_dtype:
        raise ValueError(f"verify_attention: k and v must share a KV format, got {k.kv_dtype!r} and {v.kv_dtype!r}")
    device = q.device
    shapes = []
    for name, kv in (("k", k), ("v", v)):
        data = kv.data
        if data.dim() != 4:
            raise ValueError(f"verify_attention: {name} must be [B, kv_heads, S_max, D], got {tuple(data.shape)}")
        if data.device != device:
            raise ValueError(f"verify_attention: {name} is on {data.device} but q is on {device}")
        if data.stride(-1) != 1:
            raise ValueError(f"verify_attention: {name}'s last dimension must be contiguous (stride 1)")
        b, h, s, d = data.shape
        shape = (b, h, s, 2 * d if kv.kv_dtype == "int4" else d)  # logical [B, H, S, D]
        if b != B or shape[3] != D:
            raise ValueError(f"verify_attention: {name} {shape} does not match q {tuple(q.shape)} "
                             "in batch or head_dim")
        _check_scales(name, kv, shape)
        shapes.append(shape)
    if shapes[0] != shapes[1]:
        raise ValueError(f"verify_attention: k {shapes[0]} and v {shapes[1]} differ")
    kvh = shapes[0][1]
    if kvh == 0 or qh % kvh != 0:
        raise ValueError(f"verify_attention: q_heads ({qh}) must be a multiple of kv_heads ({kvh})")
    if not isinstance(seqlens, torch.Tensor) or seqlens.dtype != torch.int32 or seqlens.shape != (B,):
        raise ValueError(f"verify_attention: seqlens must be int32 [{B}], got "
                         f"{getattr(seqlens, 'dtype', type(seqlens))} {tuple(getattr(seqlens, 'shape', ()))}")
    if seqlens.device != device:
        raise ValueError(f"verify_attention: seqlens is on {seqlens.device} but q is on {device}")


def _check_seqlens_values(seqlens: torch.Tensor, n_query: int, s_max: int) -> None:
    lo, hi = int(seqlens.min()), int(seqlens.max())
    if lo < n_query or hi > s_max:
        raise ValueError(f"verify_attention: seqlens must lie in [n_query={n_query}, S_max={s_max}], "
                         f"got values in [{lo}, {hi}]")


def verify_attention(q: torch.Tensor, k: Union[torch.Tensor, QuantizedKV], v: Union[torch.Tensor, QuantizedKV],
                     seqlens: torch.Tensor, *, sm_scale: Optional[float] = None, backend: str = "auto") -> torch.Tensor:
    """Attention of n_query new tokens over a KV cache, causal inside the block.

    q [B, n_query, q_heads, D] fp32/bf16/fp16; k, v [B, kv_heads, S_max, D] plain tensors or QuantizedKV
    (same format); seqlens int32 [B] = valid tokens per sequence including the n_query new ones.
    Query i of batch b sees keys 0 .. seqlens[b] - n_query + i; q head h uses kv head h // (q_heads // kv_heads).
    Returns [B, n_query, q_heads, D] in q's dtype.
    """
    k = as_quantized(k, "verify_attention: k")
    v = as_quantized(v, "verify_attention: v")
    check_verify_args(q, k, v, seqlens)
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    args = (q, k.data, v.data, k.scale, k.zero, v.scale, v.zero, seqlens, k.kv_dtype, scale)
    be = _ext.resolve_backend(backend, q.device, "verify_attention")
    if be == "torch":
        _check_seqlens_values(seqlens, q.shape[1], k.shape[2])
        return reference.verify_attention(*args)
    if be == "triton":
        from rapid_engine.triton.verify_attention import verify_attention_triton
        return verify_attention_triton(*args)
    return torch.ops.rapid.verify_attention(*args)
