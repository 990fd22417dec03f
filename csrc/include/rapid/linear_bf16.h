// Batch-invariant small-M linear for bf16 weights on the CPU's bf16 dot-product units. Framework-free.
//
// Two paths, each picked once per machine (cpu_isa.h), each batch invariant bit for bit:
//   amx         AMX-BF16 tiles. The weights are the A operand, loaded straight from their [N, K] rows
//               (16 rows x 32 k per tile), x is the B operand packed once per call into VNNI pairs, and C is
//               a 16 (weight rows) x 16 (x rows) fp32 tile. Every C element is its own chain of fp32 sums over
//               32-k steps in K order, so row m's bits never depend on the other rows or on M.
//   avx512bf16  vdpbf16ps, one instruction per 32 k per output: blocks of 4 x 6 or 2 x 12 (weight rows x x rows)
//               (weights in registers, x from L1), lane-wise pair sums, then a fixed horizontal reduction tree.
// Both multiply bf16 values exactly (a bf16 x bf16 product fits fp32) and accumulate in fp32.
#pragma once
#include <cstdint>
#include <cstring>

#include "rapid/cpu_isa.h"
#include "rapid/linear.h"
#if RAPID_X86
#include <immintrin.h>
#endif

namespace rapid {
namespace linear {
namespace bf16dot {

constexpr int kStepK = 32;  // k per AMX step: 16 pairs
constexpr int kRows = 16;   // weight rows per A tile and x rows per B tile

inline int64_t steps_k(int64_t K) { return (K + kStepK - 1) / kStepK; }
// x packed for AMX: [m_blocks][steps][16 pairs][16 x rows] of uint32 (a bf16 pair); zero past M and K.
inline int64_t packed_x_words(int64_t M, int64_t K) { return ((M + kRows - 1) / kRows) * steps_k(K) * kRows * kRows; }

inline void pack_x(const Bf16* x, int64_t ldx, int64_t M, int64_t K, uint32_t* out) {
  const int64_t S = steps_k(K), mblocks = (M + kRows - 1) / kRows;
  std::memset(out, 0, sizeof(uint32_t) * mblocks * S * kRows * kRows);
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(x + m * ldx);
    uint32_t* blk = out + (m / kRows) * S * kRows * kRows + (m % kRows);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = k / kStepK, pair = (k % kStepK) / 2;
      uint32_t& slot = blk[(s * kRows + pair) * kRows];
      slot |= uint32_t(row[k]) << (16 * (k & 1));
    }
  }
}

#if RAPID_X86
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile is 16 rows x 64 bytes: C as 16 x 16 fp32, A as 16 x 32 bf16, B as 16 pairs x 16 columns.
RAPID_TARGET_AMX inline void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = kRows;
  }
  _tile_loadconfig(&cfg);
}

// Where A tile (weight rows nb..nb+16, k-step s) comes from: straight from w when the block is whole, else a
// zero-padded copy (N or K tail), so nothing past a row's end is read and padding multiplies as 0.
struct ATile {
  const void* ptr;
  int64_t stride;
};
inline ATile a_tile(const Bf16* w, int64_t N, int64_t K, int64_t nb, int64_t s, Bf16* pad) {
  const int64_t k0 = s * kStepK, kt = K - k0 < kStepK ? K - k0 : kStepK, nt = N - nb < kRows ? N - nb : kRows;
  if (kt == kStepK && nt == kRows) return {w + nb * K + k0, K * int64_t(sizeof(Bf16))};
  std::memset(static_cast<void*>(pad), 0, kRows * kStepK * sizeof(Bf16));
  for (int64_t r = 0; r < (nt > 0 ? nt : 0); ++r)
    std::memcpy(static_cast<void*>(pad + r * kStepK), w + (nb + r) * K + k0, kt * sizeof(Bf16));
  return {pad, kStepK * int64_t(sizeof(Bf16))};
}

// Writes C tile (rows: weight rows nb.., columns: x rows mb..) into y [M, N] with the bias.
inline void store_c(const float* c, const Bf16* bias, float* y, int64_t M, int64_t N, int64_t n1, int64_t nb,
                    int64_t mb) {
  for (int64_t r = 0; r < kRows && nb + r < n1; ++r) {
    const float b = bias ? to_float(bias[nb + r]) : 0.f;
    for (int64_t col = 0; col < kRows && mb + col < M; ++col) y[(mb + col) * N + nb + r] = c[r * kRows + col] + b;
  }
}

