// Fused verification attention on the CPU over a (quantized) KV cache. Framework-free.
//
// Work split: tasks over (batch, kv_head, split of kSplit keys at fixed absolute boundaries); each task
// serves all n_query x group query rows of its KV head from one read of the split. Splits are merged
// by log-sum-exp in split order. Because split and tile boundaries are absolute and the merge order is
// fixed, a query row's result does not depend on n_query, on the other rows, or on the thread count
// (speculative decoding then emits exactly the tokens of plain decoding).
// Long prefill chunks (many rows) switch to tasks over (batch, kv_head, block of rows) that fold the
// splits in the same order with the same arithmetic, so both schedules give bit-identical rows.
#pragma once
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "rapid/cpu_isa.h"
#include "rapid/kv_quant.h"
#if RAPID_X86
#include <immintrin.h>
#endif

namespace rapid {
namespace attn {

// Keys per tile: the online-softmax step of every CPU core. 64 rather than 32 halves the per-tile softmax and
// rescale work; in A/B runs (2 threads, harness on this header) one query with int4 KV took 0.96x the time
// (SmolLM2 heads, 64K), 4 and 11 queries 0.86-0.92x, 512-query prefill chunks 0.85-0.97x. A K or V tile of
// D=128 fp32 is 32 KiB, still inside the 48 KiB L1d.
constexpr int kBlock = 64;
constexpr int64_t kSplit = 512;      // keys per split: the unit of parallelism and of the LSE merge
constexpr int kRowBlock = 64;        // rows per task on the many-rows (prefill) schedule
constexpr int kPrefetchBlocks = 4;   // software prefetch distance, in tiles
// Split partials above this many bytes -> row-block schedule. RAPID_VERIFY_MAX_PARTIAL_MB overrides it
// (tests set 0 to check that both schedules give bit-identical rows).
inline int64_t max_partial_bytes() {
  const char* env = std::getenv("RAPID_VERIFY_MAX_PARTIAL_MB");
  return (env && env[0]) ? std::atoll(env) << 20 : int64_t(64) << 20;
}

// One K or V tensor: token t of (b, h) at data + b*sb + h*sh + t*st (bytes).
struct KvTensor {
  const uint8_t* data = nullptr;
  int64_t sb = 0, sh = 0, st = 0;
  const float* scale = nullptr;  // int8/fp8: fp32 [B, H, S] (element strides ssb, ssh, sst)
  int64_t ssb = 0, ssh = 0, sst = 0;
  const uint16_t* gscale = nullptr;  // int4: fp16 [B, H, S, D/G], last dim contiguous
  const uint16_t* gzero = nullptr;
  int64_t gsb = 0, gsh = 0, gst = 0;  // strides of gscale (gzero uses zsb.. below)
  int64_t zsb = 0, zsh = 0, zst = 0;
};

// One (batch, kv_head) of K or V, as the core reads it.
struct KvHead {
  const uint8_t* data;
  int64_t row_bytes;  // token stride in bytes
  int64_t ntok;       // tokens that may be touched (seqlen of this batch row): bounds the prefetch
  const float* scale;
  int64_t scale_stride;
  const uint16_t* gscale;
  const uint16_t* gzero;
  int64_t gscale_stride, gzero_stride;
};

inline KvHead kv_head(const KvTensor& t, int64_t b, int64_t h, int64_t ntok) {
  KvHead k;
  k.data = t.data + b * t.sb + h * t.sh;
  k.row_bytes = t.st;
  k.ntok = ntok;
  k.scale = t.scale ? t.scale + b * t.ssb + h * t.ssh : nullptr;
  k.scale_stride = t.sst;
  k.gscale = t.gscale ? t.gscale + b * t.gsb + h * t.gsh : nullptr;
  k.gzero = t.gzero ? t.gzero + b * t.zsb + h * t.zsh : nullptr;
  k.gscale_stride = t.gst;
  k.gzero_stride = t.zst;
  return k;
}

struct Params {
  int64_t B, n_query, q_heads, kv_heads, D;
  const float* q;         // fp32 contiguous [B, n_query, q_heads, D]
  float* out;             // fp32 contiguous [B, n_query, q_heads, D]
  const int32_t* seqlens; // [B], each in [n_query, S_max] (checked by the launcher)
  float sm_scale;
  KvFormat fmt;
  KvTensor k, v;
};

// Per-thread scratch of attend_split.
struct Scratch {
  std::vector<float> tile_buf, P_buf, alpha_buf, kscale_buf, vscale_buf;
  float *tile, *P, *alpha, *kscale, *vscale;
  // bf16-arithmetic cores: their own buffers (grown on demand), the query rows' generation (bumped by run()
  // whenever it rewrites the rows, so a core packs them once per (b, h) rather than once per split), and the
  // factor of the scores (their rows come unscaled so that bf16 q is used as given).
  std::vector<uint8_t> wide;
  uint64_t rows_gen = 0, packed_gen = ~uint64_t(0);
  float score_scale = 1.f;
  Scratch(int rows, int Dp)
      : tile_buf(static_cast<size_t>(kBlock) * Dp + 16), P_buf(static_cast<size_t>(rows) * kBlock + 16),
        alpha_buf(rows), kscale_buf(kBlock + 16), vscale_buf(kBlock + 16) {
    tile = align64(tile_buf.data());
    P = align64(P_buf.data());
    alpha = alpha_buf.data();
    kscale = align64(kscale_buf.data());
    vscale = align64(vscale_buf.data());
  }
  static float* align64(float* p) {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
  }
};

using SplitFn = void (*)(const float*, int, const int64_t*, const KvHead&, const KvHead&, int64_t, int64_t, int,
                         int, Scratch*, float*, float*, float*);

// ---------------------------------------------------------------- scalar path
namespace scalar {
struct Vec {
  static constexpr int W = 1;
  using V = float;
  static constexpr int perm(int j) { return j; }
  static V zero() { return 0.f; }
  static V set1(float x) { return x; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V x) { *p = x; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V max(V a, V b) { return std::max(a, b); }
  static float reduce_max(V a) { return a; }
  static float reduce_add(V a) { return a; }
  static V exp2(V x) { return std::exp2(x); }
  static V mask_tail(V x, int nv, float fill) { return nv > 0 ? x : fill; }
  static V hsum(const V* acc) { return acc[0]; }
  template <KvFormat F>
  static void dequant_row(const uint8_t* row, const KvHead& kv, int64_t t, int D, float* out) {
    for (int d = 0; d < D; ++d) {
      switch (F) {
        case KvFormat::kF32: out[d] = reinterpret_cast<const float*>(row)[d]; break;
        case KvFormat::kBF16: out[d] = bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[d]); break;
        case KvFormat::kF16: out[d] = f16_to_f32(reinterpret_cast<const uint16_t*>(row)[d]); break;
        case KvFormat::kInt8: out[d] = static_cast<float>(reinterpret_cast<const int8_t*>(row)[d]); break;
        case KvFormat::kFp8: out[d] = e4m3_to_f32(row[d]) * (1.f / 256.f); break;
        case KvFormat::kInt4: {
          const int G = int4_group(D);
          const float q = static_cast<float>((d & 1) ? (row[d / 2] >> 4) : (row[d / 2] & 0xF));
          out[d] = q * f16_to_f32(kv.gscale[t * kv.gscale_stride + d / G]) +
                   f16_to_f32(kv.gzero[t * kv.gzero_stride + d / G]);
          break;
        }
      }
    }
  }
};
#include "rapid/verify_attention_core.inc"
}  // namespace scalar

#if RAPID_X86
// ---------------------------------------------------------------- AVX2 path (8 lanes)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
struct Vec {
  static constexpr int W = 8;
  using V = __m256;
  // hsum's lane j sums input slot perm(j) (an involution from its shuffle network).
  static constexpr int perm(int j) { return (j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1); }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float reduce_max(V a) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  static float reduce_add(V a) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  // 2^x for x <= 0: x = n + f, f in [-0.5, 0.5]; degree-6 Taylor polynomial of 2^f (rel. error ~1e-7).
  static V exp2(V x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-125.f));
    const V n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm256_sub_ps(x, n);
    V p = _mm256_set1_ps(1.5403530393381606e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  }
  static V mask_tail(V x, int nv, float fill) {
    if (nv >= W) return x;
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const V keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nv), idx));
    return _mm256_blendv_ps(_mm256_set1_ps(fill), x, keep);
  }
  static V hsum(const V* a) {
    V v[4], u[2];
    for (int i = 0; i < 4; ++i)  // fold 128-bit halves: [a_i | a_{i+4}]
      v[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[i], a[i + 4], 0x20), _mm256_permute2f128_ps(a[i], a[i + 4], 0x31));
    for (int i = 0; i < 2; ++i) {  // fold 64-bit pairs
      const __m256d x = _mm256_castps_pd(v[i]), y = _mm256_castps_pd(v[i + 2]);
      u[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)), _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
    }
    return _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], 0x88), _mm256_shuffle_ps(u[0], u[1], 0xDD));
  }
  template <KvFormat F>
  static void dequant_row(const uint8_t* row, const KvHead& kv, int64_t t, int D, float* out) {
    int d = 0;
    for (; d + 8 <= D; d += 8) {
      V x;
      switch (F) {
        case KvFormat::kF32: x = _mm256_loadu_ps(reinterpret_cast<const float*>(row) + d); break;
        case KvFormat::kBF16:
          x = _mm256_castsi256_ps(_mm256_slli_epi32(
              _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d))), 16));
          break;
        case KvFormat::kF16: x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d))); break;
        case KvFormat::kInt8:
          x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d))));
          break;
        case KvFormat::kFp8: {  // e4m3 -> fp16 bits (value / 256): exponent and mantissa shift into place
          const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d)));
          const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7F)), 7),
                                         _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8));
          x = _mm256_cvtph_ps(h);
          break;
        }
        case KvFormat::kInt4: {  // 4 bytes -> 8 nibbles, low nibble first
          int32_t four;
          std::memcpy(&four, row + d / 2, 4);
          const __m128i dup = _mm_shuffle_epi8(_mm_cvtsi32_si128(four), _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1,
                                                                                     -1, -1, -1, -1, -1, -1));
          __m256i q = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(dup), _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
          q = _mm256_and_si256(q, _mm256_set1_epi32(0xF));
          const int g = d / int4_group(D);
          x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(_cvtsh_ss(kv.gscale[t * kv.gscale_stride + g])),
                              _mm256_set1_ps(_cvtsh_ss(kv.gzero[t * kv.gzero_stride + g])));
          break;
        }
      }
      _mm256_storeu_ps(out + d, x);
    }
    if (d < D) scalar::Vec::dequant_row<F>(row, kv, t, D, out);  // odd D: redo the row exactly
  }
};
#include "rapid/verify_attention_core.inc"
}  // namespace avx2
#pragma GCC pop_options

