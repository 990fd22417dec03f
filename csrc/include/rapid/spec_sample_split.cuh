// spec_sample on CUDA, the split path: each unit's vocabulary row is spread over many blocks, so a call with
// few units (B (gamma+1) = 5 .. 88) still fills the GPU. Kernels, in stream order (U = B (gamma+1) units):
//  1. stats_kernel    [U x ns blocks]  per big slice: max logit, input checks, draft-row sum -> partials.
//  2. hist_kernel     [U x ns]         zmax = max of the partials; a histogram of d = (zmax - z) / T in
//                                      kBinsPerUnit bins per unit of d (count + 64-bit fixed-point mass), global
//                                      integer atomics (order-independent). Each block also keeps its slice's
//                                      best tokens (up to local_cap, whole bins) as a list. The last block of a
//                                      unit (ticket) picks the last bin the filters can reach (top-k by counts,
//                                      top-p by mass): every token up to it is a candidate. V <= cap: no
//                                      histogram, every finite token is a candidate.
//  3. gather_kernel   [U x ns_small]   only when some slice's list misses candidates: candidates -> the unit's
//                                      list, in id order inside each small slice (block scan), slices placed by
//                                      an atomic offset (recorded per slice).
//  4. finish_kernel   [U]              loads the candidates in slice order (= id order) into shared memory,
//                                      rebuilds their histogram, resolves the exact top-k / top-p cut (only the
//                                      boundary bin needs ranking by (logit desc, id asc)), drops the rest to
//                                      -inf, and runs unit_tail on the list. A list over `cap`, and greedy, take
//                                      the single-block path on the whole row instead.
//  5. assemble_kernel [1]              rows from the units' decisions.
// The logits are read twice (stats, histogram; a third time when the gather runs), the draft rows once plus the
// candidates' entries. Determinism: integer atomics for the histogram, fixed-order block reductions for floats.
#pragma once
#include "rapid/spec_sample.cuh"

namespace rapid::spec_cuda {

constexpr int kSplitThreads = 256;
constexpr int kHistBins = 2048;
constexpr float kBinsPerUnit = 16.f;  // bins per unit of (zmax - z) / T: d < 128 is resolved, beyond: last bin
constexpr int kSmallSlice = 2048;     // tokens per gather block (its staging buffer lives in shared memory)
constexpr int kSegChunk = kThreads;   // slices loaded per round by the finishing block
constexpr int kCountShift = 50;       // packed histogram entries: count << 50 | mass (mass < 2^45 per slice)
constexpr unsigned long long kOneCount = 1ull << kCountShift, kMassMask = kOneCount - 1;

__device__ __forceinline__ int hist_bin(float z, float zmax, float inv_t) {  // monotone: higher z, lower bin
  const float d = (zmax - z) * inv_t * kBinsPerUnit;
  return d < static_cast<float>(kHistBins - 1) ? static_cast<int>(d) : kHistBins - 1;
}
__device__ __forceinline__ unsigned long long fx_mass(float z, float zmax, const Params& pr) {
  return static_cast<unsigned long long>(__float2ull_rn(__expf((z - zmax) * pr.inv_t) * pr.fx_scale));
}

// f(x, z[x], q[x] or 0) for x in [x0, x1) of one row, NT threads; float4 loads when vec4 (x0 % 4 == 0), kBatch
// of them issued before any is used (several loads in flight per thread: the loop body has atomics).
template <int NT, class F>
__device__ __forceinline__ void for_range(const float* z, const float* q, int64_t x0, int64_t x1, bool vec4, F&& f) {
  constexpr int kBatch = 4;
  if (vec4) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    const float4* q4 = reinterpret_cast<const float4*>(q);
    const int64_t j1 = x1 / 4;
    for (int64_t j0 = x0 / 4 + threadIdx.x; j0 < j1; j0 += kBatch * NT) {
      float4 a[kBatch], b[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int64_t j = j0 + k * NT;
        a[k] = j < j1 ? z4[j] : make_float4(0.f, 0.f, 0.f, 0.f);
        b[k] = (q && j < j1) ? q4[j] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int64_t j = j0 + k * NT;
        if (j >= j1) break;
        f(4 * j, a[k].x, b[k].x);
        f(4 * j + 1, a[k].y, b[k].y);
        f(4 * j + 2, a[k].z, b[k].z);
        f(4 * j + 3, a[k].w, b[k].w);
      }
    }
  } else {
    for (int64_t x = x0 + threadIdx.x; x < x1; x += NT) f(x, z[x], q ? q[x] : 0.f);
  }
}

