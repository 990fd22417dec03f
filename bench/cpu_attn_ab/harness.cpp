// Round-robin A/B of two builds of the CPU verify_attention header (run_A: baseline, run_B: variant) in one
// process, so both see the same machine state; prints each case's median time and the median of B/A.
//   harness SPEC...   SPEC = q_heads,kv_heads,D,S,n_query,fmt[,resident]
//   fmt: 0 fp32, 1 bf16, 2 fp16, 3 int8, 4 fp8, 5 int4; resident=1 reuses one cache (cache-resident, compute),
//   else caches rotate past 384 MiB (DRAM). Wall time; OMP_NUM_THREADS sets the threads.
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

using RunFn = void (*)(int, int, int, int, int, int, const float*, float*, const uint8_t*, const uint8_t*,
                       const float*, const uint16_t*, const uint16_t*, int64_t);
extern "C" void run_A(int, int, int, int, int, int, const float*, float*, const uint8_t*, const uint8_t*,
                      const float*, const uint16_t*, const uint16_t*, int64_t);
extern "C" void run_B(int, int, int, int, int, int, const float*, float*, const uint8_t*, const uint8_t*,
                      const float*, const uint16_t*, const uint16_t*, int64_t);

static double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

struct Case {
  int qh = 0, kvh = 0, D = 0, S = 0, nq = 0, fmt = 0, resident = 0, n = 1, it = 0;
  int64_t row_bytes = 0, bytes = 0;  // bytes: K + V (+ scales) of one cache
  std::vector<std::vector<uint8_t>> k, v;
  std::vector<float> scale, q, out;
  std::vector<uint16_t> gscale, gzero;
  std::vector<double> ta, tb, ratio;
};

static double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s q_heads,kv_heads,D,S,n_query,fmt[,resident] ...\n", argv[0]);
    return 2;
  }
  std::mt19937 rng(1);
  std::vector<Case> cases(argc - 1);
  for (int a = 1; a < argc; ++a) {
    Case& c = cases[a - 1];
    if (std::sscanf(argv[a], "%d,%d,%d,%d,%d,%d,%d", &c.qh, &c.kvh, &c.D, &c.S, &c.nq, &c.fmt, &c.resident) < 6 ||
        c.fmt < 0 || c.fmt > 5 || c.D % 16 || c.qh % c.kvh || c.S < c.nq) {
      std::fprintf(stderr, "bad spec %s\n", argv[a]);
      return 2;
    }
    const int elem = c.fmt == 0 ? 4 : c.fmt <= 2 ? 2 : 1;
    c.row_bytes = c.fmt == 5 ? c.D / 2 : int64_t(c.D) * elem;
    const int64_t data = int64_t(c.kvh) * c.S * c.row_bytes;
    const int ng = c.D / (c.D % 32 == 0 ? 32 : 16);
    const int64_t aux = c.fmt == 5 ? int64_t(c.kvh) * c.S * ng * 4 : (c.fmt == 3 || c.fmt == 4) ? int64_t(c.kvh) * c.S * 4 : 0;
    c.bytes = 2 * (data + aux);
    c.n = c.resident ? 1 : int((384ll << 20) / c.bytes + 1);
    c.k.resize(c.n), c.v.resize(c.n);
    for (int i = 0; i < c.n; ++i) {
      c.k[i].resize(data), c.v[i].resize(data);
      for (int64_t j = 0; j < data; ++j) c.k[i][j] = rng() & 0xFF, c.v[i][j] = rng() & 0xFF;
      if (c.fmt == 1 || c.fmt == 2)  // keep bf16/fp16 values finite and O(1): high byte of every element
        for (int64_t j = 1; j < data; j += 2) c.k[i][j] = 0x3F, c.v[i][j] = 0x3B;
      if (c.fmt == 0)
        for (int64_t j = 3; j < data; j += 4) c.k[i][j] = 0x3F, c.v[i][j] = 0x3E;
    }
    c.scale.assign(size_t(c.kvh) * c.S, 0.01f);
    c.gscale.assign(size_t(c.kvh) * c.S * ng, 0x2000), c.gzero.assign(c.gscale.size(), 0xA000);  // 2^-7, -2^-7
    c.q.resize(size_t(c.nq) * c.qh * c.D), c.out.resize(c.q.size());
    for (float& x : c.q) x = (rng() % 1000) / 500.f - 1.f;
  }
  auto call = [](Case& c, RunFn f) {
    f(c.qh, c.kvh, c.D, c.S, c.nq, c.fmt, c.q.data(), c.out.data(), c.k[c.it % c.n].data(), c.v[c.it % c.n].data(),
      c.scale.data(), c.gscale.data(), c.gzero.data(), c.row_bytes);
    ++c.it;
  };
  auto timed = [&](Case& c, RunFn f, int reps) {
    const double t0 = now();
    for (int r = 0; r < reps; ++r) call(c, f);
    return (now() - t0) / reps;
  };
  for (Case& c : cases) call(c, run_A), call(c, run_B);
  for (int round = 0; round < 9; ++round)
    for (Case& c : cases) {
      const int reps = std::max(2, int(2e8 / c.bytes));
      const double a = timed(c, run_A, reps), b = timed(c, run_B, reps);
      c.ta.push_back(a), c.tb.push_back(b), c.ratio.push_back(b / a);
    }
  std::printf("%-26s %10s %10s %8s %10s\n", "case", "A ms", "B ms", "B/A", "A GB/s");
  for (int i = 0; i < int(cases.size()); ++i) {
    Case& c = cases[i];
    std::printf("%-26s %10.3f %10.3f %8.3f %10.2f\n", argv[i + 1], median(c.ta) * 1e3, median(c.tb) * 1e3,
                median(c.ratio), c.bytes / median(c.ta) / 1e9);
  }
  return 0;
}
