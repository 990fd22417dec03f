"""Triton verification attention: split-KV flash-decoding over a (quantized) KV cache.

Grid of the main kernel: (split, row tile, batch * kv_head). The rows of a program are the
n_query x group query rows that share one KV head (row r = query r // group, q head
kv_head * group + r % group), so each KV tile is loaded and dequantized once for all of them.
Each program runs an online softmax over its split's keys and writes a partial (out, lse);
a second kernel merges the splits of every row with log-sum-exp in a fixed order.

Split boundaries sit at multiples of `split_size`, chosen from (S_max, B, kv_heads, SM count) only
(never from n_query or seqlens), so on the decode path (n_query <= 64) a query row's result does
not depend on how many other queries share the call. Prefill chunks (n_query > 64) use one split:
their row tiles already fill the GPU, FlashAttention style, and skip key tiles above the causal edge.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from rapid_engine.ops.reference import KV_DTYPES, kv_storage_dtypes, kv_storage_shape
from rapid_engine.triton.kv_quant import FORMAT_CODE

_LOG2E = 1.4426950408889634
_DECODE_MAX_QUERIES = 64


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _e4m3_to_f32(bits):
    """e4m3fn byte (as int32 0..255) -> fp32, exact (no NaN codes occur in a quantized cache)."""
    e = (bits >> 3) & 0xF
    m = bits & 0x7
    normal = ((e + 120) << 23) | (m << 20)  # rebias exponent 7 -> 127, mantissa 3 -> 23 bits
    mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal.to(tl.float32, bitcast=True))
    return tl.where((bits & 0x80) != 0, -mag, mag)


@triton.jit
def _load_kv_tile(data_ptr, scale_ptr, zero_ptr, n, n_ok, sd_s, ss_s, D,
                  FORMAT: tl.constexpr, G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  EVEN_D: tl.constexpr, CODES: tl.constexpr):
    """Tile [BLOCK_N, BLOCK_D] of keys n (pointers at this batch/head); zero where n_ok is false or the
    column is >= D. Plain formats come back in their storage dtype (the caller casts once), int4 as
    fp32 values; int8 / fp8 as fp32 values, or with CODES as unscaled codes (exact in bf16 / fp16:
    the caller applies the per-token scale to scores or probabilities, a [BLOCK_N] vector instead of
    the whole tile). EVEN_D (D == BLOCK_D): no column mask, so the compiler can use 16-byte loads."""
    rows = n[:, None].to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    if EVEN_D:
        mask = n_ok[:, None]  # constant along the row: vectorizable
    else:
        mask = n_ok[:, None] & (d[None, :] < D)
    if FORMAT < 3:
        x = tl.load(data_ptr + rows * sd_s + d[None, :], mask=mask, other=0.0)
    elif FORMAT == 4:
        # packed bytes [BLOCK_N, BLOCK_D/2] -> interleave(low, high) nibbles = value order 2j, 2j+1
        j = tl.arange(0, BLOCK_D // 2)
        jmask = n_ok[:, None] if EVEN_D else n_ok[:, None] & (2 * j[None, :] < D)
        byte = tl.load(data_ptr + rows * sd_s + j[None, :], mask=jmask, other=0).to(tl.int32)
        code = tl.interleave(byte & 0xF, byte >> 4).to(tl.float32)  # [BLOCK_N, BLOCK_D]
        g = tl.arange(0, BLOCK_D // G)
        gmask = n_ok[:, None] if EVEN_D else n_ok[:, None] & (g[None, :] * G < D)
        s = tl.load(scale_ptr + rows * ss_s + g[None, :], mask=gmask, other=0.0).to(tl.float32)  # [BLOCK_N, NG]
        z = tl.load(zero_ptr + rows * ss_s + g[None, :], mask=gmask, other=0.0).to(tl.float32)
        grouped = tl.reshape(code, (BLOCK_N, BLOCK_D // G, G)) * s[:, :, None] + z[:, :, None]
        x = tl.reshape(grouped, (BLOCK_N, BLOCK_D))
    else:
        raw = tl.load(data_ptr + rows * sd_s + d[None, :], mask=mask, other=0)
        if FORMAT == 3:
            val = raw.to(tl.float32)
        else:
            val = _e4m3_to_f32(raw.to(tl.int32) & 0xFF)
        if CODES:
            x = val
        else:
            s = tl.load(scale_ptr + n.to(tl.int64) * ss_s, mask=n_ok, other=0.0)
            x = val * s[:, None]
    return x


@triton.jit
def _verify_split_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, kz_ptr, vs_ptr, vz_ptr, seqlens_ptr, po_ptr, plse_ptr,
    qk_scale, S_MAX, NQ, GROUP, KVH, R, SPLIT, NSPLIT, D,
    sqb, sqn, sqh, skb, skh, sks, svb, svh, svs,
    sksb, sksh, skss, svsb, svsh, svss,
    FORMAT: tl.constexpr, G: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, EVEN_D: tl.constexpr, ROW_SCALED: tl.constexpr,
    FOLD_V: tl.constexpr,
):
    # ROW_SCALED (int8 / fp8, one scale per token): K's scale multiplies the scores after Q.K^T; with
    # FOLD_V (not for fp16 queries, where p * scale could underflow) V's scale multiplies p before P.V.
    pid_split = tl.program_id(0)
    pid_rt = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = pid_bh // KVH
    h = pid_bh % KVH
    kv_len = tl.minimum(tl.load(seqlens_ptr + b), S_MAX)  # launcher checks; clamp anyway: never read past S_max

    r = pid_rt * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] packed (query, group member) rows
    qi = r // GROUP
    head = h * GROUP + r % GROUP
    row_ok = r < R
    limit = tl.where(row_ok, kv_len - NQ + qi, -1)  # last key index each row sees
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D

    q = tl.load(q_ptr + b.to(tl.int64) * sqb + qi[:, None] * sqn + head[:, None] * sqh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_R, BLOCK_D]
    if DOT_FP32:
        q = q.to(tl.float32)

    lo = pid_split * SPLIT
    split_end = tl.minimum(lo + SPLIT, kv_len)
    r_last = tl.minimum(pid_rt * BLOCK_R + BLOCK_R, R) - 1
    hi = tl.minimum(split_end, kv_len - NQ + r_last // GROUP + 1)  # causal skip of whole key tiles

    k_base = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    ks_base = ks_ptr + b.to(tl.int64) * sksb + h.to(tl.int64) * sksh
    kz_base = kz_ptr + b.to(tl.int64) * sksb + h.to(tl.int64) * sksh
    vs_base = vs_ptr + b.to(tl.int64) * svsb + h.to(tl.int64) * svsh
    vz_base = vz_ptr + b.to(tl.int64) * svsb + h.to(tl.int64) * svsh

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        n_ok = n < hi
        k = _load_kv_tile(k_base, ks_base, kz_base, n, n_ok, sks, skss, D, FORMAT, G, BLOCK_N, BLOCK_D, EVEN_D,
                          ROW_SCALED)
        if DOT_FP32:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k.to(q.dtype)))
        if ROW_SCALED:
            k_sc = tl.load(ks_base + n.to(tl.int64) * skss, mask=n_ok, other=0.0)  # [BLOCK_N]
            s = s * (k_sc * qk_scale)[None, :]  # [BLOCK_R, BLOCK_N], log2 domain
        else:
            s = s * qk_scale
        visible = (n[None, :] <= limit[:, None]) & (n[None, :] < split_end)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load_kv_tile(v_base, vs_base, vz_base, n, n_ok, svs, svss, D, FORMAT, G, BLOCK_N, BLOCK_D, EVEN_D,
                          FOLD_V)
        pv = p
        if FOLD_V:
            pv = p * tl.load(vs_base + n.to(tl.int64) * svss, mask=n_ok, other=0.0)[None, :]
        if DOT_FP32:
            acc = acc * alpha[:, None] + tl.dot(pv, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(pv.to(q.dtype), v.to(q.dtype))
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    row_base = (pid_bh.to(tl.int64) * R + r) * NSPLIT + pid_split  # partial layout [B, KVH, R, NSPLIT, (D)]
    tl.store(po_ptr + row_base[:, None] * D + d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(plse_ptr + row_base, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    po_ptr, plse_ptr, seqlens_ptr, out_ptr, S_MAX, NQ, QH, GROUP, R, SPLIT, NSPLIT, D,
    sob, son, soh, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per output row (b, query, q head): log-sum-exp merge of its non-empty splits."""
    pid = tl.program_id(0)
    head = pid % QH
    qi = (pid // QH) % NQ
    b = pid // (QH * NQ)
    kv_len = tl.minimum(tl.load(seqlens_ptr + b), S_MAX)
    n_used = (kv_len - NQ + qi) // SPLIT + 1  # splits holding at least one visible key
    h = head // GROUP
    r = qi * GROUP + head % GROUP
    row_base = ((b * (QH // GROUP) + h).to(tl.int64) * R + r) * NSPLIT
    s = tl.arange(0, BLOCK_S)
    s_ok = s < n_used
    lse = tl.load(plse_ptr + row_base + s, mask=s_ok, other=float("-inf"))  # [BLOCK_S]
    m = tl.max(lse, axis=0)
    w = tl.where(s_ok, tl.exp2(lse - m), 0.0)
    d = tl.arange(0, BLOCK_D)
    o = tl.load(po_ptr + (row_base + s[:, None]) * D + d[None, :],
                mask=s_ok[:, None] & (d[None, :] < D), other=0.0)  # [BLOCK_S, BLOCK_D]
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + b.to(tl.int64) * sob + qi * son + head * soh + d,
             out.to(out_ptr.dtype.element_ty), mask=d < D)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_split_size(s_max: int, batch: int, kv_heads: int, n_query: int, device: torch.device) -> int:
    """Keys per split: a power-of-two multiple of 256 giving about 2 programs per SM (H200, S 32K:
    fewer, longer programs beat 4 per SM). Depends on (S_max, B, kv_heads, device) only, so decode
    results do not change with n_query."""
    if n_query > _DECODE_MAX_QUERIES:
        return max(256, triton.next_power_of_2(s_max))
    n_sm = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    split = 256
    while split < s_max and batch * kv_heads * triton.cdiv(s_max, split) > 2 * n_sm:
        split *= 2
    return split


def decode_config(kv_dtype: str, head_dim: int) -> tuple:
    """(BLOCK_N, num_warps, num_stages) of the split kernel on a GPU. Independent of n_query and
    seqlens, so a row's result does not depend on the other rows of the call."""
    # The best (or within noise of the best) of 7 configs in an H200 sweep at S 32K, one query.
    if kv_dtype == "int4":
        return 64, 4, 2
    return 64, 4, 3


def _err(msg: str):
    raise ValueError(f"verify_attention_triton: {msg}")


def _check_args(q, k, v, k_scale, k_zero, v_scale, v_zero, seqlens, kv_dtype):
    if kv_dtype not in KV_DTYPES:
        _err(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")
    if q.dim() != 4 or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        _err(f"q must be a float32/bfloat16/float16 [B, n_query, q_heads, D] tensor, got {q.dtype} {tuple(q.shape)}")
    if q.stride(-1) != 1:
        _err("q's last dimension must be contiguous (stride 1)")
    B, nq, qh, D = q.shape
    if k.dim() != 4 or tuple(k.shape) != tuple(v.shape):
        _err(f"k and v must be [B, kv_heads, S_max, D(/2)] of one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    kvh, s_max = k.shape[1], k.shape[2]
    if kvh == 0 or qh % kvh != 0:
        _err(f"q_heads ({qh}) must be a multiple of kv_heads ({kvh})")
    dshape, sshape, zshape = kv_storage_shape((B, kvh, s_max, D), kv_dtype)
    ddt, sdt, zdt = kv_storage_dtypes(kv_dtype)
    parts = [("k", k, dshape, ddt), ("v", v, dshape, ddt)]
    for name, t, shape, dt in (("k_scale", k_scale, sshape, sdt), ("v_scale", v_scale, sshape, sdt),
                               ("k_zero", k_zero, zshape, zdt), ("v_zero", v_zero, zshape, zdt)):
        if shape is None:
            if t is not None and t.numel():
                _err(f"{name} must be absent for kv_dtype {kv_dtype!r}")
        else:
            parts.append((name, t, shape, dt))
    for name, t, shape, dt in parts:
        if t is None or tuple(t.shape) != shape or t.dtype != dt:
            _err(f"{name} must be {dt} {shape} for kv_dtype {kv_dtype!r} and q {tuple(q.shape)}, got "
                 f"{None if t is None else (t.dtype, tuple(t.shape))}")
        if t.device != q.device:
            _err(f"{name} is on {t.device} but q is on {q.device}")
        if t.stride(-1) != 1:
            _err(f"{name}'s last dimension must be contiguous (stride 1)")
    for zname, z, sname, sc in (("k_zero", k_zero, "k_scale", k_scale), ("v_zero", v_zero, "v_scale", v_scale)):
        if zshape is not None and z.stride() != sc.stride():
            _err(f"{zname} must have the same strides as {sname}, got {z.stride()} and {sc.stride()}")
    if seqlens.dtype != torch.int32 or tuple(seqlens.shape) != (B,) or seqlens.device != q.device:
        _err(f"seqlens must be int32 [{B}] on {q.device}, got {seqlens.dtype} {tuple(seqlens.shape)} on {seqlens.device}")
    if not seqlens.is_contiguous():
        _err(f"seqlens must be contiguous, got strides {seqlens.stride()}")
    # Values: one device-to-host copy; skipped while a CUDA graph is captured (the kernel clamps
    # seqlens to [0, S_max], so a bad value never reads out of bounds).
    if B and not (seqlens.is_cuda and torch.cuda.is_current_stream_capturing()):
        vals = seqlens.tolist()
        lo, hi = min(vals), max(vals)
        if lo < nq or hi > s_max:
            _err(f"seqlens must lie in [n_query={nq}, S_max={s_max}], got [{lo}, {hi}]")


def verify_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_scale: Optional[torch.Tensor],
                            k_zero: Optional[torch.Tensor], v_scale: Optional[torch.Tensor],
                            v_zero: Optional[torch.Tensor], seqlens: torch.Tensor, kv_dtype: str,
                            sm_scale: float, *, split_size: Optional[int] = None,
                            config: Optional[tuple] = None) -> torch.Tensor:
    """Same arguments as torch.ops.rapid.verify_attention; returns [B, n_query, q_heads, D] in q's dtype.
    `split_size` (a multiple of 64) overrides the automatic choice (tests use it to force many splits);
    `config` = (BLOCK_N, num_warps, num_stages) overrides decode_config (benchmark sweeps)."""
    _check_args(q, k, v, k_scale, k_zero, v_scale, v_zero, seqlens, kv_dtype)
    B, nq, qh, D = q.shape
    kvh, s_max = k.shape[1], k.shape[2]
    group = qh // kvh
    R = nq * group
    out = torch.empty((B, nq, qh, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    interp = _interpreting() or q.device.type != "cuda"
    split = split_size or choose_split_size(s_max, B, kvh, nq, q.device)
    if split % 64 != 0:
        _err(f"split_size must be a multiple of 64, got {split}")
    nsplit = triton.cdiv(s_max, split)
    block_r = min(64, max(16, triton.next_power_of_2(R)))
    block_n, num_warps, num_stages = config or ((16, 4, 1) if interp else decode_config(kv_dtype, D))
    block_d = max(16, triton.next_power_of_2(D))
    fmt = FORMAT_CODE[kv_dtype]
    # fp8 is read as raw bytes and decoded in registers (same code on sm_80, sm_90 and the interpreter)
    kd, vd = (k.view(torch.uint8), v.view(torch.uint8)) if kv_dtype == "fp8" else (k, v)
    ks = k_scale if k_scale is not None and k_scale.numel() else kd
    vs = v_scale if v_scale is not None and v_scale.numel() else vd
    kz = k_zero if k_zero is not None and k_zero.numel() else ks
    vz = v_zero if v_zero is not None and v_zero.numel() else vs
    sstride = lambda t: tuple(t.stride()[:3]) if t.dim() >= 3 else (0, 0, 0)  # noqa: E731
    g = 32 if D % 32 == 0 else 16
    po = torch.empty((B, kvh, R, nsplit, D), dtype=torch.float32, device=q.device)
    plse = torch.empty((B, kvh, R, nsplit), dtype=torch.float32, device=q.device)
    grid = (nsplit, triton.cdiv(R, block_r), B * kvh)
    _verify_split_kernel[grid](
        q, kd, vd, ks, kz, vs, vz, seqlens, po, plse,
        float(sm_scale) * _LOG2E, s_max, nq, group, kvh, R, split, nsplit, D,
        q.stride(0), q.stride(1), q.stride(2), *k.stride()[:3], *v.stride()[:3], *sstride(ks), *sstride(vs),
        FORMAT=fmt, G=g, BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_D=block_d,
        DOT_FP32=interp or q.dtype == torch.float32, EVEN_D=block_d == D,
        ROW_SCALED=kv_dtype in ("int8", "fp8"), FOLD_V=kv_dtype in ("int8", "fp8") and q.dtype != torch.float16,
        **({} if interp else {"num_warps": num_warps, "num_stages": num_stages}))
    _merge_splits_kernel[(B * nq * qh,)](
        po, plse, seqlens, out, s_max, nq, qh, group, R, split, nsplit, D, *out.stride()[:3],
        BLOCK_S=max(2, triton.next_power_of_2(nsplit)), BLOCK_D=block_d)
    return out