struct SplitShared {
  union {
    typename cub::BlockReduce<float, kSplitThreads>::TempStorage f;
    typename cub::BlockReduce<int, kSplitThreads>::TempStorage i;
    typename cub::BlockScan<int, kSplitThreads>::TempStorage scan_i;
    typename cub::BlockScan<unsigned long long, kSplitThreads>::TempStorage scan_ul;
    typename cub::BlockReduce<long long, kSplitThreads>::TempStorage l;
  } tmp;
  float f;
  int i;
  long long l;
  unsigned long long ul;
};

template <class T, class Op>
__device__ __forceinline__ T split_reduce(SplitShared& sh, T v, Op op, T& slot) {
  T r = cub::BlockReduce<T, kSplitThreads>(*reinterpret_cast<typename cub::BlockReduce<T, kSplitThreads>::TempStorage*>(
                                               &sh.tmp))
            .Reduce(v, op);
  if (threadIdx.x == 0) slot = r;
  __syncthreads();
  r = slot;
  __syncthreads();
  return r;
}
struct SumF {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct SumLL {
  __device__ long long operator()(long long a, long long b) const { return a + b; }
};
struct MinLL {
  __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};

struct UnitRef {  // where a unit's rows are
  int64_t unit, b, i;
  bool is_draft;
  const float* z;
  const float* q;
  __device__ UnitRef(const Params& pr, int64_t u) : unit(u), b(u / (pr.G + 1)), i(u % (pr.G + 1)) {
    is_draft = i < pr.G;
    z = pr.logits + u * pr.V;
    q = (is_draft && pr.q != nullptr) ? pr.q + (b * pr.G + i) * pr.V : nullptr;
  }
};

// ---- 1. per big slice: max, checks, draft-row sum; zero the unit's histogram and counters ------------------

__global__ void __launch_bounds__(kSplitThreads) stats_kernel(Params pr) {
  __shared__ SplitShared sh;
  const int64_t unit = blockIdx.x / pr.ns, s = blockIdx.x % pr.ns;
  const UnitRef r(pr, unit);
  const int64_t x0 = s * pr.slice, x1 = min(pr.V, x0 + pr.slice);
  float zmax = -INFINITY, esum = 0.f, qsum = 0.f;  // esum: sum of exp((z - zmax) / T), zmax running (online)
  int bad = 0;
  for_range<kSplitThreads>(r.z, r.q, x0, x1, pr.vec4, [&](int64_t, float zx, float qx) {
    const bool bad_z = isnan(zx) || zx == INFINITY;
    bad |= bad_z ? kBadLogit : 0;
    if (!bad_z && zx > zmax) {
      esum = (zmax == -INFINITY ? 0.f : esum * __expf((zmax - zx) * pr.inv_t)) + 1.f;
      zmax = zx;
    } else if (!bad_z) {
      esum += __expf((zx - zmax) * pr.inv_t);
    }
    bad |= (!(qx >= 0.f) || qx == INFINITY) ? kBadProb : 0;
    qsum += qx;
  });
  const float smax = split_reduce(sh, zmax, MaxF(), sh.f);
  esum = smax == -INFINITY ? 0.f : esum * __expf((zmax - smax) * pr.inv_t);  // (-inf - smax: exp -> 0)
  esum = split_reduce(sh, esum, SumF(), sh.f);
  qsum = split_reduce(sh, qsum, SumF(), sh.f);
  bad = split_reduce(sh, bad, OrI(), sh.i);
  if (threadIdx.x == 0) {
    pr.part_max[blockIdx.x] = smax;
    pr.part_esum[blockIdx.x] = esum;
    pr.part_qsum[blockIdx.x] = qsum;
    pr.part_err[blockIdx.x] = bad;
    if (s == 0) pr.unit_ticket[unit] = 0, pr.unit_fill[unit] = 0, pr.unit_minbloc[unit] = kHistBins - 1;
  }
  if (pr.use_hist) {  // this slice's share of the unit's histogram
    const int64_t per = (kHistBins + pr.ns - 1) / pr.ns;
    const int64_t end = min(static_cast<int64_t>(kHistBins), (s + 1) * per);
    for (int64_t j = s * per + threadIdx.x; j < end; j += kSplitThreads) {
      pr.hist_count[unit * kHistBins + j] = 0;
      pr.hist_mass[unit * kHistBins + j] = 0;
    }
  }
}

// ---- 2. histogram of the unit's candidates-to-be; the unit's last block selects ----------------------------

// Last block of a unit: the last bin any filter can reach. Top-k: the bin where the count reaches k (top-p then
// only narrows inside it). Top-p alone: the bin where the mass reaches ceil(top_p * total). Neither: all bins.
__device__ void select_bins(SplitShared& sh, const Params& pr, int64_t unit) {
  constexpr int kPer = kHistBins / kSplitThreads;
  const bool by_count = pr.top_k > 0 && pr.top_k < pr.V, by_mass = !by_count && pr.top_p < 1.f;
  unsigned long long cnt[kPer], mass[kPer], c_sum = 0, m_sum = 0;
  for (int r = 0; r < kPer; ++r) {
    const int64_t j = unit * kHistBins + threadIdx.x * kPer + r;
    cnt[r] = __ldcg(&pr.hist_count[j]);
    mass[r] = __ldcg(&pr.hist_mass[j]);
    c_sum += cnt[r];
    m_sum += mass[r];
  }
  unsigned long long c_pre, m_pre, m_total;
  cub::BlockScan<unsigned long long, kSplitThreads>(sh.tmp.scan_ul).ExclusiveSum(c_sum, c_pre);
  __syncthreads();
  cub::BlockScan<unsigned long long, kSplitThreads>(sh.tmp.scan_ul).ExclusiveSum(m_sum, m_pre, m_total);
  __syncthreads();
  const unsigned long long target =
      by_count ? static_cast<unsigned long long>(pr.top_k)
               : static_cast<unsigned long long>(ceil(static_cast<double>(pr.top_p) * static_cast<double>(m_total)));
  long long hit = kHistBins - 1;  // neither filter, or never reached: everything is a candidate
  if (by_count || by_mass) {
    unsigned long long acc = by_count ? c_pre : m_pre;
    for (int r = 0; r < kPer; ++r) {
      acc += by_count ? cnt[r] : mass[r];
      if (acc >= target) {
        hit = threadIdx.x * kPer + r;
        break;
      }
    }
  }
  const long long bhi = split_reduce(sh, hit, MinLL(), sh.l);
  // Owner of bin bhi: candidates = count up to bhi; mass beyond it (for top-p's total on the finishing side).
  if (bhi / kPer == threadIdx.x) {
    unsigned long long c = c_pre, m = m_pre;
    for (int r = 0; r <= bhi % kPer; ++r) c += cnt[r], m += mass[r];
    pr.unit_bhi[unit] = static_cast<int>(bhi);
    pr.unit_beyond[unit] = m_total - m;
    pr.unit_mode[unit] = c <= static_cast<unsigned long long>(pr.cap) ? kCompact : kSingleBlock;
    pr.unit_lists[unit] = pr.use_local && bhi <= __ldcg(&pr.unit_minbloc[unit]);
  }
}

// Writes the tokens of [x0, x1) whose bin is <= bmax to out[0..) in id order (tiles of 4 tokens per thread and
// a block scan), draft probabilities gathered from q; returns how many (uniform). At most `limit` are written.
__device__ int write_list(SplitShared& sh, const Params& pr, const float* z, const float* q, int64_t x0, int64_t x1,
                          float zmax, int bmax, Cand* out, int limit) {
  constexpr int kBatch = 4;  // tiles whose loads are issued together
  constexpr int64_t kTile = 4 * kSplitThreads;
  int count = 0;
  for (int64_t b0 = x0; b0 < x1; b0 += kBatch * kTile) {
    float v[kBatch][4];
#pragma unroll
    for (int t = 0; t < kBatch; ++t) {
      const int64_t xb = b0 + t * kTile + 4 * threadIdx.x;
      if (pr.vec4 && xb < x1) {
        const float4 a = reinterpret_cast<const float4*>(z)[xb / 4];
        v[t][0] = a.x, v[t][1] = a.y, v[t][2] = a.z, v[t][3] = a.w;
      } else {
        for (int k = 0; k < 4; ++k) v[t][k] = xb + k < x1 ? z[xb + k] : -INFINITY;
      }
    }
#pragma unroll
    for (int t = 0; t < kBatch; ++t) {
      const int64_t xb = b0 + t * kTile + 4 * threadIdx.x;
      bool take[4];
      int mine = 0;
      for (int k = 0; k < 4; ++k) {
        take[k] = xb + k < x1 && v[t][k] != -INFINITY && hist_bin(v[t][k], zmax, pr.inv_t) <= bmax;
        mine += take[k];
      }
      int before, tile_total;
      cub::BlockScan<int, kSplitThreads>(sh.tmp.scan_i).ExclusiveSum(mine, before, tile_total);
      for (int k = 0, at = count + before; k < 4; ++k) {
        if (!take[k]) continue;
        if (at < limit) out[at] = Cand{static_cast<int32_t>(xb + k), v[t][k], q ? q[xb + k] : 0.f};
        ++at;
      }
      count += tile_total;
      __syncthreads();
    }
  }
  return count;
}

__global__ void __launch_bounds__(kSplitThreads) hist_kernel(Params pr) {
  __shared__ SplitShared sh;
  // hist64: count << kCountShift | fixed-point mass, one 64-bit atomic per token (a slice has <= 2^13 tokens,
  // each of mass <= 2^32, so the mass field stays below 2^45 and the count field below 2^63). Else three 32-bit
  // atomics (count, mass low 16 bits, mass high bits; each sum < 2^30): 64-bit shared atomics may be a CAS loop.
  __shared__ union {
    unsigned long long cm[kHistBins];
    struct {
      unsigned int cnt[kHistBins], lo[kHistBins], hi[kHistBins];
    } w32;
  } hs;
  unsigned long long* h_cm = hs.cm;
  const bool h64 = pr.hist64;
  __shared__ int is_last;
  const int64_t unit = blockIdx.x / pr.ns, s = blockIdx.x % pr.ns;
  const UnitRef r(pr, unit);
  float zmax = -INFINITY, qsum = 0.f;  // fixed-order combine of the stats partials: every block gets the same
  int err = 0;
  for (int64_t j = threadIdx.x; j < pr.ns; j += kSplitThreads) {
    zmax = fmaxf(zmax, pr.part_max[unit * pr.ns + j]);
    qsum += pr.part_qsum[unit * pr.ns + j];
    err |= pr.part_err[unit * pr.ns + j];
  }
  zmax = split_reduce(sh, zmax, MaxF(), sh.f);
  qsum = split_reduce(sh, qsum, SumF(), sh.f);
  err = split_reduce(sh, err, OrI(), sh.i);
  // Top-p alone: tokens with e = exp((z - zmax) / T) < eps = (1 - top_p) S / (4 V) hold under a quarter of the
  // excluded mass, so the top-p set and its boundary bin lie before far_bin: tokens from there on are counted
  // in registers and lumped into the last bin (no shared atomics for most of the vocabulary). S is estimated
  // from the slices' online sums (float; the margin of 4 covers it).
  int far_bin = kHistBins - 1;
  if (!(pr.top_k > 0 && pr.top_k < pr.V) && pr.top_p < 1.f && zmax > -INFINITY) {
    float S = 0.f;
    for (int64_t j = threadIdx.x; j < pr.ns; j += kSplitThreads) {
      const float m = pr.part_max[unit * pr.ns + j];
      if (m > -INFINITY) S += pr.part_esum[unit * pr.ns + j] * __expf((m - zmax) * pr.inv_t);
    }
    S = split_reduce(sh, S, SumF(), sh.f);
    const float eps = 0.25f * (1.f - pr.top_p) * S / static_cast<float>(pr.V);
    const float d_far = eps > 0.f ? -logf(eps) : INFINITY;  // e >= eps  <=>  d <= d_far
    if (d_far * kBinsPerUnit < static_cast<float>(kHistBins - 2))
      far_bin = static_cast<int>(d_far * kBinsPerUnit) + 1;
  }
  if (zmax == -INFINITY) err |= kEmptyRow;
  if (s == 0 && threadIdx.x == 0) {
    int e = err;
    if (r.q && fabsf(qsum - 1.f) > pr.sum_tol) e |= kBadSum;
    if (r.is_draft) {
      const int64_t xd = pr.drafts[r.b * pr.G + r.i];
      if (xd < 0 || xd >= pr.V) e |= kBadDraft;
    }
    pr.unit_err[unit] = e;
    pr.unit_zmax[unit] = zmax;
    if (pr.greedy || !pr.use_hist) {  // no selection: single block (greedy) or every finite token (small V)
      pr.unit_mode[unit] = pr.greedy ? kSingleBlock : kCompact;
      pr.unit_bhi[unit] = kHistBins - 1;
      pr.unit_beyond[unit] = 0;
      pr.unit_lists[unit] = 0;
    }
  }
  if (err || pr.greedy || !pr.use_hist) return;  // uniform over the unit's blocks: nobody selects then

  for (int j = threadIdx.x; j < kHistBins; j += kSplitThreads) {
    if (h64) h_cm[j] = 0;
    else hs.w32.cnt[j] = 0, hs.w32.lo[j] = 0, hs.w32.hi[j] = 0;
  }
  __syncthreads();
  const int64_t x0 = s * pr.slice, x1 = min(pr.V, x0 + pr.slice);
  unsigned int far = 0;  // tokens in bins >= far_bin, counted (and their mass summed) without atomics
  unsigned long long far_mass = 0;
  for_range<kSplitThreads>(r.z, nullptr, x0, x1, pr.vec4, [&](int64_t, float zx, float) {
    if (zx == -INFINITY) return;
    const int bin = hist_bin(zx, zmax, pr.inv_t);
    const unsigned long long w = fx_mass(zx, zmax, pr);
    if (bin >= far_bin) {
      ++far;
      far_mass += w;
      return;
    }
    if (h64) {
      atomicAdd(&h_cm[bin], kOneCount | w);
    } else {
      atomicAdd(&hs.w32.cnt[bin], 1u);
      if (w) atomicAdd(&hs.w32.lo[bin], static_cast<unsigned int>(w & 0xFFFFu));
      if (w >> 16) atomicAdd(&hs.w32.hi[bin], static_cast<unsigned int>(w >> 16));
    }
  });
  if (h64) {
    if (far) atomicAdd(&h_cm[kHistBins - 1], static_cast<unsigned long long>(far) << kCountShift | far_mass);
  } else {  // the far tokens go straight to the unit's last global bin, once per block
    const long long far_n = split_reduce(sh, static_cast<long long>(far), SumLL(), sh.l);
    const long long far_m = split_reduce(sh, static_cast<long long>(far_mass), SumLL(), sh.l);
    if (threadIdx.x == 0 && far_n) {
      atomicAdd(&pr.hist_count[unit * kHistBins + kHistBins - 1], static_cast<unsigned int>(far_n));
      if (far_m) atomicAdd(&pr.hist_mass[unit * kHistBins + kHistBins - 1], static_cast<unsigned long long>(far_m));
    }
  }
  __syncthreads();
  auto count_of = [&](int j) -> unsigned long long { return h64 ? h_cm[j] >> kCountShift : hs.w32.cnt[j]; };
  auto mass_of = [&](int j) -> unsigned long long {
    return h64 ? h_cm[j] & kMassMask
               : (static_cast<unsigned long long>(hs.w32.hi[j]) << 16) + static_cast<unsigned long long>(hs.w32.lo[j]);
  };
  if (pr.use_local) {  // this slice's best tokens, up to local_cap of them: the bins before the cap is crossed
    constexpr int kPer = kHistBins / kSplitThreads;
    unsigned long long c[kPer], mine = 0, acc;
    for (int k = 0; k < kPer; ++k) mine += (c[k] = count_of(threadIdx.x * kPer + k));
    cub::BlockScan<unsigned long long, kSplitThreads>(sh.tmp.scan_ul).ExclusiveSum(mine, acc);
    __syncthreads();
    long long hit = kHistBins - 1;  // the whole slice fits
    for (int k = 0; k < kPer; ++k) {
      acc += c[k];
      if (acc > static_cast<unsigned long long>(pr.local_cap)) {
        hit = static_cast<long long>(threadIdx.x) * kPer + k - 1;
        break;
      }
    }
    // -1: not even the best bin fits; never into the lumped far bins (their tokens are not counted per bin)
    const long long bloc = min(split_reduce(sh, hit, MinLL(), sh.l), static_cast<long long>(far_bin) - 1);
    int len = 0;
    if (bloc >= 0)
      len = write_list(sh, pr, r.z, r.q, x0, x1, zmax, static_cast<int>(bloc),
                       pr.cand_local + blockIdx.x * pr.local_cap, static_cast<int>(pr.local_cap));
    if (threadIdx.x == 0) {
      pr.local_len[blockIdx.x] = len;
      atomicMin(&pr.unit_minbloc[unit], static_cast<int>(bloc));
    }
  }
  for (int j = threadIdx.x; j < kHistBins; j += kSplitThreads) {
    const unsigned long long c = count_of(j), m = mass_of(j);
    if (c) atomicAdd(&pr.hist_count[unit * kHistBins + j], static_cast<unsigned int>(c));
    if (m) atomicAdd(&pr.hist_mass[unit * kHistBins + j], m);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&pr.unit_ticket[unit], 1u) == static_cast<unsigned int>(pr.ns - 1);
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  select_bins(sh, pr, unit);
}

// ---- 3. gather the candidates, id order inside each small slice --------------------------------------------

// Grid-stride over (unit, small slice) items: when the histogram blocks' lists already hold every unit's
// candidates, a small grid just checks the flags and exits.
__global__ void __launch_bounds__(kSplitThreads) gather_kernel(Params pr) {
  __shared__ SplitShared sh;
  __shared__ Cand stage[kSmallSlice];
  __shared__ int base;
  const int64_t items = pr.B * (pr.G + 1) * pr.ns_small;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t unit = item / pr.ns_small, s = item % pr.ns_small;
    if (pr.unit_err[unit] || pr.unit_mode[unit] != kCompact || pr.unit_lists[unit]) continue;  // uniform
    const UnitRef r(pr, unit);
    const int64_t x0 = s * kSmallSlice, x1 = min(pr.V, x0 + kSmallSlice);
    const int count =
        write_list(sh, pr, r.z, r.q, x0, x1, pr.unit_zmax[unit], pr.unit_bhi[unit], stage, kSmallSlice);
    if (threadIdx.x == 0) {
      base = static_cast<int>(atomicAdd(&pr.unit_fill[unit], static_cast<unsigned int>(count)));
      pr.seg_base[item] = base;
      pr.seg_len[item] = count;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < count && base + j < pr.cap; j += kSplitThreads)
      pr.cand[unit * pr.cap + base + j] = stage[j];
    __syncthreads();  // stage and base are reused by the next item
  }
}

