"""Triton spec_sample: the same semantics as rapid_engine.ops.reference.spec_sample (see ops/sampling.py).

One program owns BLOCK_R rows (many rows per program for small vocabularies, one for large ones) and walks the
verified positions in order, streaming each vocabulary row in BLOCK_V chunks; rows that already stopped are
masked out. No scratch buffers: every pass recomputes its values from the logits and draft row (they stay in
L2 between passes). The top-k / top-p cutoff is found by bisection on the logit's order key (32 passes) plus a
prefix count over the tied tokens, so ties resolve by token id exactly like the reference; no sort.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_KEY_TOP = 2**31


@triton.jit
def _order_key(z):
    """Order-preserving int64 key of a float32 logit (-0 and +0 share one key)."""
    bits = (z + 0.0).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, (~bits).to(tl.int64), bits.to(tl.int64) + 2147483648)


@triton.jit
def _chunk(base, c0, V, rmask, BLOCK_V: tl.constexpr):
    cols = c0 + tl.arange(0, BLOCK_V)
    m = rmask[:, None] & (cols < V)[None, :]
    return cols, m, tl.load(base[:, None] + cols[None, :], mask=m, other=-float("inf"))


@triton.jit
def _weight_above(zb, V, rmask, zmax, inv_t, t, kt, kx, BY_MASS: tl.constexpr, RESTRICT: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """Per row: sum of weights (e or 1) of tokens whose key > t; RESTRICT: only tokens kept by the (kt, kx) cut."""
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, V, BLOCK_V):
        cols, m, z = _chunk(zb, c0, V, rmask, BLOCK_V)
        key = _order_key(z)
        sel = m & (key > t[:, None])
        if RESTRICT:
            sel = sel & ((key > kt[:, None]) | ((key == kt[:, None]) & (cols[None, :] <= kx[:, None])))
        if BY_MASS:
            w = tl.exp((z - zmax[:, None]) * inv_t)
        else:
            w = tl.full(z.shape, 1.0, tl.float32)
        acc += tl.sum(tl.where(sel, w, 0.0), axis=1)
    return acc


@triton.jit
def _select(zb, V, rmask, zmax, inv_t, target, kt, kx, BY_MASS: tl.constexpr, RESTRICT: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """The shortest best-ranked prefix whose weight reaches `target`, as (key t, last kept tied id)."""
    lo = tl.zeros([BLOCK_R], dtype=tl.int64)
    hi = tl.full([BLOCK_R], 4294967295, tl.int64)
    for _ in range(32):  # smallest key t with weight(key > t) < target
        mid = (lo + hi) // 2
        f = _weight_above(zb, V, rmask, zmax, inv_t, mid, kt, kx, BY_MASS, RESTRICT, BLOCK_R, BLOCK_V)
        ok = f < target
        hi = tl.where(ok, mid, hi)
        lo = tl.where(ok, lo, mid + 1)
    t = hi
    above = _weight_above(zb, V, rmask, zmax, inv_t, t, kt, kx, BY_MASS, RESTRICT, BLOCK_R, BLOCK_V)
    bits = tl.where(t >= 2147483648, t - 2147483648, ~t).to(tl.int32)
    zt = bits.to(tl.float32, bitcast=True)
    if BY_MASS:
        w_t = tl.exp((zt - zmax) * inv_t)
        n_keep = tl.ceil((target - above) / w_t)
    else:
        n_keep = target - above
    n_keep = tl.maximum(n_keep, 1.0).to(tl.int32)
    run = tl.zeros([BLOCK_R], dtype=tl.int32)
    found = tl.full([BLOCK_R], 2147483647, tl.int32)
    last = tl.full([BLOCK_R], -1, tl.int32)
    for c0 in range(0, V, BLOCK_V):  # the n_keep-th tied token in id order (or the last tie if fewer)
        cols, m, z = _chunk(zb, c0, V, rmask, BLOCK_V)
        tie = m & (_order_key(z) == t[:, None])
        if RESTRICT:
            tie = tie & ((t[:, None] > kt[:, None]) | (cols[None, :] <= kx[:, None]))
        cs = tl.cumsum(tie.to(tl.int32), axis=1) + run[:, None]
        hit = tie & (cs == n_keep[:, None])
        found = tl.minimum(found, tl.min(tl.where(hit, cols[None, :], 2147483647), axis=1))
        last = tl.maximum(last, tl.max(tl.where(tie, cols[None, :], -1), axis=1))
        run = run + tl.sum(tie.to(tl.int32), axis=1)
    return t, tl.where(found < 2147483647, found, last)


@triton.jit
def _values(z, q, cols, m, keep, zmax, inv_t, eta, inv_s, smax, log_alpha, SHIFT: tl.constexpr, TAIL: tl.constexpr):
    """e (unnormalized p) and the shifted logit s' (relative to the row max) of a tile of tokens."""
    a = (z - zmax[:, None]) * inv_t
    e = tl.where(keep, tl.exp(a), 0.0)
    s = a
    if SHIFT:
        s = tl.where(keep, a + eta[:, None] * (q - e * inv_s[:, None]), -float("inf"))
        if TAIL:
            s = tl.where((s < smax[:, None] + log_alpha) & (s > -float("inf")), a, s)
    return e, s


