"""Quantized KV storage: `QuantizedKV`, `quantize_kv`, `dequantize_kv`, `kv_append`.

Formats and rounding rules: rapid_engine/ops/reference.py (section "attention and KV quantization").
Each function takes backend="auto"|"torch"|"cpu"|"cuda"|"triton"; "torch" runs the reference,
"cpu"/"cuda" the compiled torch.ops.rapid kernels, "triton" rapid_engine.triton.kv_quant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from rapid_engine import _ext
from rapid_engine.ops import _registry, reference
from rapid_engine.ops.reference import KV_DTYPES, PLAIN_DTYPES, check_kv_dtype, int4_group_size  # noqa: F401


@dataclass
class QuantizedKV:
    """One K or V tensor in a KV format. data [B, H, S, D] (int4: [B, H, S, D/2] uint8);
    scale fp32 [B, H, S] (int8/fp8) or fp16 [B, H, S, D/G] (int4), None for plain formats;
    zero fp16 [B, H, S, D/G] for int4 only."""

    data: torch.Tensor
    scale: Optional[torch.Tensor]
    zero: Optional[torch.Tensor]
    kv_dtype: str

    @property
    def head_dim(self) -> int:
        return self.data.shape[-1] * (2 if self.kv_dtype == "int4" else 1)

    @property
    def shape(self) -> torch.Size:
        """Logical [B, H, S, D]."""
        return torch.Size((*self.data.shape[:-1], self.head_dim))

    @property
    def device(self) -> torch.device:
        return self.data.device

    def narrow_tokens(self, start: int, length: int) -> "QuantizedKV":
        """View of tokens [start, start+length) (dim 2) of data, scale and zero."""
        n = lambda t: None if t is None else t.narrow(2, start, length)  # noqa: E731
        return QuantizedKV(n(self.data), n(self.scale), n(self.zero), self.kv_dtype)


def as_quantized(x, where: str = "kv") -> QuantizedKV:
    """Wrap a plain fp32/bf16/fp16 tensor as a QuantizedKV (no copy); pass QuantizedKV through."""
    if isinstance(x, QuantizedKV):
        return x
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: expected a Tensor or QuantizedKV, got {type(x).__name__}")
    for name, dt in PLAIN_DTYPES.items():
        if x.dtype == dt:
            return QuantizedKV(x, None, None, name)
    raise ValueError(f"{where}: a plain KV tensor must be float32, bfloat16 or float16, got {x.dtype}; "
                     "pass quantized formats as QuantizedKV")


def _none_if_empty(t: torch.Tensor) -> Optional[torch.Tensor]:
    return None if t.numel() == 0 else t


def _empty_like_absent(t: Optional[torch.Tensor], device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=device) if t is None else t


# ---- torch.ops.rapid registration (C++ schemas when built; reference-backed otherwise) ----

def _quantize_kv_fake(x, kv_dtype):
    dshape, sshape, zshape = reference.kv_storage_shape(tuple(x.shape), kv_dtype)
    ddt, sdt, zdt = reference.kv_storage_dtypes(kv_dtype)
    data = x.new_empty(dshape, dtype=ddt)
    scale = x.new_empty(sshape, dtype=sdt) if sshape is not None else x.new_empty((0,), dtype=torch.float32)
    zero = x.new_empty(zshape, dtype=zdt) if zshape is not None else x.new_empty((0,), dtype=torch.float32)
    return data, scale, zero


def _dequantize_kv_fake(data, scale, zero, kv_dtype, head_dim):
    return data.new_empty((*data.shape[:-1], head_dim), dtype=torch.float32)


def _kv_append_fake(data, scale, zero, x, start, kv_dtype):
    return None


_registry.define("quantize_kv", reference.quantize_kv)
_registry.define("dequantize_kv", reference.dequantize_kv)
_registry.define("kv_append", reference.kv_append)
_registry.register_fake("quantize_kv", _quantize_kv_fake)
_registry.register_fake("dequantize_kv", _dequantize_kv_fake)
_registry.register_fake("kv_append", _kv_append_fake)


def _impl(backend: str, device: torch.device, op: str):
    """The function running `op` (schema signature) for this backend."""
    be = _ext.resolve_backend(backend, device, op)
    if be == "torch":
        return getattr(reference, op)
    if be == "triton":
        from rapid_engine.triton import kv_quant as tkv
        return {"quantize_kv": tkv.quantize_kv_triton, "kv_append": tkv.kv_append_triton,
                "dequantize_kv": reference.dequantize_kv}[op]  # dequantize is off the hot path
    return getattr(torch.ops.rapid, op)


# ---- public API ----

def quantize_kv(x: torch.Tensor, kv_dtype: str, *, backend: str = "auto") -> QuantizedKV:
    """Quantize x [B, H, T, D] (float) into `kv_dtype` ('fp32','bf16','fp16','int8','int4','fp8')."""
    check_kv_dtype(kv_dtype, "quantize_kv")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"quantize_kv: x must be a floating-point [B, H, T, D] tensor, got "
                         f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if kv_dtype == "int4":
        int4_group_size(x.shape[-1])
    data, scale, zero = _impl(backend, x.device, "quantize_kv")(x, kv_dtype)
    return QuantizedKV(data, _none_if_empty(scale), _none_if_empty(zero), kv_dtype)


def dequantize_kv(qkv: QuantizedKV, *, backend: str = "auto") -> torch.Tensor:
    """float32 [B, H, T, D] from a QuantizedKV (or a plain tensor, which is just upcast)."""
    qkv = as_quantized(qkv, "dequantize_kv")
    args = (qkv.data, qkv.scale, qkv.zero, qkv.kv_dtype, qkv.head_dim)
    return _impl(backend, qkv.device, "dequantize_kv")(*args)


def kv_append(dst: QuantizedKV, x: torch.Tensor, start: int, *, backend: str = "auto") -> None:
    """Quantize x [B, H, T, D] and write it into tokens [start, start+T) of `dst` (in place, one fused op).
    Bit-identical to quantize_kv(x, dst.kv_dtype)."""
    if not isinstance(dst, QuantizedKV):
        raise TypeError(f"kv_append: dst must be a QuantizedKV, got {type(dst).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"kv_append: x must be a floating-point [B, H, T, D] tensor, got {tuple(x.shape)}")
    if tuple(x.shape[:2]) != tuple(dst.data.shape[:2]) or x.shape[3] != dst.head_dim:
        raise ValueError(f"kv_append: x {tuple(x.shape)} does not match the cache {tuple(dst.shape)} in B, H or D")
    if start < 0 or start + x.shape[2] > dst.data.shape[2]:
        raise ValueError(f"kv_append: slots [{start}, {start + x.shape[2]}) do not fit {dst.data.shape[2]} tokens")
    if x.device != dst.device:
        raise ValueError(f"kv_append: x is on {x.device} but the cache is on {dst.device}")
    scale = _empty_like_absent(dst.scale, dst.device)
    zero = _empty_like_absent(dst.zero, dst.device)
    _impl(backend, x.device, "kv_append")(dst.data, scale, zero, x, start, dst.kv_dtype)