// ---- 4. one block per unit: exact cut on the list, then the unit's decision --------------------------------

struct FinishShared {
  unsigned int h_cnt[kHistBins];
  unsigned int h_lo[kHistBins], h_hi[kHistBins];  // fixed-point mass, low 16 bits and the rest (32-bit atomics)
  int seg_off[kSegChunk], seg_base[kSegChunk];
  int pos_d, nsub;
};

// First bin (of kHistBins) whose inclusive prefix of val(bin) reaches target (INT64_MAX if none); *excl = the
// prefix before it.
template <class F>
__device__ int64_t first_bin_reaching(Shared& sh, unsigned long long target, F&& val, unsigned long long* excl) {
  constexpr int kPer = kHistBins / kThreads;
  unsigned long long v[kPer], mine = 0;
  for (int r = 0; r < kPer; ++r) mine += (v[r] = val(threadIdx.x * kPer + r));
  unsigned long long acc;
  cub::BlockScan<unsigned long long, kThreads>(sh.tmp.scan_ul).ExclusiveSum(mine, acc);
  __syncthreads();
  int64_t hit = INT64_MAX;
  unsigned long long before = 0;
  for (int r = 0; r < kPer && hit == INT64_MAX; ++r) {
    if (acc + v[r] >= target) hit = threadIdx.x * kPer + r, before = acc;
    acc += v[r];
  }
  const int64_t found = block_reduce(sh, hit, MinL(), sh.l);
  if (found != INT64_MAX && hit == found) sh.ul = before;
  __syncthreads();
  *excl = found != INT64_MAX ? sh.ul : 0;
  __syncthreads();
  return found;
}

