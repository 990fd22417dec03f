"""Triton KV quantization: quantize-on-write into a KV cache (`kv_append_triton`) and
`quantize_kv_triton`, bit-identical to rapid_engine.ops.reference.quantize_kv.

Bit identity needs IEEE arithmetic where the reference has it: x / scale is `div_rn` (a plain `/`
may lower to an approximate divide), round-to-nearest-even of |y| < 2^22 is (y + 1.5*2^23) - 1.5*2^23
(exact in fp32, and portable to every Triton >= 3.0 and the interpreter), and fp8 e4m3 is encoded
with integer ops so sm_80 (no hardware e4m3) and the interpreter produce the same bytes. FMA
contraction is turned off for these kernels (enable_fp_fusion=False), as torch's eager ops do not fuse.
Grid: (token blocks, B * H); each program quantizes BLOCK_T whole token rows of one head.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rapid_engine.ops.reference import KV_DTYPES, int4_group_size, kv_storage_dtypes, kv_storage_shape

# kv_dtype -> constexpr format code shared with verify_attention.py
FORMAT_CODE = {"fp32": 0, "bf16": 1, "fp16": 2, "int8": 3, "int4": 4, "fp8": 5}
_RNE_MAGIC = 12582912.0  # 1.5 * 2^23: adding then subtracting it rounds |y| < 2^22 to nearest even


@triton.jit
def _rne(y):
    return (y + 12582912.0) - 12582912.0


@triton.jit
def _e4m3_bits(v):
    """fp32 (already clamped to [-448, 448]) -> e4m3fn byte, round-to-nearest-even."""
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80  # sign bit moved to bit 7 (also for -0.0)
    a = tl.abs(v)
    abits = a.to(tl.int32, bitcast=True)
    # normal range (a >= 2^-6): drop 20 mantissa bits with RNE, rebias exponent 127 -> 7
    rounded = abits + 0x7FFFF + ((abits >> 20) & 1)
    normal = (rounded >> 20) - (120 << 3)
    # subnormal range: a = m * 2^-9 with m in 0..8 (m == 8 is the smallest normal, code 0x08)
    sub = _rne(a * 512.0).to(tl.int32)
    code = tl.where(a >= 0.015625, normal, sub)
    return (code | sign).to(tl.uint8)


@triton.jit
def _bf16_bits(x):
    """fp32 -> bf16 bit pattern (int16), round-to-nearest-even (the interpreter's cast truncates)."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).to(tl.int16)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, data_ptr, scale_ptr, T, D, start,
    sxb, sxh, sxt, sxd, sdb, sdh, sdt, ssb, ssh, sst, H,
    FORMAT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Plain (cast), int8 and fp8 formats: one scale per token row."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask = (t[:, None] < T) & (d[None, :] < D)
    x = tl.load(x_ptr + b * sxb + h * sxh + t[:, None].to(tl.int64) * sxt + d[None, :] * sxd,
                mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_D]
    slot = (start + t).to(tl.int64)
    dptr = data_ptr + b * sdb + h * sdh + slot[:, None] * sdt + d[None, :]
    if FORMAT == 1:
        tl.store(dptr, _bf16_bits(x), mask=mask)  # data viewed as int16
    elif FORMAT < 3:
        tl.store(dptr, x.to(data_ptr.dtype.element_ty), mask=mask)
    else:
        qmax = 127.0 if FORMAT == 3 else 448.0
        scale = tl.math.div_rn(tl.max(tl.abs(x), axis=1), qmax)  # [BLOCK_T]
        safe = tl.where(scale > 0, scale, 1.0)
        y = tl.where(scale[:, None] > 0, tl.math.div_rn(x, safe[:, None]), 0.0)
        if FORMAT == 3:
            q = tl.minimum(tl.maximum(_rne(y), -127.0), 127.0).to(tl.int8)
        else:
            q = _e4m3_bits(tl.minimum(tl.maximum(y, -448.0), 448.0))
        tl.store(dptr, q, mask=mask)
        tl.store(scale_ptr + b * ssb + h * ssh + slot * sst, scale, mask=t < T)


@triton.jit
def _quantize_int4_kernel(
    x_ptr, data_ptr, scale_ptr, zero_ptr, T, NG, start,
    sxb, sxh, sxt, sxd, sdb, sdh, sdt, ssb, ssh, sst, szb, szh, szt, H,
    G: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """int4: per group of G along D, zero = min, scale = fp16((max - min) / 15); two codes per byte."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    grp = tl.arange(0, BLOCK_G)  # [BLOCK_G] group index (NG padded to a power of two)
    e = tl.arange(0, G // 2)  # [G/2] pair index inside a group
    t3 = t[:, None, None]
    g3 = grp[None, :, None]
    col_even = g3 * G + 2 * e[None, None, :]  # [1, BLOCK_G, G/2] column of the low nibble
    mask = (t3 < T) & (g3 < NG) & (e[None, None, :] >= 0)
    xrow = x_ptr + b * sxb + h * sxh + t3.to(tl.int64) * sxt
    x_even = tl.load(xrow + col_even * sxd, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_G, G/2]
    x_odd = tl.load(xrow + (col_even + 1) * sxd, mask=mask, other=0.0).to(tl.float32)
    mn = tl.minimum(tl.min(x_even, axis=2), tl.min(x_odd, axis=2))  # [BLOCK_T, BLOCK_G]
    mx = tl.maximum(tl.max(x_even, axis=2), tl.max(x_odd, axis=2))
    scale16 = tl.math.div_rn(mx - mn, 15.0).to(tl.float16)
    zero16 = mn.to(tl.float16)
    s = scale16.to(tl.float32)[:, :, None]
    z = zero16.to(tl.float32)[:, :, None]
    safe = tl.where(s > 0, s, 1.0)
    q_even = tl.where(s > 0, _rne(tl.math.div_rn(x_even - z, safe)), 0.0)
    q_odd = tl.where(s > 0, _rne(tl.math.div_rn(x_odd - z, safe)), 0.0)
    q_even = tl.minimum(tl.maximum(q_even, 0.0), 15.0).to(tl.uint8)
    q_odd = tl.minimum(tl.maximum(q_odd, 0.0), 15.0).to(tl.uint8)
    slot = (start + t).to(tl.int64)
    s3 = slot[:, None, None]
    byte_col = g3 * (G // 2) + e[None, None, :]
    tl.store(data_ptr + b * sdb + h * sdh + s3 * sdt + byte_col, q_even | (q_odd << 4), mask=mask)
    gmask = (t[:, None] < T) & (grp[None, :] < NG)
    s2 = slot[:, None]
    tl.store(scale_ptr + b * ssb + h * ssh + s2 * sst + grp[None, :], scale16, mask=gmask)
    tl.store(zero_ptr + b * szb + h * szh + s2 * szt + grp[None, :], zero16, mask=gmask)


def _check_part(name: str, t: torch.Tensor, shape: tuple, dtype, x: torch.Tensor) -> None:
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise ValueError(f"kv_append_triton: {name} must be {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"kv_append_triton: {name} is on {t.device} but x is on {x.device}")
    if t.stride(-1) != 1:
        raise ValueError(f"kv_append_triton: {name}'s last dimension must be contiguous (stride 1)")


def kv_append_triton(data: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, x: torch.Tensor, start: int,
                     kv_dtype: str) -> None:
    """Quantize x [B, H, T, D] into cache slots [start, start + T) of data/scale/zero, in place.
    Same arguments as torch.ops.rapid.kv_append (absent scale/zero: numel-0 tensors)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_append_triton: kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"kv_append_triton: x must be a floating [B, H, T, D] tensor, got "
                         f"{getattr(x, 'dtype', None)} {tuple(getattr(x, 'shape', ()))}")
    B, H, T, D = x.shape
    if data.dim() != 4:
        raise ValueError(f"kv_append_triton: data must be [B, H, S_max, D(/2)], got {tuple(data.shape)}")
    s_max = data.shape[2]
    if start < 0 or start + T > s_max:
        raise ValueError(f"kv_append_triton: slots [{start}, {start + T}) do not fit a cache of {s_max} tokens")
    dshape, sshape, zshape = kv_storage_shape((B, H, s_max, D), kv_dtype)
    ddt, sdt, zdt = kv_storage_dtypes(kv_dtype)
    _check_part("data", data, dshape, ddt, x)
    if sshape is not None:
        _check_part("scale", scale, sshape, sdt, x)
    if zshape is not None:
        _check_part("zero", zero, zshape, zdt, x)
    if T == 0 or B * H == 0:
        return
    fmt = FORMAT_CODE[kv_dtype]
    block_t = 16
    grid = (triton.cdiv(T, block_t), B * H)
    if kv_dtype == "int4":
        g = int4_group_size(D)
        ng = D // g
        _quantize_int4_kernel[grid](
            x, data, scale, zero, T, ng, start, *x.stride(), *data.stride()[:3], *scale.stride()[:3],
            *zero.stride()[:3], H, G=g, BLOCK_T=block_t, BLOCK_G=triton.next_power_of_2(ng), enable_fp_fusion=False)
        return
    # fp8 and bf16 are written as raw bits (portable rounding, see module docstring)
    dview = {"fp8": torch.uint8, "bf16": torch.int16}.get(kv_dtype)
    dview = data if dview is None else data.view(dview)
    sc = scale if sshape is not None else data  # unused by plain formats
    ss = scale.stride()[:3] if sshape is not None else (0, 0, 0)
    _quantize_rows_kernel[grid](
        x, dview, sc, T, D, start, *x.stride(), *data.stride()[:3], *ss, H,
        FORMAT=fmt, BLOCK_T=block_t, BLOCK_D=triton.next_power_of_2(D), enable_fp_fusion=False)


def quantize_kv_triton(x: torch.Tensor, kv_dtype: str):
    """x [B, H, T, D] -> (data, scale, zero) like torch.ops.rapid.quantize_kv (absent parts: numel 0)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"quantize_kv_triton: kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"quantize_kv_triton: x must be a floating [B, H, T, D] tensor, got "
                         f"{getattr(x, 'dtype', None)} {tuple(getattr(x, 'shape', ()))}")
    if kv_dtype == "int4":
        int4_group_size(x.shape[-1])
    dshape, sshape, zshape = kv_storage_shape(tuple(x.shape), kv_dtype)
    ddt, sdt, zdt = kv_storage_dtypes(kv_dtype)
    empty = lambda shape, dt: (x.new_empty(shape, dtype=dt) if shape is not None  # noqa: E731
                               else x.new_empty((0,), dtype=torch.float32))
    data, scale, zero = empty(dshape, ddt), empty(sshape, sdt), empty(zshape, zdt)
    kv_append_triton(data, scale, zero, x, 0, kv_dtype)
    return data, scale, zero