// Outputs for weight rows [n0, n1) (n0 a multiple of 16) and all M rows; xpack from pack_x. Caller has called
// configure_tiles() on this thread and calls _tile_release() after. Tiles: C 0/1 (x blocks 0/1), A 4/5, B 6/7.
RAPID_TARGET_AMX inline void rows_amx(const uint32_t* xpack, const Bf16* w, const Bf16* bias, float* y, int64_t M,
                                      int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t S = steps_k(K), block_words = S * kRows * kRows;
  alignas(64) Bf16 pad[2][kRows * kStepK];
  alignas(64) float cbuf[kRows * kRows];
  for (int64_t m0 = 0; m0 < M; m0 += 2 * kRows) {
    const uint32_t* xb0 = xpack + (m0 / kRows) * block_words;
    const bool two = M - m0 > kRows;  // a second x block: C in tile 1, B in tile 7
    const uint32_t* xb1 = two ? xb0 + block_words : xb0;
    // One 16-row weight block walks all of K: 16 read streams, which the hardware prefetcher follows (explicit
    // prefetches, or 4 blocks = 64 streams per pass, measured 10-20% slower at M = 1 on one thread).
    for (int64_t nb = n0; nb < n1; nb += kRows) {
      _tile_zero(0);
      _tile_zero(1);
      for (int64_t s = 0; s < S; s += 2) {  // two steps per trip so A alternates between tiles 4 and 5
        ATile a = a_tile(w, n1, K, nb, s, pad[0]);
        _tile_loadd(4, a.ptr, a.stride);
        _tile_loadd(6, xb0 + s * kRows * kRows, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two) {
          _tile_loadd(7, xb1 + s * kRows * kRows, 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (s + 1 == S) break;
        a = a_tile(w, n1, K, nb, s + 1, pad[1]);
        _tile_loadd(5, a.ptr, a.stride);
        _tile_loadd(6, xb0 + (s + 1) * kRows * kRows, 64);
        _tile_dpbf16ps(0, 5, 6);
        if (two) {
          _tile_loadd(7, xb1 + (s + 1) * kRows * kRows, 64);
          _tile_dpbf16ps(1, 5, 7);
        }
      }
      _tile_stored(0, cbuf, 64);
      store_c(cbuf, bias, y, M, N, n1, nb, m0);
      if (two) {
        _tile_stored(1, cbuf, 64);
        store_c(cbuf, bias, y, M, N, n1, nb, m0 + kRows);
      }
    }
  }
}

// One thread's share: configure this thread's tiles, run, release them (tile state is per thread).
RAPID_TARGET_AMX inline void rows_amx_thread(const uint32_t* xpack, const Bf16* w, const Bf16* bias, float* y,
                                             int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  configure_tiles();
  rows_amx(xpack, w, bias, y, M, N, K, n0, n1);
  _tile_release();
}

// avx512bf16: a block of R weight rows x G x rows, one vdpbf16ps chain per output over 32-k steps in K order (the
// weight vector sits in a register, x comes from L1 as the memory operand: R*G accumulators + R weights <= 32 zmm).
// The G-row groups re-read the block's weights from L1/L2, never from memory. Lanes are reduced 16 outputs at a time
// by a transposing tree whose per-output order is _mm512_reduce_add_ps's (lane i + i+8, then i+4, then i+2, i+1),
// so every output's bits are one fixed function of its own x row and weight row: independent of R, G and M.
RAPID_TARGET_AVX512 inline __m512 sum16_step(__m512 a, __m512 b, int stage) {
  switch (stage) {
    case 0:  // 256-bit halves: [a.q0 a.q1 b.q0 b.q1] + [a.q2 a.q3 b.q2 b.q3]
      return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    case 1:  // 128-bit quarters: [a.q0 a.q2 b.q0 b.q2] + [a.q1 a.q3 b.q1 b.q3]
      return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
    case 2:  // in each quarter: [a0 a1 b0 b1] + [a2 a3 b2 b3]
      return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE));
    default:  // in each quarter: [a0 a2 b0 b2] + [a1 a3 b1 b3]
      return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD));
  }
}
// v[0..15] -> out[0..15] = horizontal sums; lane 4q + t of the final vector holds input q + 4t.
RAPID_TARGET_AVX512 inline void sum16(__m512 (&v)[16], float* out) {
  for (int stage = 0, n = 16; stage < 4; ++stage, n /= 2)
    for (int i = 0; i < n / 2; ++i) v[i] = sum16_step(v[2 * i], v[2 * i + 1], stage);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v[0]);
  for (int i = 0; i < 16; ++i) out[i] = lanes[4 * (i % 4) + i / 4];
}

