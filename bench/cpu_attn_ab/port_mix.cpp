// Throughput of the 512-bit operations an integer-dot-product Q.K would issue, alone and mixed with FMAs
// (10 independent chains each, so latency never binds). Evidence for the README's "int8 queries" note; not a test.
//   g++ -O2 -march=native bench/cpu_attn_ab/port_mix.cpp -o /tmp/port_mix && /tmp/port_mix
#include <immintrin.h>

#include <chrono>
#include <cstdio>

#define X10(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9)

int main() {
  const long n = 100000000;
  const __m512i bu = _mm512_set1_epi8(3), bs = _mm512_set1_epi8(5);
  const __m512 fm = _mm512_set1_ps(0.999f), fa = _mm512_set1_ps(1e-7f);
#define DECL(i) __m512i a##i = _mm512_set1_epi32(i); __m512 f##i = _mm512_set1_ps(0.1f * i);
  X10(DECL)
  auto time = [](auto&& body) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (int rep = 0; rep < 3; ++rep) {
#define DP(i) a##i = _mm512_dpbusd_epi32(a##i, bu, bs);
#define FMA(i) f##i = _mm512_fmadd_ps(f##i, fm, fa);
    const double t_dp = time([&] { for (long k = 0; k < n; ++k) { X10(DP) } });
    const double t_fma = time([&] { for (long k = 0; k < n; ++k) { X10(FMA) } });
    const double t_mix = time([&] { for (long k = 0; k < n; ++k) { X10(DP) X10(FMA) } });
    std::printf("G ops/s: vpdpbusd %.2f  vfmadd %.2f  vpdpbusd + vfmadd interleaved %.2f\n", 10 * n / t_dp / 1e9,
                10 * n / t_fma / 1e9, 20 * n / t_mix / 1e9);
  }
  int s = 0;
  float fs = 0;
#define SUM(i) s += _mm512_reduce_add_epi32(a##i); fs += _mm512_reduce_add_ps(f##i);
  X10(SUM)
  std::printf("(checksum %d %g)\n", s, fs);
}