// ---------------------------------------------------------------- AVX-512 path (16 lanes)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
namespace avx512 {
struct Vec {
  static constexpr int W = 16;
  using V = __m512;
  // hsum's lane j sums input slot perm(j): lanes [0,2,1,3, 8,10,9,11, 4,6,5,7, 12,14,13,15].
  static constexpr int perm(int j) {
    return ((j & 1) << 1) | ((j >> 1) & 1) | (((j >> 2) & 1) << 3) | (((j >> 3) & 1) << 2);
  }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float reduce_max(V a) { return _mm512_reduce_max_ps(a); }
  static float reduce_add(V a) { return _mm512_reduce_add_ps(a); }
  static V exp2(V x) {  // as avx2::Vec::exp2, with scalef for the 2^n
    x = _mm512_max_ps(x, _mm512_set1_ps(-125.f));
    const V n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm512_sub_ps(x, n);
    V p = _mm512_set1_ps(1.5403530393381606e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
  }
  static V mask_tail(V x, int nv, float fill) {
    if (nv >= W) return x;
    const __mmask16 keep = nv <= 0 ? 0 : static_cast<__mmask16>((1u << nv) - 1);
    return _mm512_mask_blend_ps(keep, _mm512_set1_ps(fill), x);
  }
  static V hsum(const V* a) {
    V v[8], w[4], u[2];
    for (int i = 0; i < 8; ++i)  // fold 256-bit halves: [a_i | a_{i+8}]
      v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], 0x44), _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE));
    for (int i = 0; i < 4; ++i)  // fold 128-bit quarters
      w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 4], 0x88), _mm512_shuffle_f32x4(v[i], v[i + 4], 0xDD));
    for (int i = 0; i < 2; ++i) {  // fold 64-bit pairs
      const __m512d x = _mm512_castps_pd(w[i]), y = _mm512_castps_pd(w[i + 2]);
      u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xDD));
  }
  // int4, 32 values (16 bytes) per step: nibbles split with byte ops and re-interleaved in order;
  // one fp16 scale/zero conversion per 16 values (G = 32 or 16).
  static void dequant_int4(const uint8_t* row, const KvHead& kv, int64_t t, int D, float* out) {
    const int G = int4_group(D);
    const uint16_t* sc = kv.gscale + t * kv.gscale_stride;
    const uint16_t* ze = kv.gzero + t * kv.gzero_stride;
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (int d = 0; d < D; d += 32) {  // D % 16 == 0; a last half-step handles D % 32 == 16
      const bool full = d + 32 <= D;
      const __m128i b = full ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d / 2))
                             : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d / 2));
      const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
      const __m128i half[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};
      for (int k = 0; k < (full ? 2 : 1); ++k) {
        const int g = (d + 16 * k) / G;
        const V q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(half[k]));
        _mm512_storeu_ps(out + d + 16 * k,
                         _mm512_fmadd_ps(q, _mm512_set1_ps(_cvtsh_ss(sc[g])), _mm512_set1_ps(_cvtsh_ss(ze[g]))));
      }
    }
  }
  template <KvFormat F>
  static void dequant_row(const uint8_t* row, const KvHead& kv, int64_t t, int D, float* out) {
    if (F == KvFormat::kInt4) return dequant_int4(row, kv, t, D, out);
    int d = 0;
    for (; d + 16 <= D; d += 16) {
      V x;
      switch (F) {
        case KvFormat::kF32: x = _mm512_loadu_ps(reinterpret_cast<const float*>(row) + d); break;
        case KvFormat::kBF16:
          x = _mm512_castsi512_ps(_mm512_slli_epi32(
              _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * d))), 16));
          break;
        case KvFormat::kF16: x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * d))); break;
        case KvFormat::kInt8:
          x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d))));
          break;
        case KvFormat::kFp8: {
          const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d)));
          const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7F)), 7),
                                            _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8));
          x = _mm512_cvtph_ps(h);
          break;
        }
        case KvFormat::kInt4: {
          const __m128i dup = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d / 2)),
                                               _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
          __m512i q = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(dup),
                                        _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4));
          q = _mm512_and_si512(q, _mm512_set1_epi32(0xF));
          const int g = d / int4_group(D);  // F16C: the software f16_to_f32 cost 4x the whole tile
          x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(_cvtsh_ss(kv.gscale[t * kv.gscale_stride + g])),
                              _mm512_set1_ps(_cvtsh_ss(kv.gzero[t * kv.gzero_stride + g])));
          break;
        }
      }
      _mm512_storeu_ps(out + d, x);
    }
    if (d < D) avx2::Vec::dequant_row<F>(row, kv, t, D, out);
  }
};
#include "rapid/verify_attention_core.inc"
#include "rapid/verify_attention_direct.inc"
#include "rapid/verify_attention_wide.inc"
}  // namespace avx512
#pragma GCC pop_options

