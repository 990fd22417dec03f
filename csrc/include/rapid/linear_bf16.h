// Batch-invariant small-M linear for bf16 weights on the CPU's bf16 dot-product units. Framework-free.
//
// Two paths, each picked once per machine (cpu_isa.h), each batch invariant bit for bit:
//   amx         AMX-BF16 tiles. The weights are the A operand, loaded straight from their [N, K] rows
//               (16 rows x 32 k per tile), x is the B operand packed once per call into VNNI pairs, and C is
//               a 16 (weight rows) x 16 (x rows) fp32 tile. Every C element is its own chain of fp32 sums over
//               32-k steps in K order, so row m's bits never depend on the other rows or on M.
//   avx512bf16  vdpbf16ps on 4 x 4 tiles (as linear.h's FMA path): one instruction per 32 k per output
//               instead of two widens and two FMAs; lane-wise pair sums, then a fixed horizontal reduction.
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

// avx512bf16: one 4 x 4 tile of outputs, vdpbf16ps over 32 k per instruction; masked tails load zeros.
RAPID_TARGET_AVX512 inline void tile_dpbf16(const Bf16* x, int64_t ldx, const Bf16* w, const Bf16* bias, float* y,
                                            int64_t N, int64_t K, int64_t m0, int mt, int64_t n0, int nt) {
  __m512 acc[kTileM][kTileN];
  for (int i = 0; i < kTileM; ++i)
    for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_setzero_ps();
  const Bf16* wr[kTileN];
  const Bf16* xr[kTileM];
  for (int j = 0; j < kTileN; ++j) wr[j] = w + (n0 + (j < nt ? j : 0)) * K;
  for (int i = 0; i < kTileM; ++i) xr[i] = x + (m0 + (i < mt ? i : 0)) * ldx;
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << (K - k)) - 1);
    __m512bh wv[kTileN];
    for (int j = 0; j < kTileN; ++j) {
      prefetch_weights(wr[j], k, K);
      wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, wr[j] + k);
    }
    for (int i = 0; i < kTileM; ++i) {
      if (i >= mt) break;
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, xr[i] + k);
      for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < mt; ++i)
    for (int j = 0; j < nt; ++j)
      y[(m0 + i) * N + n0 + j] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? to_float(bias[n0 + j]) : 0.f);
}

inline void rows_dpbf16(const Bf16* x, int64_t ldx, const Bf16* w, const Bf16* bias, float* y, int64_t M, int64_t N,
                        int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += kTileN) {
    const int nt = int(n1 - n < kTileN ? n1 - n : kTileN);
    for (int64_t m = 0; m < M; m += kTileM)
      tile_dpbf16(x, ldx, w, bias, y, N, K, m, int(M - m < kTileM ? M - m : kTileM), n, nt);
  }
}
#pragma GCC diagnostic pop
#endif  // RAPID_X86

}  // namespace bf16dot
}  // namespace linear
}  // namespace rapid