// Among the live candidates of bin `bin`, ranked by (logit desc, position asc): drop those for which
// keep(rank, mass of the better-ranked ones) is false. Returns the fixed-point mass of the kept ones.
template <class Keep>
__device__ unsigned long long resolve_bin(Shared& sh, FinishShared& fs, float* zs, uint16_t* sub, int n, int bin,
                                          float zmax, const Params& pr, Keep&& keep) {
  if (threadIdx.x == 0) fs.nsub = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < n; p += kThreads)
    if (zs[p] != -INFINITY && hist_bin(zs[p], zmax, pr.inv_t) == bin) sub[atomicAdd(&fs.nsub, 1)] = p;
  __syncthreads();
  const int m = fs.nsub;
  unsigned long long kept = 0;
  for (int j = threadIdx.x; j < m; j += kThreads) {
    const int p = sub[j];
    const unsigned int kp = order_key(zs[p]);
    long long rank = 0;
    unsigned long long before = 0;
    for (int t = 0; t < m; ++t) {
      const int o = sub[t] & 0x7FFF;
      const unsigned int ko = order_key(zs[o]);
      if (ko > kp || (ko == kp && o < p)) ++rank, before += fx_mass(zs[o], zmax, pr);
    }
    if (keep(rank, before)) kept += fx_mass(zs[p], zmax, pr);
    else sub[j] = static_cast<uint16_t>(p | 0x8000);  // marked: dropped after every rank is known
  }
  __syncthreads();
  for (int j = threadIdx.x; j < m; j += kThreads)
    if (sub[j] & 0x8000) zs[sub[j] & 0x7FFF] = -INFINITY;
  kept = block_reduce(sh, kept, SumU(), sh.ul);
  return kept;
}