// ---------------------------------------------------------------- AMX-BF16 path (tiles)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,amx-tile,amx-bf16")
namespace amx {
#include "rapid/verify_attention_amx.inc"
}  // namespace amx
#pragma GCC pop_options
#endif  // RAPID_X86

// Whether (isa, format, D) runs a bf16-arithmetic core (query rows unscaled, Scratch::score_scale applied to
// the scores). A function of the path, the format and D only.
inline bool bf16_core(Isa isa, KvFormat f, int64_t D) {
#if RAPID_X86
  return isa == Isa::kAmx && amx_permitted() && amx::supports(f, static_cast<int>(D));
#else
  (void)isa, (void)f, (void)D;
  return false;
#endif
}

template <KvFormat F>
inline SplitFn split_fn_for(Isa isa, int64_t D) {
#if RAPID_X86
  if (bf16_core(isa, F, D)) return &amx::attend_split<F>;
#endif
  (void)D;
  isa = vector_isa(isa);
#if RAPID_X86
  if (isa == Isa::kAvx512) return &avx512::attend_split_fast<F>;
  if (isa == Isa::kAvx2) return &avx2::attend_split<F>;
#endif
  (void)isa;
  return &scalar::attend_split<F>;
}

inline SplitFn split_fn(Isa isa, KvFormat f, int64_t D) {
  switch (f) {
    case KvFormat::kF32: return split_fn_for<KvFormat::kF32>(isa, D);
    case KvFormat::kBF16: return split_fn_for<KvFormat::kBF16>(isa, D);
    case KvFormat::kF16: return split_fn_for<KvFormat::kF16>(isa, D);
    case KvFormat::kInt8: return split_fn_for<KvFormat::kInt8>(isa, D);
    case KvFormat::kFp8: return split_fn_for<KvFormat::kFp8>(isa, D);
    default: return split_fn_for<KvFormat::kInt4>(isa, D);
  }
}

