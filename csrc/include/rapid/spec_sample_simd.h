// Float vectors for the spec_sample CPU passes: one type per ISA path (AVX-512 x16, AVX2 x8, scalar x1)
// with the same interface, so csrc/include/rapid/spec_sample_passes.inc is written once and compiled
// per path. Every method carries its path's target attribute (no -march flags). Framework-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "rapid/cpu_isa.h"
#if RAPID_X86
#include <immintrin.h>
#endif

namespace rapid::spec {

// exp(x) for x <= 88: 2^n * poly(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 Taylor (< 2 ulp).
// x < -87.3 flushes to 0 (exp(-inf) = 0 exactly, which is how masked tokens get zero weight).
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpLo = -87.3f, kExpHi = 88.0f;
constexpr float kC2 = 1.f / 2, kC3 = 1.f / 6, kC4 = 1.f / 24, kC5 = 1.f / 120, kC6 = 1.f / 720;

struct VecScalar {
  static constexpr int W = 1;
  using M = bool;
  float v;
  static VecScalar load(const float* p) { return {*p}; }
  void store(float* p) const { *p = v; }
  static VecScalar set1(float x) { return {x}; }
  friend VecScalar operator+(VecScalar a, VecScalar b) { return {a.v + b.v}; }
  friend VecScalar operator-(VecScalar a, VecScalar b) { return {a.v - b.v}; }
  friend VecScalar operator*(VecScalar a, VecScalar b) { return {a.v * b.v}; }
  static VecScalar max(VecScalar a, VecScalar b) { return {a.v > b.v ? a.v : b.v}; }
  static VecScalar min(VecScalar a, VecScalar b) { return {a.v < b.v ? a.v : b.v}; }
  static M lt(VecScalar a, VecScalar b) { return a.v < b.v; }
  static M gt(VecScalar a, VecScalar b) { return a.v > b.v; }
  static M ge(VecScalar a, VecScalar b) { return a.v >= b.v; }
  static M ne(VecScalar a, VecScalar b) { return a.v != b.v; }
  static M bad_logit(VecScalar a) { return std::isnan(a.v) || a.v == std::numeric_limits<float>::infinity(); }
  static M bad_prob(VecScalar a) { return !(a.v >= 0.f) || a.v == std::numeric_limits<float>::infinity(); }
  static M mand(M a, M b) { return a && b; }
  static M mor(M a, M b) { return a || b; }
  static bool any(M m) { return m; }
  static VecScalar select(M m, VecScalar a, VecScalar b) { return m ? a : b; }
  static VecScalar add_where(VecScalar acc, M m, VecScalar x) { return m ? acc + x : acc; }  // acc + (m ? x : 0)
  float hsum() const { return v; }
  float hmax() const { return v; }
  static VecScalar exp(VecScalar x) {
    if (x.v < kExpLo) return {0.f};
    float xv = x.v < kExpHi ? x.v : kExpHi;
    float n = std::nearbyint(xv * kLog2e);
    float r = xv - n * kLn2Hi - n * kLn2Lo;
    float p = 1.f + r * (1.f + r * (kC2 + r * (kC3 + r * (kC4 + r * (kC5 + r * kC6)))));
    int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    return {p * scale};
  }
};

#if RAPID_X86
#define RAPID_V512 RAPID_TARGET_AVX512 __attribute__((always_inline)) inline
struct VecAvx512 {
  static constexpr int W = 16;
  using M = __mmask16;
  __m512 v;
  static RAPID_V512 VecAvx512 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  RAPID_V512 void store(float* p) const { _mm512_storeu_ps(p, v); }
  static RAPID_V512 VecAvx512 set1(float x) { return {_mm512_set1_ps(x)}; }
  friend RAPID_V512 VecAvx512 operator+(VecAvx512 a, VecAvx512 b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend RAPID_V512 VecAvx512 operator-(VecAvx512 a, VecAvx512 b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend RAPID_V512 VecAvx512 operator*(VecAvx512 a, VecAvx512 b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static RAPID_V512 VecAvx512 max(VecAvx512 a, VecAvx512 b) { return {_mm512_max_ps(a.v, b.v)}; }
  static RAPID_V512 VecAvx512 min(VecAvx512 a, VecAvx512 b) { return {_mm512_min_ps(a.v, b.v)}; }
  static RAPID_V512 M lt(VecAvx512 a, VecAvx512 b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
  static RAPID_V512 M gt(VecAvx512 a, VecAvx512 b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ); }
  static RAPID_V512 M ge(VecAvx512 a, VecAvx512 b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ); }
  static RAPID_V512 M ne(VecAvx512 a, VecAvx512 b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_UQ); }
  static RAPID_V512 M bad_logit(VecAvx512 a) {
    return _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q) |
           _mm512_cmp_ps_mask(a.v, _mm512_set1_ps(std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  }
  static RAPID_V512 M bad_prob(VecAvx512 a) {  // NaN, negative or +inf
    return _mm512_cmp_ps_mask(a.v, _mm512_setzero_ps(), _CMP_NGE_UQ) |
           _mm512_cmp_ps_mask(a.v, _mm512_set1_ps(std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  }
  static RAPID_V512 M mand(M a, M b) { return a & b; }
  static RAPID_V512 M mor(M a, M b) { return a | b; }
  static RAPID_V512 bool any(M m) { return m != 0; }
  static RAPID_V512 VecAvx512 select(M m, VecAvx512 a, VecAvx512 b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
  static RAPID_V512 VecAvx512 add_where(VecAvx512 acc, M m, VecAvx512 x) { return {_mm512_mask_add_ps(acc.v, m, acc.v, x.v)}; }
  RAPID_V512 float hsum() const { return _mm512_reduce_add_ps(v); }
  RAPID_V512 float hmax() const { return _mm512_reduce_max_ps(v); }
  static RAPID_V512 VecAvx512 exp(VecAvx512 x) {
    const __mmask16 under = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(kExpLo), _CMP_LT_OQ);
    __m512 xv = _mm512_min_ps(_mm512_max_ps(x.v, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xv);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kC6), r, _mm512_set1_ps(kC5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return {_mm512_maskz_mul_ps(static_cast<__mmask16>(~under), p, _mm512_castsi512_ps(e))};
  }
};

#define RAPID_V256 RAPID_TARGET_AVX2 __attribute__((always_inline)) inline
struct VecAvx2 {
  static constexpr int W = 8;
  using M = __m256;  // lane mask: all-ones / all-zeros floats
  __m256 v;
  static RAPID_V256 VecAvx2 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  RAPID_V256 void store(float* p) const { _mm256_storeu_ps(p, v); }
  static RAPID_V256 VecAvx2 set1(float x) { return {_mm256_set1_ps(x)}; }
  friend RAPID_V256 VecAvx2 operator+(VecAvx2 a, VecAvx2 b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend RAPID_V256 VecAvx2 operator-(VecAvx2 a, VecAvx2 b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend RAPID_V256 VecAvx2 operator*(VecAvx2 a, VecAvx2 b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static RAPID_V256 VecAvx2 max(VecAvx2 a, VecAvx2 b) { return {_mm256_max_ps(a.v, b.v)}; }
  static RAPID_V256 VecAvx2 min(VecAvx2 a, VecAvx2 b) { return {_mm256_min_ps(a.v, b.v)}; }
  static RAPID_V256 M lt(VecAvx2 a, VecAvx2 b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ); }
  static RAPID_V256 M gt(VecAvx2 a, VecAvx2 b) { return _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ); }
  static RAPID_V256 M ge(VecAvx2 a, VecAvx2 b) { return _mm256_cmp_ps(a.v, b.v, _CMP_GE_OQ); }
  static RAPID_V256 M ne(VecAvx2 a, VecAvx2 b) { return _mm256_cmp_ps(a.v, b.v, _CMP_NEQ_UQ); }
  static RAPID_V256 M bad_logit(VecAvx2 a) {
    return _mm256_or_ps(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q),
                        _mm256_cmp_ps(a.v, _mm256_set1_ps(std::numeric_limits<float>::infinity()), _CMP_EQ_OQ));
  }
  static RAPID_V256 M bad_prob(VecAvx2 a) {
    return _mm256_or_ps(_mm256_cmp_ps(a.v, _mm256_setzero_ps(), _CMP_NGE_UQ),
                        _mm256_cmp_ps(a.v, _mm256_set1_ps(std::numeric_limits<float>::infinity()), _CMP_EQ_OQ));
  }
  static RAPID_V256 M mand(M a, M b) { return _mm256_and_ps(a, b); }
  static RAPID_V256 M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static RAPID_V256 bool any(M m) { return _mm256_movemask_ps(m) != 0; }
  static RAPID_V256 VecAvx2 select(M m, VecAvx2 a, VecAvx2 b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
  static RAPID_V256 VecAvx2 add_where(VecAvx2 acc, M m, VecAvx2 x) { return {_mm256_add_ps(acc.v, _mm256_and_ps(m, x.v))}; }
  RAPID_V256 float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  RAPID_V256 float hmax() const {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static RAPID_V256 VecAvx2 exp(VecAvx2 x) {
    const __m256 keep = _mm256_cmp_ps(x.v, _mm256_set1_ps(kExpLo), _CMP_GE_OQ);
    __m256 xv = _mm256_min_ps(_mm256_max_ps(x.v, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xv, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xv);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kC6), r, _mm256_set1_ps(kC5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return {_mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(e)))};
  }
};
#endif

}  // namespace rapid::spec
