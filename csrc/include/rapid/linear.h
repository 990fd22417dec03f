// Batch-invariant small-M linear: y[m, n] = sum_k x[m, k] * w[n, k] + b[n]. Framework-free.
//
// Why: speculative verification multiplies n draft rows at once and must give each row the bits that
// single-row decoding gives it. Here every output is summed in one fixed order (lane-wise over K in
// steps of the vector width, then a fixed horizontal reduction), independent of M and of which
// other rows share the call. Rows are tiled 4 x 4 (4 weight rows x 4 input rows, 16 accumulators):
// each weight row is streamed from memory once for all M rows, so for small M the cost is a GEMV's.
//
// Element types: float, and 16-bit floats stored as uint16_t (Bf16 / Fp16 tags); accumulation and
// the output are float32 (the launcher casts to the input dtype).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "rapid/cpu_isa.h"
#if RAPID_X86
#include <immintrin.h>
#endif

namespace rapid {
namespace linear {

struct Bf16 { uint16_t bits; };
struct Fp16 { uint16_t bits; };

inline float to_float(float v) { return v; }
inline float to_float(Bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_float(Fp16 v) {  // exact IEEE half -> float, subnormals and inf/nan included
  uint32_t sign = uint32_t(v.bits & 0x8000u) << 16, exp = (v.bits >> 10) & 0x1f, man = v.bits & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: normalise the mantissa
    int e = -1;
    do { man <<= 1; ++e; } while (!(man & 0x400u));
    u = sign | uint32_t(112 - e) << 23 | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

constexpr int kTileN = 4;  // weight rows per tile
constexpr int kTileM = 4;  // input rows per tile

// ---------------------------------------------------------------- scalar path: one sequential sum per output
template <typename T>
void rows_scalar(const T* x, int64_t ldx, const T* w, const T* bias, float* y, int64_t M, int64_t N, int64_t K,
                 int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* wn = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const T* xm = x + m * ldx;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += to_float(xm[k]) * to_float(wn[k]);
      y[m * N + n] = acc + (bias ? to_float(bias[n]) : 0.f);
    }
  }
}

#if RAPID_X86
// GCC 12's own intrinsic headers trip -Wmaybe-uninitialized (_mm512_undefined_* inside
// _mm512_reduce_add_ps / cvtepu16); the warning is about the header, not this code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// ---------------------------------------------------------------- AVX-512: 16 lanes
RAPID_TARGET_AVX512 inline __m512 load16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
RAPID_TARGET_AVX512 inline __m512 load16(const Bf16* p, __mmask16 k) {
  __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
RAPID_TARGET_AVX512 inline __m512 load16(const Fp16* p, __mmask16 k) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

// Weight row `row` is being read at element k: prefetch 1 KB ahead in the row (into L1) and the same spot of
// the next tile's row (into L2). Decode-sized rows are short (K = 576..1536: 18-96 lines), so the in-row distance
// alone left the first lines of every tile cold; measured 0.92-1.01x -> 0.99-1.18x F.linear (fp32) and
// 13-14 -> 19-22 GB/s (bf16, K = 896) on 2 threads. Prefetches never fault, so reading past the end is harmless.
template <typename T>
RAPID_TARGET_AVX512 inline void prefetch_weights(const T* row, int64_t k, int64_t K) {
  _mm_prefetch(reinterpret_cast<const char*>(row + kTileN * K + k), _MM_HINT_T1);
  _mm_prefetch(reinterpret_cast<const char*>(row + k) + 1024, _MM_HINT_T0);
}

// One tile: rows m0..m0+mt of x against weight rows n0..n0+nt. Masked tail lanes load 0 and add 0.
template <typename T>
RAPID_TARGET_AVX512 void tile_avx512(const T* x, int64_t ldx, const T* w, const T* bias, float* y, int64_t N,
                                     int64_t K, int64_t m0, int mt, int64_t n0, int nt) {
  __m512 acc[kTileM][kTileN];
  for (int i = 0; i < kTileM; ++i)
    for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_setzero_ps();
  const T* wr[kTileN];
  const T* xr[kTileM];
  for (int j = 0; j < kTileN; ++j) wr[j] = w + (n0 + (j < nt ? j : 0)) * K;  // clamp: unused lanes repeat row 0
  for (int i = 0; i < kTileM; ++i) xr[i] = x + (m0 + (i < mt ? i : 0)) * ldx;
  if constexpr (std::is_same_v<T, Bf16>) {
    // 32 bf16 per 64-byte load, widened in place: even elements by a shift, odd ones by a mask (no
    // cross-lane widening shuffle). Each lane sums its even then its odd products, the same for every M.
    const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    for (int64_t k = 0; k < K; k += 32) {
      const __mmask32 mask = K - k >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << (K - k)) - 1);
      __m512 we[kTileN], wo[kTileN];
      for (int j = 0; j < kTileN; ++j) {
        prefetch_weights(wr[j], k, K);
        const __m512i raw = _mm512_maskz_loadu_epi16(mask, wr[j] + k);
        we[j] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
        wo[j] = _mm512_castsi512_ps(_mm512_and_si512(raw, hi_mask));
      }
      for (int i = 0; i < kTileM; ++i) {
        if (i >= mt) break;
        const __m512i raw = _mm512_maskz_loadu_epi16(mask, xr[i] + k);
        const __m512 xe = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
        const __m512 xo = _mm512_castsi512_ps(_mm512_and_si512(raw, hi_mask));
        for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_fmadd_ps(xo, wo[j], _mm512_fmadd_ps(xe, we[j], acc[i][j]));
      }
    }
  } else {
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
      __m512 wv[kTileN];
      for (int j = 0; j < kTileN; ++j) {
        prefetch_weights(wr[j], k, K);
        wv[j] = load16(wr[j] + k, mask);
      }
      for (int i = 0; i < kTileM; ++i) {
        if (i >= mt) break;
        const __m512 xv = load16(xr[i] + k, mask);
        for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < mt; ++i)
    for (int j = 0; j < nt; ++j)
      y[(m0 + i) * N + n0 + j] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? to_float(bias[n0 + j]) : 0.f);
}

// ---------------------------------------------------------------- AVX2: 8 lanes, zero-padded tail copy
RAPID_TARGET_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
RAPID_TARGET_AVX2 inline __m256 load8(const Bf16* p) {
  __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
RAPID_TARGET_AVX2 inline __m256 load8(const Fp16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
RAPID_TARGET_AVX2 inline float hsum8(__m256 v) {  // fixed order: halves, then pairs, then the last two
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One 8-wide K step of a tile: acc[i][j] += x[i][off..off+8] * w[j][off..off+8] lane-wise.
template <typename T>
RAPID_TARGET_AVX2 inline void step_avx2(const T* const* wp, const T* const* xp, int64_t off, int mt,
                                        __m256 (&acc)[kTileM][kTileN]) {
  __m256 wv[kTileN];
  for (int j = 0; j < kTileN; ++j) wv[j] = load8(wp[j] + off);
  for (int i = 0; i < mt; ++i) {
    const __m256 xv = load8(xp[i] + off);
    for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
  }
}

template <typename T>
RAPID_TARGET_AVX2 void tile_avx2(const T* x, int64_t ldx, const T* w, const T* bias, float* y, int64_t N, int64_t K,
                                 int64_t m0, int mt, int64_t n0, int nt) {
  __m256 acc[kTileM][kTileN];
  for (int i = 0; i < kTileM; ++i)
    for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm256_setzero_ps();
  const T* wr[kTileN];
  const T* xr[kTileM];
  for (int j = 0; j < kTileN; ++j) wr[j] = w + (n0 + (j < nt ? j : 0)) * K;
  for (int i = 0; i < kTileM; ++i) xr[i] = x + (m0 + (i < mt ? i : 0)) * ldx;
  const int64_t k_main = K - K % 8;
  for (int64_t k = 0; k < k_main; k += 8) step_avx2(wr, xr, k, mt, acc);
  if (k_main < K) {  // tail: copy into zeroed 8-element buffers so nothing past a row's end is read
    T wt[kTileN][8], xt[kTileM][8];
    std::memset(static_cast<void*>(wt), 0, sizeof(wt));
    std::memset(static_cast<void*>(xt), 0, sizeof(xt));
    const T* wp[kTileN];
    const T* xp[kTileM];
    for (int j = 0; j < kTileN; ++j) {
      std::memcpy(static_cast<void*>(wt[j]), wr[j] + k_main, (K - k_main) * sizeof(T));
      wp[j] = wt[j];
    }
    for (int i = 0; i < kTileM; ++i) {
      std::memcpy(static_cast<void*>(xt[i]), xr[i] + k_main, (K - k_main) * sizeof(T));
      xp[i] = xt[i];
    }
    step_avx2(wp, xp, 0, mt, acc);
  }
  for (int i = 0; i < mt; ++i)
    for (int j = 0; j < nt; ++j) y[(m0 + i) * N + n0 + j] = hsum8(acc[i][j]) + (bias ? to_float(bias[n0 + j]) : 0.f);
}
#pragma GCC diagnostic pop
#endif  // RAPID_X86

// Outputs for weight rows [n0, n1) and all M rows. x rows are `ldx` elements apart; y is [M, N] float.
// Callers split [0, N) across threads at multiples of kTileN; the result does not depend on the split.
template <typename T>
void small_m_rows(Isa path, const T* x, int64_t ldx, const T* w, const T* bias, float* y, int64_t M, int64_t N,
                  int64_t K, int64_t n0, int64_t n1) {
  path = vector_isa(path);
#if RAPID_X86
  if (path != Isa::kScalar) {
    for (int64_t n = n0; n < n1; n += kTileN) {
      const int nt = int(n1 - n < kTileN ? n1 - n : kTileN);
      for (int64_t m = 0; m < M; m += kTileM) {
        const int mt = int(M - m < kTileM ? M - m : kTileM);
        if (path == Isa::kAvx512)
          tile_avx512(x, ldx, w, bias, y, N, K, m, mt, n, nt);
        else
          tile_avx2(x, ldx, w, bias, y, N, K, m, mt, n, nt);
      }
    }
    return;
  }
#endif
  rows_scalar(x, ldx, w, bias, y, M, N, K, n0, n1);
}

}  // namespace linear
}  // namespace rapid
