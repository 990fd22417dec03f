"""Pure-torch specification of every op: the oracle the kernels are tested against.

Each function here has exactly the signature of its torch.ops.rapid schema (csrc/torch_bindings.cpp),
so it also backs the op on installs without the compiled extension.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

# =====================================================================================
# attention and KV quantization
# =====================================================================================
# KV layout [B, H, S, D] (each head's tokens contiguous). Formats (scales in separate tensors):
#   fp32 / bf16 / fp16  data of that dtype; no scale, no zero
#   int8  data int8 [B,H,S,D], scale fp32 [B,H,S] = absmax/127, q = rne(x/scale) in [-127, 127]
#   fp8   data float8_e4m3fn [B,H,S,D], scale fp32 [B,H,S] = absmax/448, data = e4m3_rne(x/scale)
#   int4  data uint8 [B,H,S,D/2] (element 2j low nibble, 2j+1 high), groups of G=32 along D
#         (16 when D % 32 != 0); scale, zero fp16 [B,H,S,D/G]: zero = min, scale = (max-min)/15,
#         q = clamp(rne((x - zero) / scale), 0, 15); x ~ q*scale + zero in fp32.
# An all-zero row (or int4 group) gets scale 0 and data 0.

KV_DTYPES = ("fp32", "bf16", "fp16", "int8", "int4", "fp8")
PLAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP8_MAX = 448.0
INT8_MAX = 127.0


def check_kv_dtype(kv_dtype: str, where: str) -> None:
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"{where}: kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")


def int4_group_size(head_dim: int) -> int:
    """Group along D for int4: 32, or 16 when D is not a multiple of 32 (D must be a multiple of 16)."""
    if head_dim % 16 != 0:
        raise ValueError(f"int4 KV needs head_dim to be a multiple of 16, got {head_dim}")
    return 32 if head_dim % 32 == 0 else 16


def kv_storage_shape(shape, kv_dtype: str) -> Tuple[tuple, Optional[tuple], Optional[tuple]]:
    """Shapes of (data, scale, zero) storing a logical [B, H, S, D] tensor; None = absent."""
    *lead, d = shape
    lead = tuple(lead)
    if kv_dtype in PLAIN_DTYPES:
        return lead + (d,), None, None
    if kv_dtype in ("int8", "fp8"):
        return lead + (d,), lead, None
    g = int4_group_size(d)
    return lead + (d // 2,), lead + (d // g,), lead + (d // g,)


def kv_storage_dtypes(kv_dtype: str):
    """torch dtypes of (data, scale, zero)."""
    if kv_dtype in PLAIN_DTYPES:
        return PLAIN_DTYPES[kv_dtype], None, None
    if kv_dtype == "int8":
        return torch.int8, torch.float32, None
    if kv_dtype == "fp8":
        return torch.float8_e4m3fn, torch.float32, None
    return torch.uint8, torch.float16, torch.float16


def _empty(device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=device)


def quantize_kv(x: torch.Tensor, kv_dtype: str):
    """x [B, H, T, D] (any float dtype) -> (data, scale, zero); absent scale/zero are empty tensors."""
    check_kv_dtype(kv_dtype, "quantize_kv")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"quantize_kv: x must be a floating [B, H, T, D] tensor, got {x.dtype} {tuple(x.shape)}")
    xf = x.float()
    if kv_dtype in PLAIN_DTYPES:
        return x.to(PLAIN_DTYPES[kv_dtype], copy=True), _empty(x.device), _empty(x.device)
    if kv_dtype in ("int8", "fp8"):
        qmax = INT8_MAX if kv_dtype == "int8" else FP8_MAX
        amax = xf.abs().amax(dim=-1)  # [B, H, T]
        # Tensor / tensor: torch's CUDA `t / python_scalar` multiplies by the reciprocal, which is not
        # the correctly rounded quotient the kernels compute (and CPU torch computes).
        scale = amax / torch.full_like(amax, qmax)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))[..., None]
        y = torch.where(scale[..., None] > 0, xf / safe, torch.zeros_like(xf))
        if kv_dtype == "int8":
            data = torch.round(y).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        else:
            data = y.clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return data, scale, _empty(x.device)
    # int4, asymmetric per group
    B, H, T, D = x.shape
    g = int4_group_size(D)
    xg = xf.reshape(B, H, T, D // g, g)
    mn = xg.amin(dim=-1)
    mx = xg.amax(dim=-1)
    scale16 = ((mx - mn) / torch.full_like(mx, 15.0)).to(torch.float16)  # [B, H, T, D/G]; tensor / tensor as above
    zero16 = mn.to(torch.float16)
    s = scale16.float()[..., None]
    z = zero16.float()[..., None]
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.where(s > 0, torch.round((xg - z) / safe), torch.zeros_like(xg)).clamp_(0, 15)
    q = q.to(torch.uint8).reshape(B, H, T, D // 2, 2)
    data = q[..., 0] | (q[..., 1] << 4)
    return data.contiguous(), scale16, zero16


def dequantize_kv(data: torch.Tensor, scale: Optional[torch.Tensor], zero: Optional[torch.Tensor],
                  kv_dtype: str, head_dim: int) -> torch.Tensor:
    """Inverse of quantize_kv: float32 [B, H, T, D]."""
    check_kv_dtype(kv_dtype, "dequantize_kv")
    if kv_dtype in PLAIN_DTYPES:
        return data.float()
    if kv_dtype in ("int8", "fp8"):
        return data.float() * scale[..., None]
    lo = (data & 0xF).float()
    hi = (data >> 4).float()
    q = torch.stack((lo, hi), dim=-1).reshape(*data.shape[:-1], head_dim)  # [B, H, T, D]
    g = int4_group_size(head_dim)
    qg = q.reshape(*data.shape[:-1], head_dim // g, g)
    out = qg * scale.float()[..., None] + zero.float()[..., None]
    return out.reshape(q.shape)


def kv_append(data: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, x: torch.Tensor, start: int,
              kv_dtype: str) -> None:
    """Quantize x [B, H, T, D] into cache slots [start, start+T) of data/scale/zero (in place)."""
    t = x.shape[2]
    if start < 0 or start + t > data.shape[2]:
        raise ValueError(f"kv_append: slots [{start}, {start + t}) do not fit a cache of {data.shape[2]} tokens")
    qd, qs, qz = quantize_kv(x, kv_dtype)
    data[:, :, start:start + t].copy_(qd)
    if qs.numel():
        scale[:, :, start:start + t].copy_(qs)
    if qz.numel():
        zero[:, :, start:start + t].copy_(qz)


def _opt(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None or t.numel() == 0 else t


def causal_limits(seqlens: torch.Tensor, n_query: int) -> torch.Tensor:
    """[B, n_query] index of the last key each query sees: seqlens[b] - n_query + i."""
    i = torch.arange(n_query, device=seqlens.device)
    return seqlens.long()[:, None] - n_query + i[None, :]


def verify_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_scale: Optional[torch.Tensor],
                     k_zero: Optional[torch.Tensor], v_scale: Optional[torch.Tensor],
                     v_zero: Optional[torch.Tensor], seqlens: torch.Tensor, kv_dtype: str, sm_scale: float,
                     compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Dequantize, then plain attention with an explicit bottom-right causal mask.

    q [B, n_query, q_heads, D]; k/v data [B, kv_heads, S_max, D(/2 for int4)]; seqlens int32 [B].
    Query i of batch b sees keys 0 .. seqlens[b] - n_query + i. Math runs in compute_dtype
    (default: q's dtype, i.e. "the torch path at q's precision"; tests pass float64 for the oracle).
    Returns [B, n_query, q_heads, D] in q's dtype.
    """
    B, nq, qh, D = q.shape
    kvh = k.shape[1]
    cdt = compute_dtype or q.dtype
    kf = dequantize_kv(k, _opt(k_scale), _opt(k_zero), kv_dtype, D).to(cdt)  # [B, kvh, S, D]
    vf = dequantize_kv(v, _opt(v_scale), _opt(v_zero), kv_dtype, D).to(cdt)
    group = qh // kvh
    kf = kf.repeat_interleave(group, dim=1)  # [B, qh, S, D]
    vf = vf.repeat_interleave(group, dim=1)
    qf = q.to(cdt).transpose(1, 2)  # [B, qh, nq, D]
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * sm_scale  # [B, qh, nq, S]
    pos = torch.arange(k.shape[2], device=q.device)
    visible = pos[None, None, :] <= causal_limits(seqlens, nq)[:, :, None]  # [B, nq, S]
    scores = scores.masked_fill(~visible[:, None], -math.inf)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, vf)  # [B, qh, nq, D]
    return out.transpose(1, 2).to(q.dtype).contiguous()


