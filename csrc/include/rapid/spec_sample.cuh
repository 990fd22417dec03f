// spec_sample on CUDA: framework-free (raw pointers, fp32 rows). Semantics: rapid_engine/ops/sampling.py;
// oracle: rapid_engine/ops/reference.py. The uniforms are an input (no RNG inside): a pure function, graph-safe.
//
// This file: Params, block-wide helpers, and one (row, position) unit decided by one block:
//  - unit_tail: everything after the top-k / top-p cut over a "row" (a whole vocabulary row, or the compacted
//    candidate list of the split path in shared memory): the kept mass, the shifted max, the tail max and
//    phat's normalizer (one online pass), the accept test, and the token this unit would emit if the row
//    stopped here (residual at a draft position, p_G at the bonus position; block-scan inverse CDF in id order).
//  - single_block_unit: greedy, and the fallback when a unit's candidates do not fit in shared memory: the cut
//    by a shared-memory radix select over the whole row (4 passes of 8-bit digits), then unit_tail.
//  - assemble_kernel: leading accepts -> num_accepted, the stopping unit's token, then -1.
// The kernels that spread a unit over many blocks are in spec_sample_split.cuh.
// Determinism: selection masses are 64-bit fixed point (integer atomics are order-independent); float sums are
// cub block reductions (fixed order). Ties in the filters rank by the lower token id, like the reference.
#pragma once
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cstdint>

namespace rapid::spec_cuda {

constexpr int kThreads = 512;
constexpr int kBins = 256;  // 8-bit radix digits, 4 passes over a 32-bit key
enum Error : int { kOk = 0, kBadLogit = 1, kEmptyRow = 2, kBadProb = 4, kBadSum = 8, kBadDraft = 16 };
enum Mode : int { kCompact = 0, kSingleBlock = 1 };

struct Cand {  // one entry of a unit's compacted candidate list (split path)
  int32_t id;
  float z, q;
};

struct Params {
  const float* logits;     // [B, G+1, V]
  const int64_t* drafts;   // [B, G]
  const float* q;          // [B, G, V] or nullptr (one-hot at the draft)
  const double* uniforms;  // [B, G+1]
  int64_t* tokens;         // [B, G+1]
  int32_t* num_accepted;   // [B]
  int* error;              // [1], OR of Error bits (written by the assembler)
  int64_t* unit_token;     // [U = B (G+1)] scratch: the token emitted if the row stops at this unit
  int32_t* unit_accept;    // [U] scratch: the draft at this unit passes its test
  int64_t B, G, V;
  float inv_t, top_p, eta, log_alpha, sum_tol;
  float fx_scale;          // fixed-point scale of selection masses (sum over V stays below 2^63)
  int64_t top_k;
  bool greedy, paper, tail, vec4;
  // Split path (spec_sample_split.cuh) scratch, all written before they are read; U = B (G+1) units.
  float* part_max;                 // [U, ns] per-slice max logit
  float* part_qsum;                // [U, ns] per-slice draft-row sum
  float* part_esum;                // [U, ns] per-slice sum of exp((z - slice max) / T)
  int* part_err;                   // [U, ns] per-slice Error bits
  float* unit_zmax;                // [U]
  int* unit_err;                   // [U]
  int* unit_mode;                  // [U] kCompact or kSingleBlock
  int* unit_bhi;                   // [U] last histogram bin that holds candidates
  unsigned long long* unit_beyond; // [U] fixed-point mass of the bins after unit_bhi
  unsigned int* unit_ticket;       // [U] histogram blocks finished (the last one selects)
  unsigned int* unit_fill;         // [U] candidate slots taken
  unsigned int* hist_count;        // [U, kHistBins] (only when `use_hist`)
  unsigned long long* hist_mass;   // [U, kHistBins]
  int* seg_base;                   // [U, ns_small] where each small slice's candidates start in `cand`
  int* seg_len;                    // [U, ns_small]
  Cand* cand;                      // [U, cap] candidates, id order inside each small slice
  Cand* cand_local;                // [U, ns, local_cap] each big slice's best tokens (histogram blocks)
  int* local_len;                  // [U, ns]
  int* unit_minbloc;               // [U] lowest per-slice bound of those lists (atomicMin)
  int* unit_lists;                 // [U] 1: the slices' lists hold every candidate, the gather pass is skipped
  int64_t slice, ns, ns_small;     // big slices (stats, histogram) of `slice` tokens; small ones of kSmallSlice
  int64_t cap;                     // candidate capacity per unit (shared memory of the finishing block)
  int64_t local_cap;               // list capacity per big slice
  bool use_hist;                   // V > cap: histogram select; else every finite token is a candidate
  bool use_local;                  // histogram blocks keep per-slice lists (use_hist only)
  bool hist64;                     // histogram blocks: one packed 64-bit shared atomic per token (else 3 x 32-bit)
};

// ---- block-wide helpers (results broadcast to every thread) ------------------------------------------------

struct ArgMax {  // value, then the lower index on ties
  float v;
  int64_t i;
};
struct OnlineSum {  // running max m and sum of exp(s - m)
  float m, l;
};
struct MaxF {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct OrI {
  __device__ int operator()(int a, int b) const { return a | b; }
};
struct MinL {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};
struct MaxL {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a > b ? a : b; }
};
struct SumU {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a + b; }
};
struct ArgMaxOp {
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
  }
};
struct OnlineOp {
  __device__ OnlineSum operator()(const OnlineSum& a, const OnlineSum& b) const {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return {m, 0.f};
    return {m, a.l * __expf(a.m - m) + b.l * __expf(b.m - m)};
  }
};

