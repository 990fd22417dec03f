// One build of the avx512bf16 small-M linear (rapid/linear_bf16.h rows_dpbf16) behind a plain C symbol RUN.
// ab.sh compiles it twice (a git ref's header with -Drapid=rapid_A, and the working tree's).
#include "rapid/linear_bf16.h"
extern "C" void RUN(const void* x, int64_t ldx, const void* w, float* y, int64_t M, int64_t N, int64_t K, int64_t n0,
                    int64_t n1) {
  using rapid::linear::Bf16;
  rapid::linear::bf16dot::rows_dpbf16(static_cast<const Bf16*>(x), ldx, static_cast<const Bf16*>(w), nullptr, y, M, N,
                                      K, n0, n1);
}