// ---------------------------------------------------------------- schedule + LSE merge

// Running (M, L, O) <- merge with one split's (m, l, acc), all in the log2 domain. Kept out of line
// and ISA-neutral so both schedules fold with identical arithmetic.
__attribute__((noinline)) inline void fold_split(float* M, float* L, float* O, float m, float l, const float* acc,
                                                 int Dp) {
  if (m == -std::numeric_limits<float>::infinity()) return;  // the row saw no key of this split
  const float mn = std::max(*M, m);
  const float a = std::exp2(*M - mn), b = std::exp2(m - mn);
  *L = *L * a + l * b;
  for (int d = 0; d < Dp; ++d) O[d] = O[d] * a + acc[d] * b;
  *M = mn;
}

// Rows [r0, r0+nr) of (b, h): fp32 query rows pre-scaled by sm_scale*log2(e) (unscaled for the bf16 cores),
// zero-padded to Dp;
// nkeys[r] = keys row r sees = seqlen - n_query + i + 1 (query i = row / group).
inline void prepare_rows(const Params& p, int64_t b, int64_t h, int r0, int nr, int Dp, bool prescale, float* rows,
                         int64_t* nkeys) {
  const int64_t G = p.q_heads / p.kv_heads;
  const float c = prescale ? p.sm_scale * 1.4426950408889634f : 1.f;
  for (int r = 0; r < nr; ++r) {
    const int64_t i = (r0 + r) / G, g = (r0 + r) % G;
    const float* src = p.q + ((b * p.n_query + i) * p.q_heads + h * G + g) * p.D;
    float* dst = rows + static_cast<int64_t>(r) * Dp;
    for (int d = 0; d < p.D; ++d) dst[d] = src[d] * c;
    for (int d = p.D; d < Dp; ++d) dst[d] = 0.f;
    nkeys[r] = p.seqlens[b] - p.n_query + i + 1;
  }
}