__global__ void __launch_bounds__(kThreads) finish_kernel(Params pr) {
  __shared__ Shared sh;
  __shared__ FinishShared fs;
  extern __shared__ float dyn[];  // [cap] logits, [cap] draft probs, [cap] ids, [cap] uint16 boundary list
  const int64_t unit = blockIdx.x;
  if (pr.unit_err[unit]) return;
  const float zmax = pr.unit_zmax[unit];
  if (pr.unit_mode[unit] == kSingleBlock) {
    single_block_unit(sh, pr, unit, zmax);
    return;
  }
  const UnitRef r(pr, unit);
  const int64_t G = pr.G, cap = pr.cap;
  float* zs = dyn;
  float* qs = zs + cap;
  int32_t* ids = reinterpret_cast<int32_t*>(qs + cap);
  uint16_t* sub = reinterpret_cast<uint16_t*>(ids + cap);
  const int64_t xd = r.is_draft ? pr.drafts[r.b * G + r.i] : -1;

  // Load the candidates (bin <= bhi) in segment order (= id order) from the histogram blocks' lists or from the
  // gather pass: the segments' raw entries are numbered in order, taken in tiles of 4 per thread (all loads of
  // a tile in flight at once), kept ones placed by a block scan; histogram of the candidates.
  const bool lists = pr.unit_lists[unit];
  const int bhi = pr.unit_bhi[unit];
  const Cand* src = lists ? pr.cand_local + unit * pr.ns * pr.local_cap : pr.cand + unit * cap;
  const int64_t src_len = lists ? pr.ns * pr.local_cap : cap;
  const int64_t nseg = lists ? pr.ns : pr.ns_small;
  if (threadIdx.x == 0) fs.pos_d = -1;
  for (int j = threadIdx.x; j < kHistBins; j += kThreads) fs.h_cnt[j] = 0, fs.h_lo[j] = 0, fs.h_hi[j] = 0;
  int placed = 0;  // uniform
  for (int64_t c0 = 0; c0 < nseg; c0 += kSegChunk) {
    const int64_t sl = c0 + threadIdx.x;
    int len = 0, base = 0;
    if (sl < nseg) {
      len = lists ? pr.local_len[unit * pr.ns + sl] : pr.seg_len[unit * pr.ns_small + sl];
      base = lists ? static_cast<int>(sl * pr.local_cap) : pr.seg_base[unit * pr.ns_small + sl];
      if (lists) len = static_cast<int>(min(static_cast<int64_t>(len), pr.local_cap));
    }
    int raw_at, raw_total;
    cub::BlockScan<int, kThreads>(sh.tmp.scan_i).ExclusiveSum(len, raw_at, raw_total);
    __syncthreads();
    fs.seg_off[threadIdx.x] = raw_at, fs.seg_base[threadIdx.x] = base;
    __syncthreads();
    const int nk = static_cast<int>(min(static_cast<int64_t>(kSegChunk), nseg - c0));
    for (int r0 = 0; r0 < raw_total; r0 += 4 * kThreads) {
      Cand c[4];
      bool take[4];
      int mine = 0;
      for (int k = 0; k < 4; ++k) {
        const int rr = r0 + 4 * static_cast<int>(threadIdx.x) + k;
        c[k] = Cand{-1, -INFINITY, 0.f};
        if (rr < raw_total) {
          int lo = 0, hi = nk - 1;  // the last segment starting at or before rr (empty ones share offsets)
          while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (fs.seg_off[mid] <= rr) lo = mid;
            else hi = mid - 1;
          }
          const int64_t at = static_cast<int64_t>(fs.seg_base[lo]) + (rr - fs.seg_off[lo]);
          if (at < src_len) c[k] = src[at];
        }
        take[k] = c[k].id >= 0 && hist_bin(c[k].z, zmax, pr.inv_t) <= bhi;
        mine += take[k];
      }
      int before, tile_total;
      cub::BlockScan<int, kThreads>(sh.tmp.scan_i).ExclusiveSum(mine, before, tile_total);
      for (int k = 0, p = placed + before; k < 4; ++k) {
        if (!take[k]) continue;
        if (p < cap) {
          zs[p] = c[k].z, qs[p] = c[k].q, ids[p] = c[k].id;
          if (c[k].id == xd) fs.pos_d = p;
          const int bin = hist_bin(c[k].z, zmax, pr.inv_t);
          atomicAdd(&fs.h_cnt[bin], 1u);
          const unsigned long long w = fx_mass(c[k].z, zmax, pr);
          if (w) atomicAdd(&fs.h_lo[bin], static_cast<unsigned int>(w & 0xFFFFu));  // sums < 2^30: cap <= 2^14
          if (w >> 16) atomicAdd(&fs.h_hi[bin], static_cast<unsigned int>(w >> 16));
        }
        ++p;
      }
      placed += tile_total;
      __syncthreads();
    }
  }
  const int n = static_cast<int>(min(static_cast<int64_t>(placed), cap));

  // Top-k: bins before kb are in, bin kb keeps its best (k - count before) tokens.
  const bool use_k = pr.top_k > 0 && pr.top_k < pr.V;
  int64_t kb = INT64_MAX;
  unsigned long long kb_mass = 0;
  if (use_k) {
    unsigned long long above = 0;
    kb = first_bin_reaching(sh, static_cast<unsigned long long>(pr.top_k),
                            [&](int j) { return static_cast<unsigned long long>(fs.h_cnt[j]); }, &above);
    if (kb != INT64_MAX) {
      const long long need = pr.top_k - static_cast<long long>(above);
      kb_mass = resolve_bin(sh, fs, zs, sub, n, static_cast<int>(kb), zmax, pr,
                            [&](long long rank, unsigned long long) { return rank < need; });
    }
  }
  // Top-p on the top-k-renormalized mass: bins before bp are in, bin bp keeps the tokens whose better-ranked
  // mass is below the target, bins after bp are out.
  if (pr.top_p < 1.f) {
    auto mass_of = [&](int j) -> unsigned long long {
      const unsigned long long m = (static_cast<unsigned long long>(fs.h_hi[j]) << 16) + fs.h_lo[j];
      return j < kb ? m : (j == kb ? kb_mass : 0ull);
    };
    unsigned long long total = 0;
    for (int j = threadIdx.x; j < kHistBins; j += kThreads) total += mass_of(j);
    total = block_reduce(sh, total, SumU(), sh.ul);
    if (kb == INT64_MAX) total += pr.unit_beyond[unit];  // no top-k: the tokens after the candidates count too
    const unsigned long long target =
        static_cast<unsigned long long>(ceil(static_cast<double>(pr.top_p) * static_cast<double>(total)));
    unsigned long long above = 0;
    const int64_t bp = first_bin_reaching(sh, target, mass_of, &above);
    if (bp != INT64_MAX) {
      resolve_bin(sh, fs, zs, sub, n, static_cast<int>(bp), zmax, pr,
                  [&](long long, unsigned long long before) { return above + before < target; });
      for (int p = threadIdx.x; p < n; p += kThreads)
        if (zs[p] != -INFINITY && hist_bin(zs[p], zmax, pr.inv_t) > bp) zs[p] = -INFINITY;
      __syncthreads();
    }
  } else if (kb != INT64_MAX) {
    for (int p = threadIdx.x; p < n; p += kThreads)
      if (zs[p] != -INFINITY && hist_bin(zs[p], zmax, pr.inv_t) > kb) zs[p] = -INFINITY;
    __syncthreads();
  }

  const double* u = pr.uniforms + r.b * (G + 1);
  const int pos_d = fs.pos_d;
  const float qx = r.is_draft ? (r.q ? r.q[xd] : 1.f) : 0.f;
  const UnitOut o = unit_tail(sh, pr, zs, r.q ? qs : nullptr, n, false, zmax, Cut{-1, INT64_MAX}, r.is_draft, pos_d,
                              qx, r.is_draft ? u[r.i] : 0.0, u[G]);
  if (threadIdx.x == 0) {
    pr.unit_token[unit] = o.tok >= 0 && o.tok < n ? ids[o.tok] : -1;
    pr.unit_accept[unit] = o.accept;
  }
}

}  // namespace rapid::spec_cuda
