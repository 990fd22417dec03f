// A/B of two builds of the avx512bf16 linear (run_A: a git ref, run_B: the working tree) in one process: M = 1 and
// M = 11 over bf16 weights rotating past 256 MiB (DRAM), T threads splitting N at multiples of 4. Prints the best of
// 4 of wall time and of the slowest thread's CPU time (the figure that survives a loaded VM), M11/M1 for each, and a
// streaming-read probe.   harness N K T
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

using RunFn = void (*)(const void*, int64_t, const void*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
extern "C" void run_A(const void*, int64_t, const void*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
extern "C" void run_B(const void*, int64_t, const void*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
static double now(clockid_t c) {
  timespec t;
  clock_gettime(c, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(int argc, char** argv) {
  if (argc < 4) return std::fprintf(stderr, "usage: harness N K T\n"), 2;
  const int64_t N = atol(argv[1]), K = atol(argv[2]);
  const int T = atoi(argv[3]);
  const int64_t per = N * K, copies = std::max<int64_t>(2, (int64_t(256) << 20) / (per * 2));
  std::vector<uint16_t> w(per * copies), x(32 * K, 0x3f00);
  for (size_t i = 0; i < w.size(); ++i) w[i] = uint16_t(0x3f80 ^ ((i * 2654435761u >> 20) & 0x7f));
  std::vector<float> y(32 * N);
  auto probe = [&]() {
    const double t0 = now(CLOCK_MONOTONIC);
    uint64_t s = 0;
#pragma omp parallel for num_threads(T) reduction(+ : s)
    for (size_t i = 0; i < w.size(); i += 32) s += w[i];
    const double t = now(CLOCK_MONOTONIC) - t0;
    if (s == 1) std::puts("");
    return w.size() * 2 / t / 1e9;
  };
  const RunFn fns[2] = {run_A, run_B};
  for (int impl = 0; impl < 2; ++impl) {
    double m1w = 0, m1c = 0;
    for (int M : {1, 11}) {
      double bestw = 1e9, bestc = 1e9;
      for (int rep = 0; rep < 4; ++rep) {
        double tw = now(CLOCK_MONOTONIC), tc = 0;
#pragma omp parallel num_threads(T) reduction(max : tc)
        {
          const int t = omp_get_thread_num();
          const int64_t share = ((N / T + 3) / 4) * 4, n0 = std::min(N, t * share), n1 = std::min(N, (t + 1) * share);
          const double c0 = now(CLOCK_THREAD_CPUTIME_ID);
          for (int64_t c = 0; c < copies; ++c) fns[impl](x.data(), K, w.data() + c * per, y.data(), M, N, K, n0, n1);
          tc = now(CLOCK_THREAD_CPUTIME_ID) - c0;
        }
        tw = now(CLOCK_MONOTONIC) - tw;
        bestw = std::min(bestw, tw / copies);
        bestc = std::min(bestc, tc / copies);
      }
      std::printf("%s N=%ld K=%ld T=%d M=%2d wall %8.1f us (%5.1f GB/s) cpu %8.1f us", impl ? "B" : "A", long(N),
                  long(K), T, M, bestw * 1e6, per * 2 / bestw / 1e9, bestc * 1e6);
      if (M == 1) m1w = bestw, m1c = bestc;
      else std::printf("  M11/M1 wall %.2f cpu %.2f", bestw / m1w, bestc / m1c);
      std::printf("   read probe %.1f GB/s\n", probe());
    }
  }
}
