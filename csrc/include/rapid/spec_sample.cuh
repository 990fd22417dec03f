// spec_sample on CUDA: framework-free (raw pointers, fp32 rows). One block per row walks the verified positions
// in order; block-wide reductions; the top-k / top-p cutoff is a bisection on the logit's order key (32 block
// reductions, no sort) plus a block scan over tied tokens, so ties resolve by token id like the reference.
// The uniforms are an input (no RNG inside): the kernel is a pure function, safe under CUDA graphs.
// Semantics: rapid_engine/ops/sampling.py; oracle: rapid_engine/ops/reference.py.
#pragma once
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cstdint>

namespace rapid::spec_cuda {

constexpr int kThreads = 512;
enum Error : int { kOk = 0, kBadLogit = 1, kEmptyRow = 2, kBadProb = 4, kBadSum = 8 };

struct Params {
  const float* logits;     // [B, G+1, V]
  const int64_t* drafts;   // [B, G]
  const float* q;          // [B, G, V] or nullptr (one-hot at the draft)
  const double* uniforms;  // [B, G+1]
  int64_t* tokens;         // [B, G+1]
  int32_t* num_accepted;   // [B]
  int* error;              // [1], OR of Error bits
  int64_t B, G, V;
  float inv_t, top_p, eta, log_alpha, sum_tol;
  int64_t top_k;
  bool greedy, paper, tail;
};

// Own functors: cub::Max / cub::Min are gone in CUDA 13's CCCL.
struct MaxF {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinI {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};
using Reduce = cub::BlockReduce<float, kThreads>;
using ReduceI = cub::BlockReduce<int64_t, kThreads>;
using Scan = cub::BlockScan<float, kThreads>;
using ScanI = cub::BlockScan<int, kThreads>;
struct Shared {
  union {
    typename Reduce::TempStorage red;
    typename ReduceI::TempStorage redi;
    typename Scan::TempStorage scan;
    typename ScanI::TempStorage scani;
  };
  float f;
  int64_t i;
};

__device__ __forceinline__ float block_sum(Shared& sh, float v) {
  float r = Reduce(sh.red).Sum(v);
  if (threadIdx.x == 0) sh.f = r;
  __syncthreads();
  r = sh.f;
  __syncthreads();
  return r;
}
__device__ __forceinline__ float block_max(Shared& sh, float v) {
  float r = Reduce(sh.red).Reduce(v, MaxF());
  if (threadIdx.x == 0) sh.f = r;
  __syncthreads();
  r = sh.f;
  __syncthreads();
  return r;
}
__device__ __forceinline__ int64_t block_min_i(Shared& sh, int64_t v) {
  int64_t r = ReduceI(sh.redi).Reduce(v, MinI());
  if (threadIdx.x == 0) sh.i = r;
  __syncthreads();
  r = sh.i;
  __syncthreads();
  return r;
}

__device__ __forceinline__ int64_t order_key(float z) {  // order-preserving; -0 and +0 share a key
  const int bits = __float_as_int(z + 0.0f);
  return bits < 0 ? static_cast<int64_t>(~bits) : static_cast<int64_t>(bits) + 2147483648LL;
}
__device__ __forceinline__ float key_to_float(int64_t t) {
  return __int_as_float(static_cast<int>(t >= 2147483648LL ? t - 2147483648LL : ~t));
}

// Keep token x iff key > kt or (key == kt and x <= kx).
struct Cut {
  int64_t kt, kx;
  __device__ bool keep(float z, int64_t x) const {
    const int64_t k = order_key(z);
    return k > kt || (k == kt && x <= kx);
  }
};

// Weight (e or 1) of tokens with key > t, optionally only among those `within` keeps.
__device__ float weight_above(Shared& sh, const float* z, int64_t V, float zmax, float inv_t, int64_t t, bool by_mass,
                              const Cut* within) {
  float acc = 0.f;
  for (int64_t x = threadIdx.x; x < V; x += blockDim.x) {
    const float zx = z[x];
    if (order_key(zx) > t && (within == nullptr || within->keep(zx, x))) acc += by_mass ? __expf((zx - zmax) * inv_t) : 1.f;
  }
  return block_sum(sh, acc);
}

// The shortest best-ranked prefix with weight >= target (ranking: logit desc, id asc).
__device__ Cut select_cut(Shared& sh, const float* z, int64_t V, float zmax, float inv_t, float target, bool by_mass,
                          const Cut* within) {
  int64_t lo = 0, hi = 4294967295LL;
  while (lo < hi) {  // smallest key t with weight(key > t) < target
    const int64_t mid = (lo + hi) / 2;
    if (weight_above(sh, z, V, zmax, inv_t, mid, by_mass, within) < target) hi = mid;
    else lo = mid + 1;
  }
  const int64_t t = hi;
  const float above = weight_above(sh, z, V, zmax, inv_t, t, by_mass, within);
  const float w_t = by_mass ? __expf((key_to_float(t) - zmax) * inv_t) : 1.f;
  const int n_keep = max(1, static_cast<int>(ceilf((target - above) / w_t)));
  // n_keep-th tied token in id order: contiguous strips per thread + a block scan of the strip counts
  const int64_t strip = (V + blockDim.x - 1) / blockDim.x, x0 = threadIdx.x * strip, x1 = min(V, x0 + strip);
  int mine = 0;
  int64_t last = -1;
  for (int64_t x = x0; x < x1; ++x)
    if (order_key(z[x]) == t && (within == nullptr || within->keep(z[x], x))) ++mine, last = x;
  int before;
  ScanI(sh.scani).ExclusiveSum(mine, before);
  __syncthreads();
  int64_t found = INT64_MAX;
  if (before < n_keep && before + mine >= n_keep) {
    int c = before;
    for (int64_t x = x0; x < x1; ++x)
      if (order_key(z[x]) == t && (within == nullptr || within->keep(z[x], x)) && ++c == n_keep) { found = x; break; }
  }
  found = block_min_i(sh, found);
  if (found == INT64_MAX) found = -block_min_i(sh, -last);  // fewer ties than n_keep (rounding): keep them all
  return {t, found};
}

// Inverse CDF in id order over weights w(x) (computed by `wf`), total W: first x with prefix > u * W.
template <class WF>
__device__ int64_t sample_cdf(Shared& sh, int64_t V, double u, float W, const WF& wf) {
  const int64_t strip = (V + blockDim.x - 1) / blockDim.x, x0 = threadIdx.x * strip, x1 = min(V, x0 + strip);
  float mine = 0.f;
  int64_t last = -1;
  for (int64_t x = x0; x < x1; ++x) {
    const float w = wf(x);
    mine += w;
    if (w > 0.f) last = x;
  }
  float before;
  Scan(sh.scan).ExclusiveSum(mine, before);
  __syncthreads();
  const float target = static_cast<float>(u * W);
  int64_t found = INT64_MAX;
  if (before + mine > target) {
    float c = before;
    for (int64_t x = x0; x < x1; ++x) {
      const float w = wf(x);
      c += w;
      if (c > target && w > 0.f) { found = x; break; }
    }
  }
  found = block_min_i(sh, found);
  if (found == INT64_MAX) found = -block_min_i(sh, -last);  // rounding guard: the last positive weight
  return found;
}

__global__ void __launch_bounds__(kThreads) spec_sample_kernel(Params pr) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x, G = pr.G, V = pr.V;
  // Validation of every position first (the result must not depend on where sampling stops).
  for (int64_t i = 0; i <= G; ++i) {
    const float* z = pr.logits + (b * (G + 1) + i) * V;
    float mx = -INFINITY;
    int bad = 0;
    for (int64_t x = threadIdx.x; x < V; x += blockDim.x) {
      const float v = z[x];
      bad |= (isnan(v) || v == INFINITY) ? kBadLogit : 0;
      mx = fmaxf(mx, v);
    }
    mx = block_max(sh, mx);
    if (bad) atomicOr(pr.error, bad);
    if (threadIdx.x == 0 && mx == -INFINITY) atomicOr(pr.error, kEmptyRow);
    if (i < G && pr.q != nullptr) {
      const float* q = pr.q + (b * G + i) * V;
      float s = 0.f;
      int qb = 0;
      for (int64_t x = threadIdx.x; x < V; x += blockDim.x) {
        const float v = q[x];
        qb |= (!(v >= 0.f) || v == INFINITY) ? kBadProb : 0;
        s += v;
      }
      s = block_sum(sh, s);
      if (qb) atomicOr(pr.error, qb);
      if (threadIdx.x == 0 && fabsf(s - 1.f) > pr.sum_tol) atomicOr(pr.error, kBadSum);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) sh.i = *reinterpret_cast<volatile int*>(pr.error);  // one read, shared: a uniform exit
  __syncthreads();
  if (sh.i != kOk) return;  // the launcher raises

  int64_t n_acc = 0, final_tok = -1;
  for (int64_t i = 0; i <= G; ++i) {
    const bool is_draft = i < G;
    const float* z = pr.logits + (b * (G + 1) + i) * V;
    const float* qrow = (is_draft && pr.q != nullptr) ? pr.q + (b * G + i) * V : nullptr;
    const int64_t xd = is_draft ? pr.drafts[b * G + i] : -1;
    auto q_at = [&](int64_t x) -> float { return qrow ? qrow[x] : (x == xd ? 1.f : 0.f); };
    float zmax = -INFINITY;
    for (int64_t x = threadIdx.x; x < V; x += blockDim.x) zmax = fmaxf(zmax, z[x]);
    zmax = block_max(sh, zmax);
    const float eta = is_draft ? pr.eta : 0.f;  // no shift at the bonus position
    if (pr.greedy) {
      float S = 0.f;
      if (eta != 0.f) {
        for (int64_t x = threadIdx.x; x < V; x += blockDim.x) S += __expf(z[x] - zmax);
        S = block_sum(sh, S);
      }
      auto v_at = [&](int64_t x) { return eta != 0.f ? z[x] + eta * (q_at(x) - __expf(z[x] - zmax) / S) : z[x]; };
      float vmax = -INFINITY;
      for (int64_t x = threadIdx.x; x < V; x += blockDim.x) vmax = fmaxf(vmax, v_at(x));
      vmax = block_max(sh, vmax);
      int64_t best = INT64_MAX;
      for (int64_t x = threadIdx.x; x < V; x += blockDim.x)
        if (v_at(x) == vmax) { best = x; break; }
      best = block_min_i(sh, best);
      if (is_draft && best == xd) { ++n_acc; continue; }
      final_tok = best;
      break;
    }
    const float inv_t = pr.inv_t;
    Cut cut{0, INT64_MAX};
    float S = 0.f;
    for (int64_t x = threadIdx.x; x < V; x += blockDim.x) S += __expf((z[x] - zmax) * inv_t);
    S = block_sum(sh, S);
    if (pr.top_k > 0 && pr.top_k < V) {
      cut = select_cut(sh, z, V, zmax, inv_t, static_cast<float>(pr.top_k), false, nullptr);
      if (pr.top_p < 1.f) {
        const Cut by_k = cut;
        const float Sk = weight_above(sh, z, V, zmax, inv_t, -1, true, &by_k);
        cut = select_cut(sh, z, V, zmax, inv_t, pr.top_p * Sk, true, &by_k);
      }
    } else if (pr.top_p < 1.f) {
      cut = select_cut(sh, z, V, zmax, inv_t, pr.top_p * S, true, nullptr);
    }
    auto e_at = [&](int64_t x) { return cut.keep(z[x], x) ? __expf((z[x] - zmax) * inv_t) : 0.f; };
    S = 0.f;
    for (int64_t x = threadIdx.x; x < V; x += blockDim.x) S += e_at(x);
    S = block_sum(sh, S);
    const float inv_s = 1.f / S;
    auto s_raw = [&](int64_t x) {  // shifted logit relative to zmax; -inf off the filtered support
      return cut.keep(z[x], x) ? (z[x] - zmax) * inv_t + eta * (q_at(x) - e_at(x) * inv_s) : -INFINITY;
    };
    float smax = -INFINITY;
    for (int64_t x = threadIdx.x; x < V; x += blockDim.x) smax = fmaxf(smax, s_raw(x));
    smax = block_max(sh, smax);
    const float thresh = pr.tail ? smax + pr.log_alpha : -INFINITY;
    auto s_at = [&](int64_t x) {  // tail protection: tokens far below the max take back their plain logit
      const float s = s_raw(x);
      return (s < thresh && s > -INFINITY) ? (z[x] - zmax) * inv_t : s;
    };
    float s2max = -INFINITY;
    for (int64_t x = threadIdx.x; x < V; x += blockDim.x) s2max = fmaxf(s2max, s_at(x));
    s2max = block_max(sh, s2max);
    float Sh = 0.f;
    for (int64_t x = threadIdx.x; x < V; x += blockDim.x) Sh += __expf(s_at(x) - s2max);
    Sh = block_sum(sh, Sh);
    auto ph_at = [&](int64_t x) { return __expf(s_at(x) - s2max) / Sh; };
    const double* u = pr.uniforms + b * (G + 1);
    if (is_draft) {
      const double qx = q_at(xd), phx = ph_at(xd);
      if (qx > 0 && u[i] * qx < phx) { ++n_acc; continue; }
      auto w_at = [&](int64_t x) {
        const float ph = ph_at(x), q = q_at(x);
        return fmaxf(pr.paper ? e_at(x) * inv_s - fminf(ph, q) : ph - q, 0.f);
      };
      float W = 0.f;
      for (int64_t x = threadIdx.x; x < V; x += blockDim.x) W += w_at(x);
      W = block_sum(sh, W);
      final_tok = W > 0.f ? sample_cdf(sh, V, u[G], W, w_at) : sample_cdf(sh, V, u[G], 1.f, ph_at);
    } else {
      final_tok = sample_cdf(sh, V, u[G], S, e_at);
    }
    break;
  }
  if (threadIdx.x == 0) {
    for (int64_t j = 0; j <= G; ++j)
      pr.tokens[b * (G + 1) + j] = j < n_acc ? pr.drafts[b * G + j] : (j == n_acc ? final_tok : -1);
    pr.num_accepted[b] = static_cast<int32_t>(n_acc);
  }
}

}  // namespace rapid::spec_cuda