# =====================================================================================
# speculative sampling
# =====================================================================================
# spec_sample: one fused acceptance/resampling step (RAPID, arXiv 2502.20330, Eq. 6-10 + Algorithm 1).
# Inputs: z = target_logits [B, G+1, V]; drafts x [B, G] int64; q = draft_probs [B, G, V] (None = one-hot
# at x); uniforms float64 [B, G+1] in [0, 1):
#   uniforms[:, i], i < G  the accept test of draft i:  accept iff u_i * q_i(x_i) < phat_i(x_i)
#                          (= "with probability min(1, phat/q)"; q_i(x_i) = 0 rejects)
#   uniforms[:, G]         the one final draw (recovered or bonus token) by inverse CDF in token-id order:
#                          the smallest token t with sum_{y <= t} w(y) > u_G * sum_y w(y)
# Ranking for the filters: by logit value, ties by the lower token id (the same on every backend).
# Everything below runs in float64: this is the oracle, not a fast path.


def spec_filter_mask(z: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Tokens kept by top-k then top-p. z [..., V] raw logits -> bool [..., V].

    top-k keeps the k best-ranked tokens (0 = off). top-p keeps token x iff the top-k-renormalized mass of
    the tokens ranked before x is < top_p: the smallest best-ranked set whose mass reaches top_p (1 = off)."""
    V = z.shape[-1]
    zs, order = torch.sort(z.double(), dim=-1, descending=True, stable=True)  # stable: ties by token id
    rank_keep = torch.ones_like(zs, dtype=torch.bool)
    if 0 < top_k < V:
        rank_keep[..., top_k:] = False
    if top_p < 1.0:
        ls = (zs / temperature).masked_fill(~rank_keep, -math.inf)
        ps = torch.softmax(ls, dim=-1)
        mass_before = torch.cumsum(ps, dim=-1) - ps  # exclusive prefix mass, [..., V] in rank order
        rank_keep &= mass_before < top_p
    keep = torch.zeros_like(rank_keep)
    return keep.scatter(-1, order, rank_keep)


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """w [N, V] non-negative weights with positive rows, u [N] in [0, 1) -> token ids [N] int64."""
    cdf = torch.cumsum(w, dim=-1)
    t = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]  # first t with cdf[t] > u*W
    last_pos = (w > 0).long().cumsum(-1).argmax(-1)  # last positive-weight token (rounding guard)
    return torch.minimum(t, last_pos)


def spec_distributions(target_logits: torch.Tensor, draft_tokens: torch.Tensor,
                       draft_probs: Optional[torch.Tensor], temperature: float, top_k: int, top_p: float,
                       eta: float, tail_alpha: float, residual: str):
    """The distributions spec_sample draws from, in float64 (temperature > 0), all [B, G(+1), V]:
    p (filtered target, G+1 positions), q (draft), phat (RAPID's shifted target, G), resid (normalized
    residual at each drafted position, G; zero-mass residuals replaced by phat)."""
    B, G1, V = target_logits.shape
    G = G1 - 1
    z = target_logits.double()
    if draft_probs is None:
        q = torch.nn.functional.one_hot(draft_tokens, V).double()
    else:
        q = draft_probs.double()
    keep = spec_filter_mask(z, temperature, top_k, top_p)
    logit = (z / temperature).masked_fill(~keep, -math.inf)  # [B, G+1, V]
    p = torch.softmax(logit, dim=-1)
    lg, kg = logit[:, :G], keep[:, :G]
    s = torch.where(kg, lg + eta * (q - p[:, :G]), lg)  # shift on the filtered support only
    if tail_alpha > 0:
        r = torch.softmax(s, dim=-1)
        tail = kg & (r < tail_alpha * r.amax(-1, keepdim=True))
        s = torch.where(tail, lg, s)  # tail tokens take back their unshifted logit
    phat = torch.softmax(s, dim=-1)
    if residual == "exact":
        w = (phat - q).clamp_min(0)
    else:
        w = (p[:, :G] - torch.minimum(phat, q)).clamp_min(0)  # = max(p - phat, p - q, 0)
    mass = w.sum(-1, keepdim=True)
    resid = torch.where(mass > 0, w / mass.clamp_min(1e-300), phat)
    return p, q, phat, resid


def _first_rejection(accept: torch.Tensor) -> torch.Tensor:
    """accept bool [B, G] -> number of leading accepted drafts [B] int64."""
    return accept.long().cumprod(dim=-1).sum(-1)


def _emit(draft_tokens: torch.Tensor, n: torch.Tensor, last: torch.Tensor):
    B, G = draft_tokens.shape
    pos = torch.arange(G + 1, device=draft_tokens.device)[None, :]
    tokens = torch.full((B, G + 1), -1, dtype=torch.long, device=draft_tokens.device)
    tokens[:, :G] = torch.where(pos[:, :G] < n[:, None], draft_tokens, -1)
    tokens.scatter_(1, n[:, None], last[:, None])
    return tokens, n.to(torch.int32)


def spec_sample(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: Optional[torch.Tensor],
                uniforms: torch.Tensor, temperature: float, top_k: int, top_p: float, eta: float,
                tail_alpha: float, residual: str):
    """Reference of torch.ops.rapid.spec_sample -> (tokens int64 [B, G+1], num_accepted int32 [B]).
    Semantics: rapid_engine/ops/sampling.py (spec_sample docstring); uniforms: see the section header."""
    B, G1, V = target_logits.shape
    G = G1 - 1
    draft_tokens = draft_tokens.long()
    rows = torch.arange(B, device=target_logits.device)
    if temperature == 0:  # greedy: argmax(z + eta (q - softmax z)) at drafted positions, argmax z at the bonus
        z = target_logits.double()
        q = torch.nn.functional.one_hot(draft_tokens, V).double() if draft_probs is None else draft_probs.double()
        best = torch.cat([(z[:, :G] + eta * (q - torch.softmax(z[:, :G], -1))).argmax(-1),
                          z[:, G].argmax(-1, keepdim=True)], dim=1)  # [B, G+1]
        n = _first_rejection(draft_tokens == best[:, :G])
        return _emit(draft_tokens, n, best[rows, n])
    p, q, phat, resid = spec_distributions(target_logits, draft_tokens, draft_probs, temperature, top_k, top_p,
                                           eta, tail_alpha, residual)
    u = uniforms.double()
    qx = q.gather(-1, draft_tokens[..., None])[..., 0]  # [B, G]
    phx = phat.gather(-1, draft_tokens[..., None])[..., 0]
    n = _first_rejection((qx > 0) & (u[:, :G] * qx < phx))
    final = torch.cat([resid, p[:, G:]], dim=1)[rows, n]  # [B, V]: residual at the rejection, else p_G
    return _emit(draft_tokens, n, _inverse_cdf(final, u[:, G]))