struct Shared {
  union {
    typename cub::BlockReduce<float, kThreads>::TempStorage f;
    typename cub::BlockReduce<int, kThreads>::TempStorage i;
    typename cub::BlockReduce<int64_t, kThreads>::TempStorage l;
    typename cub::BlockReduce<ArgMax, kThreads>::TempStorage am;
    typename cub::BlockReduce<OnlineSum, kThreads>::TempStorage os;
    typename cub::BlockScan<float, kThreads>::TempStorage scan_f;
    typename cub::BlockScan<int, kThreads>::TempStorage scan_i;
    typename cub::BlockReduce<unsigned long long, kThreads>::TempStorage ul;
    typename cub::BlockScan<unsigned long long, kThreads>::TempStorage scan_ul;
  } tmp;
  unsigned long long hist_w[kBins];
  unsigned int hist_c[kBins];
  unsigned long long sel_above, sel_target;
  unsigned int sel_prefix, sel_count;
  unsigned long long sel_weight;
  ArgMax am;
  OnlineSum os;
  float f;
  int64_t l;
  unsigned long long ul;
  int i;
};

template <class T, class Op>
__device__ __forceinline__ T block_reduce(Shared& sh, T v, Op op, T& slot) {
  T r = cub::BlockReduce<T, kThreads>(*reinterpret_cast<typename cub::BlockReduce<T, kThreads>::TempStorage*>(&sh.tmp))
            .Reduce(v, op);
  if (threadIdx.x == 0) slot = r;
  __syncthreads();
  r = slot;
  __syncthreads();  // the temp storage and the slot are reused by the next call
  return r;
}
__device__ __forceinline__ float block_sum(Shared& sh, float v) {
  float r = cub::BlockReduce<float, kThreads>(sh.tmp.f).Sum(v);
  if (threadIdx.x == 0) sh.f = r;
  __syncthreads();
  r = sh.f;
  __syncthreads();
  return r;
}

// Calls f(x, z[x], q[x] or 0) for every token of the row, coalesced; float4 loads when allowed.
template <class F>
__device__ __forceinline__ void for_each(const float* z, const float* q, int64_t V, bool vec4, F&& f) {
  if (vec4) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    const float4* q4 = reinterpret_cast<const float4*>(q);
    for (int64_t j = threadIdx.x; j < V / 4; j += kThreads) {
      const float4 a = z4[j];
      const float4 b = q ? q4[j] : make_float4(0.f, 0.f, 0.f, 0.f);
      f(4 * j, a.x, b.x);
      f(4 * j + 1, a.y, b.y);
      f(4 * j + 2, a.z, b.z);
      f(4 * j + 3, a.w, b.w);
    }
  } else {
    for (int64_t x = threadIdx.x; x < V; x += kThreads) f(x, z[x], q ? q[x] : 0.f);
  }
}