inline void write_rows(const Params& p, int64_t b, int64_t h, int r0, int nr, int Dp, const float* L, const float* O) {
  const int64_t G = p.q_heads / p.kv_heads;
  for (int r = 0; r < nr; ++r) {
    const int64_t i = (r0 + r) / G, g = (r0 + r) % G;
    float* dst = p.out + ((b * p.n_query + i) * p.q_heads + h * G + g) * p.D;
    for (int d = 0; d < p.D; ++d) dst[d] = O[static_cast<int64_t>(r) * Dp + d] / L[r];
  }
}

inline void run(const Params& p, Isa isa) {
  const SplitFn attend = split_fn(isa, p.fmt, p.D);
  const bool prescale = !bf16_core(isa, p.fmt, p.D);
  const float score_scale = prescale ? 1.f : p.sm_scale * 1.4426950408889634f;
  const int Dp = static_cast<int>((p.D + 15) / 16 * 16);
  const int R = static_cast<int>(p.n_query * (p.q_heads / p.kv_heads));
  const int64_t BH = p.B * p.kv_heads;
  int64_t max_len = 0;
  for (int64_t b = 0; b < p.B; ++b) max_len = std::max<int64_t>(max_len, p.seqlens[b]);
  const int64_t nsplit = (max_len + kSplit - 1) / kSplit;
  const int64_t partial_bytes = BH * nsplit * R * (Dp + 2) * int64_t(sizeof(float));

  if (nsplit > 1 && partial_bytes <= max_partial_bytes()) {
    // Decode/verify schedule: tasks over (b, h, split) -> partials -> ordered merge per row.
    const int64_t T = BH * nsplit;
    // Grow-only per-caller buffers: a fresh multi-MB vector per call is fresh mmap'd pages, and the page
    // faults cost as much as a small decode step.
    thread_local std::vector<float> pm_buf, pl_buf, pacc_buf;
    for (auto* b : {&pm_buf, &pl_buf}) if (b->size() < size_t(T * R)) b->resize(T * R);
    if (pacc_buf.size() < size_t(T * R * Dp)) pacc_buf.resize(T * R * Dp);
    float *pm = pm_buf.data(), *pl = pl_buf.data(), *pacc = pacc_buf.data();
    // Tasks cost ~ their keys, and those differ within a batch: splits past a short sequence's end are
    // empty and a sequence's last split is usually partial. OpenMP's guided schedule divided the task
    // *count*: with lengths [8192, 512, 512, 512] one thread got every split of the long sequence (1.4-1.55x
    // the time of the four sequences one call each). So each thread owns a contiguous run of tasks holding
    // ~1/n of the keys (it streams its heads in order, and the software prefetch past a split's end lands
    // in its own next task), and a thread done with its run takes tasks from the front of the others' (a
    // vCPU slowed by its host hands work over). Which thread runs a task never changes its partial.
    thread_local std::vector<int64_t> cum_buf;  // cum[t] = keys in tasks [0, t)
    if (cum_buf.size() < size_t(T + 1)) cum_buf.resize(T + 1);
    int64_t* cum = cum_buf.data();
    cum[0] = 0;
    for (int64_t task = 0; task < T; ++task) {
      const int64_t len = p.seqlens[task / nsplit / p.kv_heads], s0 = (task % nsplit) * kSplit;
      cum[task + 1] = cum[task] + std::max<int64_t>(0, std::min(len - s0, kSplit));
    }
    struct alignas(64) Run {
      std::atomic<int64_t> next;
      int64_t end;
    };
    const int max_threads = omp_get_max_threads();
    std::unique_ptr<Run[]> runs(new Run[max_threads]);
#pragma omp parallel
    {
      const int nt = omp_get_num_threads(), me = omp_get_thread_num();
      auto run_start = [&](int t) {  // first task with cum >= t/nt of the keys
        return static_cast<int64_t>(std::lower_bound(cum, cum + T, cum[T] * t / nt) - cum);
      };
      runs[me].next.store(run_start(me), std::memory_order_relaxed);
      runs[me].end = me + 1 == nt ? T : run_start(me + 1);
      Scratch sc(R, Dp);
      sc.score_scale = score_scale;
      std::vector<float> rows(static_cast<size_t>(R) * Dp);
      std::vector<int64_t> nkeys(R);
      int64_t rows_of = -1;
      auto run_task = [&](int64_t task) {
        const int64_t bh = task / nsplit, b = bh / p.kv_heads, h = bh % p.kv_heads;
        const int64_t s0 = (task % nsplit) * kSplit, s1 = std::min<int64_t>(p.seqlens[b], s0 + kSplit);
        float* m = pm + task * R;
        if (s0 >= s1) {
          std::fill(m, m + R, -std::numeric_limits<float>::infinity());
          return;
        }
        if (rows_of != bh) prepare_rows(p, b, h, 0, R, Dp, prescale, rows.data(), nkeys.data()), rows_of = bh, ++sc.rows_gen;
        attend(rows.data(), R, nkeys.data(), kv_head(p.k, b, h, p.seqlens[b]), kv_head(p.v, b, h, p.seqlens[b]), s0,
               s1, static_cast<int>(p.D), Dp, &sc, m, pl + task * R, pacc + task * R * Dp);
      };
#pragma omp barrier
      for (int k = 0; k < nt; ++k) {  // own run first, then the others' in turn
        Run& run = runs[(me + k) % nt];
        for (int64_t task; (task = run.next.fetch_add(1, std::memory_order_relaxed)) < run.end;) run_task(task);
      }
      // The barrier publishes every partial; the ordered merge runs in the same team (one fork/join per
      // call instead of two).
#pragma omp barrier
      std::vector<float> O(Dp);
#pragma omp for schedule(static)
      for (int64_t br = 0; br < BH * R; ++br) {
        const int64_t bh = br / R, r = br % R;
        float M = -std::numeric_limits<float>::infinity(), L = 0.f;
        std::fill(O.begin(), O.end(), 0.f);
        for (int64_t s = 0; s < nsplit; ++s) {
          const int64_t task = bh * nsplit + s;
          fold_split(&M, &L, O.data(), pm[task * R + r], pl[task * R + r], pacc + (task * R + r) * Dp, Dp);
        }
        write_rows(p, bh / p.kv_heads, bh % p.kv_heads, static_cast<int>(r), 1, Dp, &L, O.data());
      }
    }
    return;
  }
  // Prefill / short-cache schedule: tasks over (b, h, block of rows), splits folded in order.
  const int64_t nrb = (R + kRowBlock - 1) / kRowBlock;
#pragma omp parallel
  {
    Scratch sc(kRowBlock, Dp);
    sc.score_scale = score_scale;
    std::vector<float> rows(static_cast<size_t>(kRowBlock) * Dp), m(kRowBlock), l(kRowBlock),
        acc(static_cast<size_t>(kRowBlock) * Dp), M(kRowBlock), L(kRowBlock), O(static_cast<size_t>(kRowBlock) * Dp);
    std::vector<int64_t> nkeys(kRowBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < BH * nrb; ++task) {
      const int64_t bh = task / nrb, b = bh / p.kv_heads, h = bh % p.kv_heads;
      const int r0 = static_cast<int>((task % nrb) * kRowBlock);
      const int nr = std::min(kRowBlock, R - r0);
      prepare_rows(p, b, h, r0, nr, Dp, prescale, rows.data(), nkeys.data());
      ++sc.rows_gen;
      std::fill(M.begin(), M.end(), -std::numeric_limits<float>::infinity());
      std::fill(L.begin(), L.end(), 0.f);
      std::fill(O.begin(), O.end(), 0.f);
      const KvHead K = kv_head(p.k, b, h, p.seqlens[b]), V = kv_head(p.v, b, h, p.seqlens[b]);
      for (int64_t s0 = 0; s0 < nkeys[nr - 1]; s0 += kSplit) {
        const int64_t s1 = std::min<int64_t>(p.seqlens[b], s0 + kSplit);
        attend(rows.data(), nr, nkeys.data(), K, V, s0, s1, static_cast<int>(p.D), Dp, &sc, m.data(), l.data(),
               acc.data());
        for (int r = 0; r < nr; ++r)
          fold_split(&M[r], &L[r], O.data() + static_cast<int64_t>(r) * Dp, m[r], l[r],
                     acc.data() + static_cast<int64_t>(r) * Dp, Dp);
      }
      write_rows(p, b, h, r0, nr, Dp, L.data(), O.data());
    }
  }
}

}  // namespace attn
}  // namespace rapid