// Weight rows n0..n0+R (all whole) against x rows m0..m0+G. Main steps unmasked; the K tail masks both operands.
template <int R, int G>
RAPID_TARGET_AVX512 inline void block_dpbf16(const Bf16* x, int64_t ldx, const Bf16* w, const Bf16* bias, float* y,
                                             int64_t N, int64_t K, int64_t m0, int64_t n0, bool prefetch) {
  __m512 acc[R * G];
  for (int i = 0; i < R * G; ++i) acc[i] = _mm512_setzero_ps();
  const Bf16* wr = w + n0 * K;
  const Bf16* xr = x + m0 * ldx;
  const int64_t kmain = K & ~int64_t(31);
  int64_t k = 0;
  for (; k < kmain; k += 32) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) {
      if (prefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(wr + r * K + k) + 1024, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wr + (R + r) * K + k), _MM_HINT_T1);
      }
      wv[r] = (__m512bh)_mm512_loadu_si512(wr + r * K + k);
    }
    for (int g = 0; g < G; ++g) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xr + g * ldx + k);
      for (int r = 0; r < R; ++r) acc[r * G + g] = _mm512_dpbf16_ps(acc[r * G + g], wv[r], xv);
    }
  }
  if (k < K) {
    const __mmask32 mask = __mmask32((1u << (K - k)) - 1);
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, wr + r * K + k);
    for (int g = 0; g < G; ++g) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, xr + g * ldx + k);
      for (int r = 0; r < R; ++r) acc[r * G + g] = _mm512_dpbf16_ps(acc[r * G + g], wv[r], xv);
    }
  }
  for (int c = 0; c < R * G; c += 16) {
    __m512 v[16];
    for (int i = 0; i < 16; ++i) v[i] = c + i < R * G ? acc[c + i] : _mm512_setzero_ps();
    alignas(64) float s[16];
    sum16(v, s);
    for (int i = 0; i < 16 && c + i < R * G; ++i) {
      const int r = (c + i) / G, g = (c + i) % G;
      y[(m0 + g) * N + n0 + r] = s[i] + (bias ? to_float(bias[n0 + r]) : 0.f);
    }
  }
}

// Dispatch a group of g (1..MaxG) x rows to block_dpbf16<R, g>.
template <int R, int G>
RAPID_TARGET_AVX512 inline void group_dpbf16(int g, const Bf16* x, int64_t ldx, const Bf16* w, const Bf16* bias,
                                             float* y, int64_t N, int64_t K, int64_t m, int64_t n, bool pf) {
  if constexpr (G > 1) {
    if (g < G) return group_dpbf16<R, G - 1>(g, x, ldx, w, bias, y, N, K, m, n, pf);
  }
  block_dpbf16<R, G>(x, ldx, w, bias, y, N, K, m, n, pf);
}

// Blocks: R weight rows x groups of at most G x rows; R * G accumulators + R weight vectors <= 32 zmm. M <= 6 runs
// 4 x 6 (4 read streams, one pass); larger M runs 2 x 12, so M <= 12 is still one pass over the weights (M = 11:
// 12% less CPU time than 4 x (6 + 5) on a Sapphire Rapids proxy, whose second pass left memory idle).
template <int R, int G>
RAPID_TARGET_AVX512 inline void groups_dpbf16(const Bf16* x, int64_t ldx, const Bf16* w, const Bf16* bias, float* y,
                                              int64_t M, int64_t N, int64_t K, int64_t n) {
  // Balanced groups (M = 13 -> 7 + 6); the first pass prefetches, later ones re-read the block from L1/L2.
  const int64_t ngroups = (M + G - 1) / G;
  int64_t m = 0;
  for (int64_t gi = 0; gi < ngroups; ++gi) {
    const int g = int((M - m) / (ngroups - gi));
    group_dpbf16<R, G>(g, x, ldx, w, bias, y, N, K, m, n, gi == 0);
    m += g;
  }
}

template <int R, int G>
RAPID_TARGET_AVX512 inline void rows_dpbf16_rg(const Bf16* x, int64_t ldx, const Bf16* w, const Bf16* bias, float* y,
                                               int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) groups_dpbf16<R, G>(x, ldx, w, bias, y, M, N, K, n);
  for (; n < n1; ++n) groups_dpbf16<1, G>(x, ldx, w, bias, y, M, N, K, n);  // N tail: one row at a time
}

// Weight rows [n0, n1), all M x rows. Every output's arithmetic is the same whichever blocking runs it.
RAPID_TARGET_AVX512 inline void rows_dpbf16(const Bf16* x, int64_t ldx, const Bf16* w, const Bf16* bias, float* y,
                                            int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  if (M <= 6)
    rows_dpbf16_rg<4, 6>(x, ldx, w, bias, y, M, N, K, n0, n1);
  else
    rows_dpbf16_rg<2, 12>(x, ldx, w, bias, y, M, N, K, n0, n1);
}
#pragma GCC diagnostic pop
#endif  // RAPID_X86

}  // namespace bf16dot
}  // namespace linear
}  // namespace rapid