__device__ __forceinline__ unsigned int order_key(float z) {  // order-preserving; -0 and +0 share a key
  const unsigned int bits = __float_as_uint(z + 0.0f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Keep token x iff key > kt or (key == kt and x <= kx); kt = -1 keeps everything.
struct Cut {
  int64_t kt, kx;
  __device__ __forceinline__ bool keep(unsigned int key, int64_t x) const {
    return static_cast<int64_t>(key) > kt || (static_cast<int64_t>(key) == kt && x <= kx);
  }
};

// The shortest best-ranked prefix (logit desc, id asc) of the tokens `within` keeps whose weight reaches the
// target: weight 1 per token (by_mass false, target = k) or the fixed-point mass exp((z - zmax) / T)
// (target = ceil(top_p * total mass)). Radix select: 4 histogram passes over the key's bytes, then (only when
// the boundary key is shared by more tokens than it may keep) a block scan for the n-th tie in id order.
__device__ Cut select_cut(Shared& sh, const float* z, int64_t V, bool vec4, float zmax, float inv_t, float fx_scale,
                          bool by_mass, unsigned long long k, float top_p, Cut within) {
  auto weight = [&](float zx) -> unsigned long long {
    return by_mass ? static_cast<unsigned long long>(__float2ull_rn(__expf((zx - zmax) * inv_t) * fx_scale)) : 1ull;
  };
  unsigned int prefix = 0, mask = 0;
  if (threadIdx.x == 0) sh.sel_above = 0, sh.sel_target = k;
  for (int d = 0; d < 4; ++d) {
    const int shift = 24 - 8 * d;
    for (int j = threadIdx.x; j < kBins; j += kThreads) sh.hist_w[j] = 0, sh.hist_c[j] = 0;
    __syncthreads();
    for_each(z, nullptr, V, vec4, [&](int64_t x, float zx, float) {
      const unsigned int key = order_key(zx);
      if ((key & mask) == prefix && within.keep(key, x)) {
        const unsigned int bin = (key >> shift) & 0xFFu;
        atomicAdd(&sh.hist_c[bin], 1u);
        const unsigned long long w = weight(zx);
        if (w) atomicAdd(&sh.hist_w[bin], w);
      }
    });
    __syncthreads();
    if (threadIdx.x == 0) {  // 256 bins, serial: walk from the best bin down to the one that crosses the target
      unsigned long long acc = sh.sel_above;
      if (d == 0 && by_mass) {
        unsigned long long total = 0;
        for (int j = 0; j < kBins; ++j) total += sh.hist_w[j];
        sh.sel_target = static_cast<unsigned long long>(ceil(static_cast<double>(top_p) * static_cast<double>(total)));
      }
      const unsigned long long target = sh.sel_target;
      int sel = -1, last = -1;
      for (int j = kBins - 1; j >= 0; --j) {
        if (sh.hist_c[j] == 0) continue;
        last = j;
        if (acc + sh.hist_w[j] >= target) { sel = j; break; }
        acc += sh.hist_w[j];
      }
      if (sel < 0) {  // never reached (rounding): keep everything down to the last non-empty bin
        sel = last < 0 ? 0 : last;
        if (last >= 0) acc -= sh.hist_w[last];
      }
      sh.sel_above = acc;
      sh.sel_prefix = prefix | (static_cast<unsigned int>(sel) << shift);
      sh.sel_count = sh.hist_c[sel];
      sh.sel_weight = sh.hist_w[sel];
    }
    __syncthreads();
    prefix = sh.sel_prefix;
    mask |= 0xFFu << shift;
  }
  const unsigned int t = prefix;
  const unsigned long long above = sh.sel_above, target = sh.sel_target, ties = sh.sel_count;
  const unsigned long long w_t = ties ? sh.sel_weight / ties : 0;  // tied tokens share one logit, one weight
  unsigned long long n_keep = ties;
  if (w_t > 0 && target > above) n_keep = (target - above + w_t - 1) / w_t;
  if (n_keep < 1) n_keep = 1;
  __syncthreads();
  // All tied tokens `within` keeps stay; at the boundary key of `within` itself that is ids <= within.kx.
  if (n_keep >= ties) return {static_cast<int64_t>(t), static_cast<int64_t>(t) == within.kt ? within.kx : INT64_MAX};
  // The n_keep-th tied token in id order: tiles of 4 consecutive tokens per thread, a block scan of tie counts.
  int64_t found = INT64_MAX;
  long long before_tile = 0;
  for (int64_t t0 = 0; t0 < V; t0 += 4 * kThreads) {
    const int64_t x0 = t0 + 4 * threadIdx.x;
    int mine = 0;
    for (int r = 0; r < 4; ++r) {
      const int64_t x = x0 + r;
      if (x < V) mine += (order_key(z[x]) == t && within.keep(t, x)) ? 1 : 0;
    }
    int before, tile_total;
    cub::BlockScan<int, kThreads>(sh.tmp.scan_i).ExclusiveSum(mine, before, tile_total);
    __syncthreads();
    int64_t hit = INT64_MAX;
    long long c = before_tile + before;
    for (int r = 0; r < 4 && mine > 0; ++r) {
      const int64_t x = x0 + r;
      if (x < V && order_key(z[x]) == t && within.keep(t, x) && ++c == static_cast<long long>(n_keep)) hit = x;
    }
    found = block_reduce(sh, hit, MinL(), sh.l);
    if (found != INT64_MAX) break;  // uniform: every thread sees the same reduced value
    before_tile += tile_total;
  }
  return {static_cast<int64_t>(t), found};  // found < INT64_MAX: n_keep < ties, so the n_keep-th tie exists
}

// Inverse CDF in id order over weights wf(x, zx, qx) with total W: the first x with prefix sum > u * W and a
// positive weight; the last positive-weight token if rounding never crosses.
template <class WF>
__device__ int64_t sample_cdf(Shared& sh, const float* z, const float* q, int64_t V, double u, float W, WF&& wf) {
  const float target = static_cast<float>(u * static_cast<double>(W));
  float run = 0.f;
  int64_t last = -1;
  for (int64_t t0 = 0; t0 < V; t0 += 4 * kThreads) {
    const int64_t x0 = t0 + 4 * threadIdx.x;
    float w[4];
    float mine = 0.f;
    for (int r = 0; r < 4; ++r) {
      const int64_t x = x0 + r;
      w[r] = x < V ? wf(x, z[x], q ? q[x] : 0.f) : 0.f;
      mine += w[r];
      if (w[r] > 0.f) last = x;
    }
    float before, tile_total;
    cub::BlockScan<float, kThreads>(sh.tmp.scan_f).ExclusiveSum(mine, before, tile_total);
    __syncthreads();
    int64_t hit = INT64_MAX;
    float c = run + before;
    for (int r = 0; r < 4; ++r) {
      c += w[r];
      if (hit == INT64_MAX && w[r] > 0.f && c > target) hit = x0 + r;
    }
    const int64_t found = block_reduce(sh, hit, MinL(), sh.l);
    if (found != INT64_MAX) return found;
    run += tile_total;
  }
  return block_reduce(sh, last, MaxL(), sh.l);
}

// ---- one unit in one block: the filtered, shifted distribution and this unit's decision -----------------------

struct UnitOut {
  int64_t tok;  // index into the row (a token id, or a list position on the compact path)
  int accept;
};

// Everything after the cut, over one "row" of n entries: z[x] logits (entries the filters drop are either
// excluded by `cut` or already -inf), qrow[x] the draft probabilities (nullptr: one-hot at xd, or the bonus
// position), xd the draft's index in the row (-1: not in the row, so phat(xd) = 0 and the draft is rejected;
// qx_draft is then q at the draft). Used by the single-block path on a whole vocabulary row and by the split
// path on the compacted candidate list (where z lives in shared memory and indices are list positions).
__device__ UnitOut unit_tail(Shared& sh, const Params& pr, const float* z, const float* qrow, int64_t n, bool vec4,
                             float zmax, Cut cut, bool is_draft, int64_t xd, float qx_draft, double u_accept,
                             double u_final) {
  const float eta = is_draft ? pr.eta : 0.f;  // no shift at the bonus position: phat = p there
  auto q_of = [&](int64_t x, float qx) { return qrow ? qx : (x == xd ? 1.f : 0.f); };
  const float* qload = qrow;  // rows read alongside z (nullptr: one-hot or bonus)
  const float inv_t = pr.inv_t;
  auto e_of = [&](int64_t x, float zx) { return cut.keep(order_key(zx), x) ? __expf((zx - zmax) * inv_t) : 0.f; };
  float S = 0.f;
  for_each(z, nullptr, n, vec4, [&](int64_t x, float zx, float) { S += e_of(x, zx); });
  S = block_sum(sh, S);
  const float inv_s = 1.f / S;

  // Shifted logit relative to zmax (-inf off the filtered support), then tail protection.
  auto s_raw = [&](int64_t x, float zx, float qx) {
    return cut.keep(order_key(zx), x) ? (zx - zmax) * inv_t + eta * (q_of(x, qx) - e_of(x, zx) * inv_s) : -INFINITY;
  };
  float thresh = -INFINITY, s2max = 0.f, inv_sh = inv_s;
  const bool shift = eta != 0.f;
  if (shift && pr.tail) {
    float smax = -INFINITY;
    for_each(z, qload, n, vec4, [&](int64_t x, float zx, float qx) { smax = fmaxf(smax, s_raw(x, zx, qx)); });
    thresh = block_reduce(sh, smax, MaxF(), sh.f) + pr.log_alpha;
  }
  auto s_at = [&](int64_t x, float zx, float qx) {  // tail tokens take back their plain logit
    const float s = s_raw(x, zx, qx);
    return (s < thresh && s > -INFINITY) ? (zx - zmax) * inv_t : s;
  };
  if (shift) {
    OnlineSum acc{-INFINITY, 0.f};
    for_each(z, qload, n, vec4, [&](int64_t x, float zx, float qx) {
      acc = OnlineOp()(acc, OnlineSum{s_at(x, zx, qx), 1.f});
    });
    acc = block_reduce(sh, acc, OnlineOp(), sh.os);
    s2max = acc.m;
    inv_sh = 1.f / acc.l;
  }
  auto ph_of = [&](int64_t x, float zx, float qx) {
    return shift ? __expf(s_at(x, zx, qx) - s2max) * inv_sh : e_of(x, zx) * inv_s;
  };

  UnitOut out{0, 0};
  if (is_draft) {
    const double qx = qx_draft;
    const double phx = xd >= 0 ? ph_of(xd, z[xd], qrow ? qrow[xd] : 1.f) : 0.0;
    out.accept = qx > 0 && u_accept * qx < phx;
    auto w_of = [&](int64_t x, float zv, float qv) {
      const float ph = ph_of(x, zv, qv), qq = q_of(x, qv);
      return fmaxf(pr.paper ? e_of(x, zv) * inv_s - fminf(ph, qq) : ph - qq, 0.f);
    };
    float W = 0.f;
    for_each(z, qload, n, vec4, [&](int64_t x, float zv, float qv) { W += w_of(x, zv, qv); });
    W = block_sum(sh, W);
    out.tok = W > 0.f ? sample_cdf(sh, z, qload, n, u_final, W, w_of)
                        : sample_cdf(sh, z, qload, n, u_final, 1.f, ph_of);
  } else {
    out.tok = sample_cdf(sh, z, nullptr, n, u_final, S, [&](int64_t x, float zv, float) { return e_of(x, zv); });
  }
  return out;
}

// The whole unit in one block over its vocabulary row (greedy, and the fallback of the split path when the
// candidate list would not fit in shared memory). zmax and the input checks come from the split path's first
// kernels. Writes unit_token / unit_accept.
__device__ void single_block_unit(Shared& sh, const Params& pr, int64_t unit, float zmax) {
  const int64_t G = pr.G, V = pr.V;
  const int64_t b = unit / (G + 1), i = unit % (G + 1);
  const bool is_draft = i < G;
  const float* z = pr.logits + unit * V;
  const float* qrow = (is_draft && pr.q != nullptr) ? pr.q + (b * G + i) * V : nullptr;
  const int64_t xd = is_draft ? pr.drafts[b * G + i] : -1;  // checked in range by the split path
  const float eta = is_draft ? pr.eta : 0.f;

  if (pr.greedy) {  // argmax of z + eta (q - softmax z), the lower id on ties; argmax z at the bonus
    auto q_of = [&](int64_t x, float qx) { return qrow ? qx : (x == xd ? 1.f : 0.f); };
    float S = 1.f;
    if (eta != 0.f) {
      float s = 0.f;
      for_each(z, nullptr, V, pr.vec4, [&](int64_t, float zx, float) { s += __expf(zx - zmax); });
      S = block_sum(sh, s);
    }
    ArgMax best{-INFINITY, INT64_MAX};
    for_each(z, qrow, V, pr.vec4, [&](int64_t x, float zx, float qx) {
      const float v = eta != 0.f ? zx + eta * (q_of(x, qx) - __expf(zx - zmax) / S) : zx;
      best = ArgMaxOp()(best, ArgMax{v, x});
    });
    best = block_reduce(sh, best, ArgMaxOp(), sh.am);
    if (threadIdx.x == 0) {
      pr.unit_token[unit] = best.i;
      pr.unit_accept[unit] = is_draft && best.i == xd;
    }
    return;
  }

  Cut cut{-1, INT64_MAX};
  if (pr.top_k > 0 && pr.top_k < V)
    cut = select_cut(sh, z, V, pr.vec4, zmax, pr.inv_t, pr.fx_scale, false, static_cast<unsigned long long>(pr.top_k),
                     1.f, cut);
  if (pr.top_p < 1.f) cut = select_cut(sh, z, V, pr.vec4, zmax, pr.inv_t, pr.fx_scale, true, 0, pr.top_p, cut);
  const float qx = is_draft ? (qrow ? qrow[xd] : 1.f) : 0.f;
  const double* u = pr.uniforms + b * (G + 1);
  const UnitOut r = unit_tail(sh, pr, z, qrow, V, pr.vec4, zmax, cut, is_draft, xd, qx, is_draft ? u[i] : 0.0, u[G]);
  if (threadIdx.x == 0) {
    pr.unit_token[unit] = r.tok;
    pr.unit_accept[unit] = r.accept;
  }
}

// ---- the assembler: one block for all rows ----------------------------------------------------------------

constexpr int kAssembleThreads = 256;

// error = OR of the units' errors; then per row: leading accepts -> num_accepted, the stopping unit's token,
// then -1 (all -1 / 0 when any unit had bad input: the launcher raises).
__global__ void __launch_bounds__(kAssembleThreads) assemble_kernel(Params pr) {
  __shared__ int s_err;
  if (threadIdx.x == 0) s_err = 0;
  __syncthreads();
  const int64_t G = pr.G, U = pr.B * (G + 1);
  int e = 0;
  for (int64_t u = threadIdx.x; u < U; u += kAssembleThreads) e |= pr.unit_err[u];
  if (e) atomicOr(&s_err, e);
  __syncthreads();
  const int err = s_err;
  if (threadIdx.x == 0) *pr.error = err;
  for (int64_t b = threadIdx.x; b < pr.B; b += kAssembleThreads) {
    int64_t n = 0;
    if (!err)
      while (n < G && pr.unit_accept[b * (G + 1) + n]) ++n;
    for (int64_t j = 0; j <= G; ++j)
      pr.tokens[b * (G + 1) + j] =
          err ? -1 : (j < n ? pr.drafts[b * G + j] : (j == n ? pr.unit_token[b * (G + 1) + n] : -1));
    pr.num_accepted[b] = static_cast<int32_t>(n);
  }
}

}  // namespace rapid::spec_cuda
