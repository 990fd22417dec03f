// spec_sample on the CPU: framework-free math (raw pointers, fp32 rows). Semantics: the spec_sample docstring
// in rapid_engine/ops/sampling.py; the oracle is rapid_engine/ops/reference.py ("speculative sampling").
//
// Work is split into items = (row b, verified position i), i in [0, G]; each item is a pure function of its
// inputs, so a row's positions can run on different threads, and a position past a known rejection is skipped.
// validate_and_sample(), per item: one pass over its rows (logit max + NaN/+inf flag, draft row sum + bad-entry
// flag), then, if they are valid, run_item(): exp pass -> top-k/top-p cutoff (a histogram over the few
// candidates, no sort) -> RAPID shift / tail / phat (2nd exp pass) -> accept test -> residual + inverse CDF.
// The passes are vectorized per ISA path (spec_sample_passes.inc compiled three times).
#pragma once
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "rapid/cpu_isa.h"
#include "rapid/spec_sample_simd.h"

namespace rapid::spec {

struct Problem {
  const float* logits;     // [B, G+1, V]
  const int64_t* drafts;   // [B, G]
  const float* q;          // [B, G, V], or nullptr = one-hot at the draft
  const double* uniforms;  // [B, G+1]
  const float* zmax;       // [B, G+1], item (b, i)'s entry filled by validate_and_sample() before it runs
  int64_t B, G, V;
  float temperature, top_p, eta, tail_alpha;
  int64_t top_k;
  bool paper;
};

struct ItemResult {
  int64_t token;  // the recovered token if this draft is rejected; the bonus token at i = G
  bool accept;
};

// Per-thread buffers, reused across calls (a fresh 1-2 MB allocation per call would page-fault every time).
struct Scratch {
  std::vector<float> e, s, onehot;
  std::vector<int32_t> cand, work, kept;
  std::vector<float> kz, ke, kq, ks;  // the kept set, compacted (id order): logit, exp, draft prob, shift/residual
  std::vector<float> cand_e;          // the top-p candidates' e, compacted beside cand
  std::vector<double> bin_mass;       // cut_by_mass's histogram
  std::vector<int32_t> boundary;      // cut_by_mass's boundary-bin tokens
  void reserve(int64_t V) {
    if (static_cast<int64_t>(e.size()) >= V) return;
    e.resize(V);
    s.resize(V);
    onehot.assign(V, 0.f);
    cand.resize(V + 16);  // + one vector: the AVX-512 gather stores 16 lanes past the last candidate
    work.resize(V);
    kept.resize(V + 16);
    cand_e.resize(V + 16);
    for (auto* v : {&kz, &ke, &kq, &ks}) v->resize(V);
  }
};
// Out of line: a thread_local in a shared library is reached through __tls_get_addr, which GCC re-derives after
// calls when the accessor is inlined; one opaque call hands the caller a plain reference.
__attribute__((noinline)) inline Scratch& thread_scratch() {
  static thread_local Scratch sc;
  return sc;
}

// Keep token x iff z[x] > z || (z[x] == z && x <= id): a prefix of the ranking (logit desc, id asc).
struct Cutoff {
  float z;
  int64_t id;
};
inline bool kept(const Cutoff& c, float z, int64_t x) { return z > c.z || (z == c.z && x <= c.id); }

// Order-preserving uint32 of a (non-NaN) float; -0 and +0 map to one key, as they compare equal.
inline uint32_t order_key(float z) {
  if (z == 0.f) z = 0.f;
  uint32_t u;
  std::memcpy(&u, &z, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The shortest best-ranked prefix of `cand` (ids in increasing order, modified in place) whose weight reaches
// `target`: weight = e[x] (top-p) or 1 (top-k). Token x is kept iff the weight ranked before it is < target.
// Radix select on the logit's order key, 11 + 11 + 10 bits: a histogram of weight per bucket, walk buckets from
// the top to the one where the target is crossed, keep only its tokens, refine; ties resolve in id order.
inline Cutoff radix_select(const float* z, const float* e, int32_t* cand, int64_t nc, double target, bool by_mass) {
  static constexpr int kShift[3] = {21, 10, 0}, kBits[3] = {11, 11, 10};
  std::vector<double> weight(1 << 11);
  std::vector<int64_t> count(1 << 11);
  double above = 0;  // weight of every candidate ranked above the current bucket
  for (int lv = 0; lv < 3 && nc > 1; ++lv) {
    const uint32_t mask = (1u << kBits[lv]) - 1;
    std::fill(weight.begin(), weight.end(), 0.0);
    std::fill(count.begin(), count.end(), 0);
    for (int64_t j = 0; j < nc; ++j) {
      const uint32_t bk = (order_key(z[cand[j]]) >> kShift[lv]) & mask;
      count[bk] += 1;
      weight[bk] += by_mass ? static_cast<double>(e[cand[j]]) : 1.0;
    }
    int64_t chosen = -1, lowest = -1;
    for (int64_t bk = mask; bk >= 0; --bk) {
      if (count[bk] == 0) continue;
      lowest = bk;
      if (above + weight[bk] >= target) {
        chosen = bk;
        break;
      }
      above += weight[bk];
    }
    if (chosen < 0) {  // rounding: the whole set falls short of the target -> keep through the last bucket
      chosen = lowest;
      above -= weight[lowest];
    }
    int64_t m = 0;
    for (int64_t j = 0; j < nc; ++j)
      if (((order_key(z[cand[j]]) >> kShift[lv]) & mask) == static_cast<uint32_t>(chosen)) cand[m++] = cand[j];
    nc = m;
  }
  // All remaining candidates share one logit; the j-th of them (id order) has weight above + j * w before it.
  const double w = by_mass ? static_cast<double>(e[cand[0]]) : 1.0;
  int64_t c = 1;
  while (c < nc && above + static_cast<double>(c) * w < target) ++c;
  return {z[cand[0]], cand[c - 1]};
}

// ---- the passes, once per ISA path ----
#define RAPID_SS_FN static inline RAPID_TARGET_AVX512
#define RAPID_SS_MFN inline RAPID_TARGET_AVX512
#define RAPID_SS_AVX512 1
namespace avx512 {
using Vec = VecAvx512;
#include "rapid/spec_sample_passes.inc"
}  // namespace avx512
#undef RAPID_SS_AVX512
#undef RAPID_SS_FN
#undef RAPID_SS_MFN
#define RAPID_SS_FN static inline RAPID_TARGET_AVX2
#define RAPID_SS_MFN inline RAPID_TARGET_AVX2
namespace avx2 {
using Vec = VecAvx2;
#include "rapid/spec_sample_passes.inc"
}  // namespace avx2
#undef RAPID_SS_FN
#undef RAPID_SS_MFN
#define RAPID_SS_FN static inline
#define RAPID_SS_MFN inline
namespace scalar {
using Vec = VecScalar;
#include "rapid/spec_sample_passes.inc"
}  // namespace scalar
#undef RAPID_SS_FN
#undef RAPID_SS_MFN

// Below this much work a thread team costs more than it saves (and on a busy machine a descheduled team
// member turns a 0.3 ms call into tens of ms). A single item (plain decoding, B = 1) never forms a team:
// the loop is over items, so the other threads could only wait.
constexpr int64_t kParallelMinFloats = 1 << 17;
inline bool worth_a_team(int64_t n_items, int64_t floats) { return n_items > 1 && floats >= kParallelMinFloats; }

// What validation found: the first bad item (b, i) as b * (G + 1) + i per kind (draft rows: b * G + i), or -1.
struct ValidateOut {
  int64_t bad_logit = -1, empty_row = -1, bad_prob = -1, bad_sum = -1;
  double worst_sum_err = 0;
  bool ok() const { return bad_logit < 0 && empty_row < 0 && bad_prob < 0 && bad_sum < 0; }
};

// Validates every row and samples, in one parallel loop over the items: item (b, i) first checks its own logit
// row (max, NaN / +inf) and draft row (sum, sign), then -- when both are valid and no earlier draft of row b was
// rejected -- decides position i. Each row is read from memory once, by the thread that goes on to process it
// while it is still in that core's L2 (a separate validation pass over all rows left them in the shared L3).
// Every row is validated, skipped or not. On bad input the tokens are not written; the caller raises.
// zmax [B, G+1] receives the row maxima (pb.zmax must point at it). tokens [B, G+1] (-1 after the emitted
// ones), num_accepted [B].
inline ValidateOut validate_and_sample(const Problem& pb, float* zmax, double sum_tol, int64_t* tokens,
                                       int32_t* num_accepted) {
  const Isa path = vector_isa(isa());
  const int64_t G = pb.G, n_items = pb.B * (G + 1), n_q = pb.q ? pb.B * G : 0;
  std::vector<uint8_t> bad(n_items, 0), qbad(n_q, 0);  // bad: 1 NaN / +inf logit, 2 every logit -inf
  std::vector<double> qerr(n_q, 0);
  std::vector<ItemResult> res(n_items);
  std::vector<std::atomic<int64_t>> first_reject(pb.B);
  for (auto& f : first_reject) f.store(G);
  const int64_t floats = (n_items + n_q) * pb.V;
#pragma omp parallel for schedule(dynamic, 1) if (worth_a_team(n_items, floats))
  for (int64_t it = 0; it < n_items; ++it) {
    const int64_t b = it / (G + 1), i = it % (G + 1);
    const float* z = pb.logits + it * pb.V;
    bool flag;
    if (path == Isa::kAvx512) avx512::logit_stats(z, pb.V, zmax + it, &flag);
    else if (path == Isa::kAvx2) avx2::logit_stats(z, pb.V, zmax + it, &flag);
    else scalar::logit_stats(z, pb.V, zmax + it, &flag);
    bad[it] = flag ? 1 : (zmax[it] == -std::numeric_limits<float>::infinity() ? 2 : 0);
    bool valid = bad[it] == 0;
    if (pb.q != nullptr && i < G) {
      const int64_t r = b * G + i;
      double sum;
      bool qflag;
      if (path == Isa::kAvx512) avx512::prob_stats(pb.q + r * pb.V, pb.V, &sum, &qflag);
      else if (path == Isa::kAvx2) avx2::prob_stats(pb.q + r * pb.V, pb.V, &sum, &qflag);
      else scalar::prob_stats(pb.q + r * pb.V, pb.V, &sum, &qflag);
      qbad[r] = qflag;
      qerr[r] = std::abs(sum - 1.0);
      valid = valid && !qflag && !(qerr[r] > sum_tol);
    }
    if (!valid) continue;  // the call fails; never sample from a bad row
    if (first_reject[b].load(std::memory_order_relaxed) < i) continue;  // an earlier draft already failed
    Scratch& sc = thread_scratch();
    sc.reserve(pb.V);
    if (path == Isa::kAvx512) avx512::run_item(pb, b, i, sc, &res[it]);
    else if (path == Isa::kAvx2) avx2::run_item(pb, b, i, sc, &res[it]);
    else scalar::run_item(pb, b, i, sc, &res[it]);
    if (i < G && !res[it].accept) {
      int64_t cur = first_reject[b].load();
      while (i < cur && !first_reject[b].compare_exchange_weak(cur, i)) {
      }
    }
  }
  ValidateOut out;
  for (int64_t it = 0; it < n_items; ++it) {
    if (bad[it] == 1 && out.bad_logit < 0) out.bad_logit = it;
    if (bad[it] == 2 && out.empty_row < 0) out.empty_row = it;
  }
  for (int64_t r = 0; r < n_q; ++r) {
    if (qbad[r] && out.bad_prob < 0) out.bad_prob = r;
    if (qerr[r] > sum_tol && out.bad_sum < 0) out.bad_sum = r;
    out.worst_sum_err = std::max(out.worst_sum_err, qerr[r]);
  }
  if (!out.ok()) return out;
  for (int64_t b = 0; b < pb.B; ++b) {
    const int64_t n = first_reject[b].load();
    int64_t* row = tokens + b * (G + 1);
    for (int64_t i = 0; i <= G; ++i) row[i] = i < n ? pb.drafts[b * G + i] : -1;
    row[n] = res[b * (G + 1) + n].token;
    num_accepted[b] = static_cast<int32_t>(n);
  }
  return out;
}

}  // namespace rapid::spec
