// Throughput of vdpbf16ps (zmm, ymm) and zmm FMA, 16 independent chains each, per CPU second: the compute roof of
// the avx512bf16 linear at M = 11.   g++ -O2 bench/cpu_linear_ab/dp_peak.cpp -o /tmp/dp_peak && /tmp/dp_peak
#include <immintrin.h>
#include <cstdio>
#include <time.h>
static double tnow(){timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t); return t.tv_sec+t.tv_nsec*1e-9;}
#define R8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) int main() {
#define D(i) __m512 a##i = _mm512_set1_ps(i*1e-3f); __m256 b##i = _mm256_set1_ps(i*1e-3f);
  R8(D)
  __m512bh x=(__m512bh)_mm512_set1_epi16(0x3f80); __m256bh xh=(__m256bh)_mm256_set1_epi16(0x3f80);
  const long it=50000000;
  double t0=tnow();
  for (long r=0;r<it;++r){
#define S(i) a##i=_mm512_dpbf16_ps(a##i,x,x);
    R8(S) }
  double t1=tnow();
  for (long r=0;r<it;++r){
#define H(i) b##i=_mm256_dpbf16_ps(b##i,xh,xh);
    R8(H) }
  double t2=tnow();
  for (long r=0;r<it;++r){
#define F(i) a##i=_mm512_fmadd_ps(a##i,a##i,a##i);
    R8(F) }
  double t3=tnow();
  float s=0;
#define SUM(i) s+=_mm512_reduce_add_ps(a##i)+b##i[0];
  R8(SUM)
  printf("zmm dpbf16 %.2f G/s  ymm dpbf16 %.2f G/s  zmm fma %.2f G/s (%g)\n", it*16/(t1-t0)/1e9, it*16/(t2-t1)/1e9, it*16/(t3-t2)/1e9, s);
}