@triton.jit
def spec_sample_kernel(z_ptr, q_ptr, d_ptr, u_ptr, tok_ptr, nacc_ptr, B, G, V, inv_t, top_k, top_p, eta, log_alpha,
                       HAS_Q: tl.constexpr, GREEDY: tl.constexpr, USE_K: tl.constexpr, USE_P: tl.constexpr,
                       SHIFT: tl.constexpr, TAIL: tl.constexpr, PAPER: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_G: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    alive = rmask
    n_acc = tl.zeros([BLOCK_R], dtype=tl.int32)
    final = tl.full([BLOCK_R], -1, tl.int64)
    NEG_INF = -float("inf")
    for i in range(0, G + 1):
        if tl.max(alive.to(tl.int32), axis=0) > 0:
            zb = z_ptr + (rows64 * (G + 1) + i) * V  # [BLOCK_R] row pointers
            qb = q_ptr + (rows64 * G + i) * V
            is_draft = tl.full([BLOCK_R], i, tl.int32) < G  # per row, so it can mask loads
            eta_i = tl.where(is_draft, eta, 0.0)  # no shift at the bonus position: phat = p there
            x = tl.load(d_ptr + rows64 * G + i, mask=alive & is_draft, other=0)  # draft token per row
            zmax = tl.full([BLOCK_R], NEG_INF, tl.float32)
            for c0 in range(0, V, BLOCK_V):
                cols, m, z = _chunk(zb, c0, V, alive, BLOCK_V)
                zmax = tl.maximum(zmax, tl.max(z, axis=1))
            # Finished rows get max 0 (NaN-free masked lanes). Exactly one use of the loop result on purpose:
            # Triton 3.6's OptimizeThreadLocality pass rewrites this load -> max -> yield loop and asserts that
            # the loop result has one use (tl.where(zmax > -inf, zmax, 0.0) crashed it). Live rows have a
            # finite max (all -inf rows are rejected before any kernel runs).
            zmax = tl.where(alive, zmax, 0.0)
            if GREEDY:
                S = tl.zeros([BLOCK_R], dtype=tl.float32)
                if SHIFT:
                    for c0 in range(0, V, BLOCK_V):
                        cols, m, z = _chunk(zb, c0, V, alive, BLOCK_V)
                        S += tl.sum(tl.exp(z - zmax[:, None]), axis=1)
                vmax = tl.full([BLOCK_R], NEG_INF, tl.float32)
                best = tl.full([BLOCK_R], 2147483647, tl.int32)
                for c0 in range(0, V, BLOCK_V):  # argmax of z + eta (q - softmax z); first index on ties
                    cols, m, z = _chunk(zb, c0, V, alive, BLOCK_V)
                    v = z
                    if SHIFT:
                        if HAS_Q:
                            q = tl.load(qb[:, None] + cols[None, :], mask=m & is_draft[:, None], other=0.0).to(tl.float32)
                        else:
                            q = tl.where(cols[None, :] == x[:, None], 1.0, 0.0)
                        v = tl.where(m, z + eta_i[:, None] * (q - tl.exp(z - zmax[:, None]) / S[:, None]), NEG_INF)
                    cmax = tl.max(v, axis=1)
                    cidx = tl.min(tl.where(v == cmax[:, None], cols[None, :], 2147483647), axis=1)
                    better = cmax > vmax
                    best = tl.where(better, cidx, best)
                    vmax = tl.where(better, cmax, vmax)
                accept = is_draft & (best.to(tl.int64) == x)
                tok = best.to(tl.int64)
            else:
                S = tl.zeros([BLOCK_R], dtype=tl.float32)
                for c0 in range(0, V, BLOCK_V):
                    cols, m, z = _chunk(zb, c0, V, alive, BLOCK_V)
                    S += tl.sum(tl.exp((z - zmax[:, None]) * inv_t), axis=1)
                # cutoff (kt, kx): keep iff key > kt or (key == kt and id <= kx); default keeps everything
                kt = tl.zeros([BLOCK_R], dtype=tl.int64)
                kx = tl.full([BLOCK_R], 2147483647, tl.int32)
                if USE_K:
                    kt, kx = _select(zb, V, alive, zmax, inv_t, top_k + tl.zeros([BLOCK_R], tl.float32), kt, kx,
                                     False, False, BLOCK_R, BLOCK_V)
                if USE_P:
                    Sk = S
                    if USE_K:
                        Sk = _weight_above(zb, V, alive, zmax, inv_t, tl.full([BLOCK_R], -1, tl.int64), kt, kx,
                                           True, True, BLOCK_R, BLOCK_V)
                    kt, kx = _select(zb, V, alive, zmax, inv_t, top_p * Sk, kt, kx, True, USE_K, BLOCK_R, BLOCK_V)
                # kept mass S, shifted max smax, tail max s2max, phat normalizer Sh
                S = tl.zeros([BLOCK_R], dtype=tl.float32)
                for c0 in range(0, V, BLOCK_V):
                    cols, m, z = _chunk(zb, c0, V, alive, BLOCK_V)
                    key = _order_key(z)
                    keep = m & ((key > kt[:, None]) | ((key == kt[:, None]) & (cols[None, :] <= kx[:, None])))
                    S += tl.sum(tl.where(keep, tl.exp((z - zmax[:, None]) * inv_t), 0.0), axis=1)
                inv_s = 1.0 / S
                smax = tl.zeros([BLOCK_R], dtype=tl.float32)
                s2max = tl.zeros([BLOCK_R], dtype=tl.float32)
                Sh = S
                if SHIFT:
                    for p in tl.static_range(3):  # 0: max s, 1: max s' (tail), 2: sum exp(s' - max)
                        acc = tl.full([BLOCK_R], NEG_INF, tl.float32)
                        if p == 2:
                            acc = tl.zeros([BLOCK_R], dtype=tl.float32)
                        for c0 in range(0, V, BLOCK_V):
                            cols, m, z = _chunk(zb, c0, V, alive, BLOCK_V)
                            key = _order_key(z)
                            keep = m & ((key > kt[:, None]) | ((key == kt[:, None]) & (cols[None, :] <= kx[:, None])))
                            if HAS_Q:
                                q = tl.load(qb[:, None] + cols[None, :], mask=m & is_draft[:, None], other=0.0).to(tl.float32)
                            else:
                                q = tl.where(cols[None, :] == x[:, None], 1.0, 0.0)
                            e, s = _values(z, q, cols, m, keep, zmax, inv_t, eta_i, inv_s, smax, log_alpha, SHIFT,
                                           TAIL and p > 0)
                            if p == 2:
                                acc += tl.sum(tl.exp(s - s2max[:, None]), axis=1)
                            else:
                                acc = tl.maximum(acc, tl.max(s, axis=1))
                        if p == 0:
                            smax = acc
                            s2max = acc
                        elif p == 1:
                            if TAIL:
                                s2max = acc
                        else:
                            Sh = acc
                # accept test at the draft token, with the same formulas as the passes
                zx = tl.load(zb + x, mask=alive & is_draft, other=0.0).to(tl.float32)
                if HAS_Q:
                    qx = tl.load(qb + x, mask=alive & is_draft, other=0.0).to(tl.float32)
                else:
                    qx = tl.full([BLOCK_R], 1.0, tl.float32)
                kx_key = _order_key(zx)
                keep_x = (kx_key > kt) | ((kx_key == kt) & (x.to(tl.int32) <= kx))
                ex, sx = _values(zx[:, None], qx[:, None], x[:, None], keep_x[:, None], keep_x[:, None], zmax, inv_t,
                                 eta_i, inv_s, smax, log_alpha, SHIFT, TAIL)
                if SHIFT:
                    phx = tl.sum(tl.exp(sx - s2max[:, None]), axis=1) / Sh
                else:
                    phx = tl.sum(ex, axis=1) / S
                u = tl.load(u_ptr + rows64 * (G + 1) + i, mask=alive, other=0.0)
                accept = is_draft & (qx > 0) & (u * qx.to(tl.float64) < phx.to(tl.float64))
                # final draw: residual at a rejection, p_G at the bonus position; inverse CDF by token id
                u_fin = tl.load(u_ptr + rows64 * (G + 1) + G, mask=alive, other=0.0)
                need = alive & ~accept
                W = tl.zeros([BLOCK_R], dtype=tl.float32)
                tok = tl.full([BLOCK_R], -1, tl.int64)
                last_pos = tl.full([BLOCK_R], -1, tl.int64)
                for p in tl.static_range(2):  # 0: total weight, 1: find the crossing
                    cum = tl.zeros([BLOCK_R], dtype=tl.float32)
                    for c0 in range(0, V, BLOCK_V):
                        cols, m, z = _chunk(zb, c0, V, need, BLOCK_V)
                        key = _order_key(z)
                        keep = m & ((key > kt[:, None]) | ((key == kt[:, None]) & (cols[None, :] <= kx[:, None])))
                        if HAS_Q:
                            q = tl.load(qb[:, None] + cols[None, :], mask=m & is_draft[:, None], other=0.0).to(tl.float32)
                        else:
                            q = tl.where(cols[None, :] == x[:, None], 1.0, 0.0)
                        e, s = _values(z, q, cols, m, keep, zmax, inv_t, eta_i, inv_s, smax, log_alpha,
                                       SHIFT, TAIL)
                        p_ = e * inv_s[:, None]
                        if SHIFT:
                            ph = tl.exp(s - s2max[:, None]) / Sh[:, None]
                        else:
                            ph = p_
                        if PAPER:
                            w = tl.maximum(p_ - tl.minimum(ph, q), 0.0)
                        else:
                            w = tl.maximum(ph - q, 0.0)
                        if p == 1:
                            w = tl.where((W > 0)[:, None], w, ph)  # zero-mass residual -> phat
                        w = tl.where(is_draft[:, None], w, p_)  # bonus position: p_G
                        w = tl.where(m, w, 0.0)
                        if p == 0:
                            cum += tl.sum(w, axis=1)
                        else:
                            target = (u_fin * tl.where(W > 0, W, 1.0).to(tl.float64)).to(tl.float32)
                            cs = tl.cumsum(w, axis=1) + cum[:, None]
                            hit = (cs > target[:, None]) & (w > 0)
                            first = tl.min(tl.where(hit, cols[None, :], 2147483647), axis=1).to(tl.int64)
                            tok = tl.where((tok < 0) & (first < 2147483647), first, tok)
                            last_pos = tl.maximum(last_pos, tl.max(tl.where(w > 0, cols[None, :], -1), axis=1).to(tl.int64))
                            cum += tl.sum(w, axis=1)
                    if p == 0:
                        W = tl.where(is_draft & (cum <= 0), 0.0, cum)
                tok = tl.where(tok < 0, last_pos, tok)
            n_acc += (alive & accept).to(tl.int32)
            final = tl.where(alive & ~accept, tok, final)
            alive = alive & accept
    # tokens row: accepted drafts, the final token, then -1
    j = tl.arange(0, BLOCK_G)
    jm = rmask[:, None] & (j < G + 1)[None, :]
    dj = tl.load(d_ptr + rows64[:, None] * G + j[None, :], mask=jm & (j < G)[None, :], other=-1)
    out = tl.where(j[None, :] < n_acc[:, None], dj, tl.where(j[None, :] == n_acc[:, None], final[:, None], -1))
    tl.store(tok_ptr + rows64[:, None] * (G + 1) + j[None, :], out, mask=jm)
    tl.store(nacc_ptr + rows, n_acc, mask=rmask)


def spec_sample_triton(target_logits, draft_tokens, draft_probs, uniforms, temperature, top_k, top_p, eta,
                       tail_alpha, residual):
    """Launcher with the op's signature; arguments are validated by rapid_engine.ops.sampling.spec_sample."""
    B, G1, V = target_logits.shape
    G = G1 - 1
    z = target_logits.float().contiguous()  # half inputs are widened once
    q = draft_probs.contiguous() if draft_probs is not None else z  # dummy pointer when HAS_Q is False
    d = draft_tokens.contiguous() if G > 0 else torch.zeros(B, 1, dtype=torch.long, device=z.device)
    tokens = torch.empty(B, G1, dtype=torch.long, device=z.device)
    nacc = torch.empty(B, dtype=torch.int32, device=z.device)
    block_v = min(triton.next_power_of_2(V), 1024)
    tile = 1024 if z.is_cuda else 16384  # elements per program step; the CPU interpreter prefers big numpy tiles
    block_r = max(1, min(4096, tile // block_v))  # many rows per program when the vocabulary is small
    greedy = temperature == 0
    grid = (triton.cdiv(B, block_r),)
    spec_sample_kernel[grid](
        z, q, d, uniforms.contiguous(), tokens, nacc, B, G, V, 1.0 / temperature if not greedy else 1.0,
        int(top_k), float(top_p), float(eta), float(torch.tensor(tail_alpha).clamp_min(1e-30).log()),
        HAS_Q=draft_probs is not None, GREEDY=greedy, USE_K=(not greedy) and 0 < top_k < V,
        USE_P=(not greedy) and top_p < 1.0, SHIFT=eta != 0, TAIL=tail_alpha > 0, PAPER=residual == "paper",
        BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_G=triton.next_power_of_2(G1))
    return tokens, nacc
