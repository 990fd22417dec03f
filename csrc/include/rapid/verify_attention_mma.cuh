// Verification attention on tensor cores (bf16 / fp16 queries, head_dim 64 or 128): split-KV
// flash-decoding where Q.K^T and P.V are mma.sync.m16n8k16 with fp32 accumulation.
//
// Grid (m_tiles * n_split, 1, batch * kv_head), 4 warps. A block owns one m16 tile of the packed
// n_query x group rows of one KV head (row r = query r / group, q head kv_head * group + r % group)
// and one split of keys; warp w takes the 16-key steps w, w + 4, ... of the split, keeps its own
// online softmax state in registers, and the 4 warps merge through shared memory at the end. No
// __syncthreads in the key loop: each warp streams K and V straight from global memory into
// mma fragments (16-byte loads, dequantized in registers), several loads in flight per thread.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4):
//   A 16x16: reg0 (row g, k 2t..2t+1), reg1 (row g+8, same k), reg2 (row g, k 2t+8..), reg3 (row g+8, ..)
//   B 16x8:  reg0 (k 2t..2t+1, col g), reg1 (k 2t+8..2t+9, col g)
//   C 16x8:  c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, same cols)
// A sum over d does not care about the order of d, so for Q.K^T each thread feeds the mma the
// elements of its key row that it loads contiguously: thread t owns the 16-byte vectors t, t+4, ...
// of the row, and the k index (step j, position 4j..4j+3 of the thread's elements) maps to the same
// d in Q's A fragment. For P.V the output columns are permuted the same way (thread g owns vectors
// g, g+8, ... of each V row; n-tile nt = the thread's element nt) and unpermuted on the way out.
// The C fragment of S (two n8 tiles = 16 keys) is the A fragment of P, FlashAttention-2 style.
#pragma once
#include <cstring>
#include <type_traits>

#include "rapid/verify_attention.cuh"

namespace rapid {
namespace cuda {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = 32 * kMmaWarps;
constexpr int kMmaRows = 16;  // one m16 tile per block
constexpr int kMmaKeys = 16;  // keys per warp step: two n8 tiles of S = one k16 step of P.V

__host__ __device__ constexpr bool mma_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

template <typename MT>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same<MT, __nv_bfloat16>::value) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&r, &v, 4);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&r, &v, 4);
  }
  return r;
}

// c += a * b, 16x8x16, fp32 accumulators.
template <typename MT>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<MT, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <> struct VecType<4> { using T = uint32_t; };

// q[i], q[i + 1] as one MT pair. q's dtype is MT here, so the raw 16-bit values pass through exactly;
// the loads are unconditional (callers point padding rows at a valid element and zero them after), so
// all of a thread's q loads are in flight at once.
__device__ __forceinline__ uint32_t load_q_pair(const unsigned short* q, int64_t i) {
  return (uint32_t)q[i] | ((uint32_t)q[i + 1] << 16);
}

// How one thread reads its share of a key row: vectors of VB bytes holding EV values each;
// `lanes` threads share a row (4 for K, 8 for V), so each thread reads NV = D / (lanes * EV) vectors.
template <KvFormat F, int D, int kLanes>
struct RowSplit {
  static constexpr int VB = row_bytes(F, D) / kLanes < 16 ? row_bytes(F, D) / kLanes : 16;
  static constexpr int EV = F == KvFormat::kInt4 ? 2 * VB : VB / (int)sizeof(typename KvStorage<F>::T);
  static constexpr int NV = D / (kLanes * EV);
  static constexpr int kValues = NV * EV;  // = D / kLanes
  // d of the thread's value e (thread index `who` among the row's lanes)
  __device__ static constexpr int dim(int who, int e) { return (kLanes * (e / EV) + who) * EV + e % EV; }
  static_assert(NV * kLanes * EV == D && EV % 4 == 0, "head_dim must split evenly into vectors");
};

// int8 / int4 codes to fp32 without the slow integer convert: 2^23 + c has c in its low mantissa bits.
__device__ __forceinline__ float small_uint_to_float(uint32_t c) { return __uint_as_float(0x4B000000u | c) - 8388608.f; }

// int8 / int4 / fp8: the values of one vector of VB bytes from its scale s and zero z (int4: one group
// covers the vector). kScaled = false: int8 / fp8 codes unscaled (the caller applies the token scale to
// scores or probabilities instead).
template <KvFormat F, int VB, bool kScaled = true>
__device__ __forceinline__ void dequant_codes(const typename VecType<VB>::T& raw, float s, float z, float* dst) {
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(&raw);
  if constexpr (F == KvFormat::kInt8) {
#pragma unroll
    for (int i = 0; i < VB; ++i) {  // 2^23 + (v + 128) - (2^23 + 128) = v, exactly, in one add
      const float v = __uint_as_float(0x4B000000u | (bytes[i] ^ 0x80u)) - 8388736.f;
      dst[i] = kScaled ? v * s : v;
    }
  } else if constexpr (F == KvFormat::kFp8) {
#pragma unroll
    for (int i = 0; i < VB; ++i) dst[i] = kScaled ? e4m3_to_float(bytes[i]) * s : e4m3_to_float(bytes[i]);
  } else {
    static_assert(F == KvFormat::kInt4, "dequant_codes: int8, int4 or fp8");
#pragma unroll
    for (int i = 0; i < VB; ++i) {
      dst[2 * i] = fmaf(small_uint_to_float(bytes[i] & 0xFu), s, z);
      dst[2 * i + 1] = fmaf(small_uint_to_float(bytes[i] >> 4), s, z);
    }
  }
}

// The EV values of one vector of a key row, dequantized to fp32 (e0 = the vector's first d).
template <KvFormat F, int D, int VB>
__device__ __forceinline__ void dequant_vec(const typename VecType<VB>::T& raw, int e0, const void* scale_row,
                                            const void* zero_row, float* dst) {
  if constexpr (F == KvFormat::kInt8 || F == KvFormat::kFp8) {
    dequant_codes<F, VB>(raw, *static_cast<const float*>(scale_row), 0.f, dst);
  } else if constexpr (F == KvFormat::kInt4) {  // one group of G >= EV values covers the whole vector
    const int grp = e0 / int4_group(D);
    dequant_codes<F, VB>(raw, __half2float(static_cast<const __half*>(scale_row)[grp]),
                         __half2float(static_cast<const __half*>(zero_row)[grp]), dst);
  } else {
    dequant_vector<F, D, VB>(raw, e0, scale_row, zero_row, dst);
  }
}

// Scale / zero rows of key `key` (nullptr for plain formats).
template <KvFormat F>
__device__ __forceinline__ void scale_rows(const VerifyParams& p, bool is_v, int b, int h, int key, const void** srow,
                                           const void** zrow) {
  const Strides3& ss = is_v ? p.vs_s : p.ks_s;
  const int64_t soff = b * ss.b + h * ss.h + (int64_t)key * ss.t;
  if constexpr (F == KvFormat::kInt8 || F == KvFormat::kFp8) {
    *srow = static_cast<const float*>(is_v ? p.v_scale : p.k_scale) + soff;
  } else if constexpr (F == KvFormat::kInt4) {
    *srow = static_cast<const __half*>(is_v ? p.v_scale : p.k_scale) + soff;
    *zrow = static_cast<const __half*>(is_v ? p.v_zero : p.k_zero) + soff;
  }
}

// The thread's D / kLanes values of one key row, in its element order, as MT pairs (pairs[i] holds
// elements 2i, 2i+1). bf16 KV with bf16 queries (fp16 with fp16) passes the raw bits through.
template <KvFormat F, int D, typename MT, int kLanes>
__device__ __forceinline__ void load_row_pairs(const VerifyParams& p, bool is_v, int b, int h, int key, int who,
                                               uint32_t (&pairs)[D / kLanes / 2]) {
  using RS = RowSplit<F, D, kLanes>;
  using V = typename VecType<RS::VB>::T;
  using T = typename KvStorage<F>::T;
  const Strides3& ds = is_v ? p.v_s : p.k_s;
  const unsigned char* row = reinterpret_cast<const unsigned char*>(
      static_cast<const T*>(is_v ? p.v : p.k) + b * ds.b + h * ds.h + (int64_t)key * ds.t);
  const void* srow = nullptr;
  const void* zrow = nullptr;
  scale_rows<F>(p, is_v, b, h, key, &srow, &zrow);
  V raw[RS::NV];
#pragma unroll
  for (int i = 0; i < RS::NV; ++i)  // every load issued before any use
    raw[i] = *reinterpret_cast<const V*>(row + (kLanes * i + who) * RS::VB);
  constexpr bool kRaw = (F == KvFormat::kBF16 && std::is_same<MT, __nv_bfloat16>::value) ||
                        (F == KvFormat::kF16 && std::is_same<MT, __half>::value);
#pragma unroll
  for (int i = 0; i < RS::NV; ++i) {
    if constexpr (kRaw) {
      const uint32_t* w = reinterpret_cast<const uint32_t*>(&raw[i]);
#pragma unroll
      for (int j = 0; j < RS::EV / 2; ++j) pairs[i * RS::EV / 2 + j] = w[j];
    } else {
      float f[RS::EV];
      dequant_vec<F, D, RS::VB>(raw[i], RS::dim(who, i * RS::EV), srow, zrow, f);
#pragma unroll
      for (int j = 0; j < RS::EV / 2; ++j) pairs[i * RS::EV / 2 + j] = pack2<MT>(f[2 * j], f[2 * j + 1]);
    }
  }
}

// 16-bit half `hi` (0 or 1) of two words -> one MT pair (lo from a, hi from b).
__device__ __forceinline__ uint32_t pair_of_halves(uint32_t a, uint32_t b, int hi) {
  return __byte_perm(a, b, hi ? 0x7632 : 0x5410);
}

template <KvFormat F, int D, typename MT>
__global__ void __launch_bounds__(kMmaThreads) verify_mma_kernel(VerifyParams p) {
  using KS = RowSplit<F, D, 4>;  // K rows: 4 threads (t) per key
  using VS = RowSplit<F, D, 8>;  // V rows: 8 threads (g) per key
  constexpr int kSteps = D / 16;  // k16 steps of Q.K^T
  constexpr int kNt = D / 8;      // n8 tiles of P.V
  __shared__ float o_s[kMmaWarps][kMmaRows][D];
  __shared__ float m_s[kMmaWarps][kMmaRows];
  __shared__ float l_s[kMmaWarps][kMmaRows];

  const int n_mt = (p.rows + kMmaRows - 1) / kMmaRows;
  const int mt = blockIdx.x % n_mt, split = blockIdx.x / n_mt;
  const int b = blockIdx.z / p.kv_heads, h = blockIdx.z % p.kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int row0 = mt * kMmaRows;
  const int rows_here = min(kMmaRows, p.rows - row0);
  const int kv_len = max(0, min(p.seqlens[b], p.s_max));  // launcher checks; clamp so nothing reads past S_max
  const int lo = split * p.split_size;
  const int split_end = min(lo + p.split_size, kv_len);
  const int hi = min(split_end, kv_len - p.n_query + (row0 + rows_here - 1) / p.group + 1);
  if (lo >= hi) return;  // block-uniform: no row of this tile sees a key of this split (the merge skips it)

  // This thread's two rows (g, g + 8): last visible key (-1 = padding row) and Q as A fragments.
  int limit[2];
  uint32_t qa[kSteps][4];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int r = row0 + g + 8 * rr;
    const bool ok = g + 8 * rr < rows_here;
    limit[rr] = ok ? kv_len - p.n_query + r / p.group : -1;
    const int64_t qoff = ok ? b * p.q_sb + (r / p.group) * p.q_sn + (h * p.group + r % p.group) * p.q_sh : 0;
    const unsigned short* q16 = static_cast<const unsigned short*>(p.q);
    const uint32_t keep = ok ? 0xffffffffu : 0u;  // padding rows: +0.0
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      const int d0 = KS::dim(t, 4 * j);  // the thread's K values 4j .. 4j+3 are d0 .. d0+3
      qa[j][rr] = load_q_pair(q16, qoff + d0) & keep;          // reg0 / reg1: k 2t, 2t+1
      qa[j][2 + rr] = load_q_pair(q16, qoff + d0 + 2) & keep;  // reg2 / reg3: k 2t+8, 2t+9
    }
  }

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float oacc[kNt][4];
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) oacc[nt][0] = oacc[nt][1] = oacc[nt][2] = oacc[nt][3] = 0.f;

  for (int tile = lo + kMmaKeys * warp; tile < hi; tile += kMmaKeys * kMmaWarps) {
    // Keys past `hi` read key hi - 1 instead (in bounds) and are masked out below.
    uint32_t kp[2][D / 8];  // keys tile + g and tile + 8 + g, this thread's quarter of each row
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) load_row_pairs<F, D, MT, 4>(p, false, b, h, min(tile + 8 * nt + g, hi - 1), t, kp[nt]);
    uint32_t vp[4][D / 16];  // keys tile + {2t, 2t+1, 2t+8, 2t+9}, this thread's eighth of each row
#pragma unroll
    for (int c = 0; c < 4; ++c)
      load_row_pairs<F, D, MT, 8>(p, true, b, h, min(tile + 2 * t + (c & 1) + 8 * (c >> 1), hi - 1), g, vp[c]);

    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int j = 0; j < kSteps; ++j) mma16816<MT>(s[nt], qa[j], kp[nt][2 * j], kp[nt][2 * j + 1]);
    }
    // Online softmax in the log2 domain; rows g (c = 0, 1) and g + 8 (c = 2, 3).
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int key = tile + 8 * nt + 2 * t + c;
          const bool visible = key < split_end && key <= limit[rr];
          s[nt][2 * rr + c] = visible ? s[nt][2 * rr + c] * p.qk_scale_log2 : -INFINITY;
          mx = fmaxf(mx, s[nt][2 * rr + c]);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[rr], mx);
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet in this row
      const float alpha = exp2f(m[rr] - m_safe);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          s[nt][2 * rr + c] = exp2f(s[nt][2 * rr + c] - m_safe);
          sum += s[nt][2 * rr + c];
        }
      l[rr] = l[rr] * alpha + sum;  // partial over this thread's columns; reduced once at the end
      m[rr] = m_new;
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) oacc[nt][2 * rr] *= alpha, oacc[nt][2 * rr + 1] *= alpha;
    }
    const uint32_t pa[4] = {pack2<MT>(s[0][0], s[0][1]), pack2<MT>(s[0][2], s[0][3]), pack2<MT>(s[1][0], s[1][1]),
                            pack2<MT>(s[1][2], s[1][3])};
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {  // B: (key 2t, 2t+1 | 2t+8, 2t+9) x value nt of the thread's V share
      const int w = nt / 2, hi16 = nt % 2;
      mma16816<MT>(oacc[nt], pa, pair_of_halves(vp[0][w], vp[1][w], hi16), pair_of_halves(vp[2][w], vp[3][w], hi16));
    }
  }

  // Merge the 4 warps of the block (fixed order) and write this split's normalized partial.
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
    if (t == 0) m_s[warp][g + 8 * rr] = m[rr], l_s[warp][g + 8 * rr] = l[rr];
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) o_s[warp][g + 8 * rr][VS::dim(2 * t + c, nt)] = oacc[nt][2 * rr + c];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows_here * D; i += kMmaThreads) {
    const int rr = i / D, d = i % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) mx = fmaxf(mx, m_s[w][rr]);
    float lsum = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) {
      const float wt = m_s[w][rr] == -INFINITY ? 0.f : exp2f(m_s[w][rr] - mx);
      lsum += l_s[w][rr] * wt;
      acc += o_s[w][rr][d] * wt;
    }
    const int64_t base = (((int64_t)b * p.kv_heads + h) * p.rows + row0 + rr) * p.n_split + split;
    p.part_out[base * D + d] = lsum > 0.f ? acc / lsum : 0.f;
    if (d == 0) p.part_lse[base] = lsum > 0.f ? mx + log2f(lsum) : -INFINITY;
  }
}

}  // namespace cuda
}  // namespace rapid

namespace rapid {
namespace cuda {

// ---- Staged variant: the block loads each KV step once into shared memory for all its rows ----
// Grid (row groups * n_split, 1, batch * kv_head), verify_staged_kernel<..., kWarpsPerTile, kTiles>:
// a block owns kTiles m16 row tiles of one KV head and one split; per step of 64 keys all its threads
// load K and V with 16-byte loads, dequantize once and store them to shared memory as MT; then each
// row tile runs Q.K^T, online softmax and P.V from shared memory:
//   kWarpsPerTile = 1 ("staged", the default: 4 tiles, 128 threads): one warp per tile, all 64 keys;
//   kWarpsPerTile = 4 ("quarters": 1, 2 or 4 tiles): warp w of a tile takes keys 16w..16w+15 of every
//     step with its own softmax state; the 4 states merge lane to lane at the end in a fixed order.
// The KV bytes leave HBM (and are dequantized) once however many drafted tokens share the call; a row's
// keys are always split among warps the same way, whatever kTiles, so its result does not depend on
// n_query. Quarters is a little faster at one query but much slower at 11 (its 512-thread blocks spill), so
// staged is the default and quarters a switch for plain (one-query) decoding (docs/BENCHMARKS.md, H100).
//
// At one query the row warp's chain is the critical path, so the next step's global loads (data and
// scales) are issued right after the step is staged, in flight while the row warps compute, and the row
// warps read K / V fragments with ldmatrix (K) and ldmatrix.trans (V): 64 instructions per step instead
// of 384 16/32-bit shared loads and 128 byte permutes (SASS counts and timings: docs/BENCHMARKS.md, H100).
// kFold (int8 / fp8 with bf16 queries): shared memory holds the unscaled codes (exact in bf16); K's
// per-token scale multiplies the step's scores and V's the probabilities before P.V. Removes a multiply
// per element from the staging loop (int8: codes to bf16 pairs by int8x4_to_bf16x4, no fp32; measured in
// docs/BENCHMARKS.md, H100). fp16 queries keep per-element scaling: p * scale could leave fp16's range.
constexpr int kStagedKeys = 64;

// ldmatrix x4 (b16): lanes 8i..8i+7 give the row addresses of 8x8 matrix i; r[i] = row g, columns
// 2t, 2t+1 of matrix i (with .trans: rows 2t, 2t+1 of column g).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"((uint32_t)__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"((uint32_t)__cvta_generic_to_shared(row)));
}

template <KvFormat F>
constexpr bool kTokenScaled = F == KvFormat::kInt8 || F == KvFormat::kFp8;

// Four int8 codes (one word, code i in byte i) -> two bf16 pairs (codes 0, 1 and 2, 3), exact, without
// fp32: the bf16 0x43bb is 128 + (bb & 0x7f) when bit 7 of bb is clear, 256 + 2 (bb & 0x7f) when set;
// masking that bit out of the exponent and subtracting 0x4300 (128) or 0x4380 (256) leaves the
// two's-complement code. 2 PRMT + 4 LOP3 + 2 HSUB2 for 4 values (fp32 route: ~13).
__device__ __forceinline__ void int8x4_to_bf16x4(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t a = __byte_perm(w, 0x43u, 0x4140), b = __byte_perm(w, 0x43u, 0x4342);  // [c, 0x43, c', 0x43]
  const auto sub = [](uint32_t x) {
    const uint32_t m = x & 0xff7fff7fu, e = x & 0xff80ff80u;
    __nv_bfloat162 mv, ev;
    memcpy(&mv, &m, 4);
    memcpy(&ev, &e, 4);
    const __nv_bfloat162 r = __hsub2(mv, ev);
    uint32_t out;
    memcpy(&out, &r, 4);
    return out;
  };
  lo = sub(a);
  hi = sub(b);
}

template <KvFormat F, int D, typename MT, bool kFold, int kWarpsPerTile, int kTiles>
__global__ void __launch_bounds__(32 * kWarpsPerTile * kTiles) verify_staged_kernel(VerifyParams p) {
  using T = typename KvStorage<F>::T;
  constexpr int kThreads = 32 * kWarpsPerTile * kTiles;
  constexpr int kBlockRows = kMmaRows * kTiles;
  constexpr int kWarpKeys = kStagedKeys / kWarpsPerTile;  // keys of a step one warp computes: 64 or 16
  static_assert((kWarpsPerTile == 1 || kWarpsPerTile == 4) && kWarpKeys % 16 == 0, "1 or 4 warps per m tile");
  constexpr int kLd = D + 8;                         // MT row stride: conflict-free fragment reads
  constexpr int kVB = 16;                            // bytes per vector load (row_bytes % 16 == 0 here)
  constexpr int kEV = F == KvFormat::kInt4 ? 2 * kVB : kVB / (int)sizeof(T);
  constexpr int kVecPerRow = D / kEV;
  constexpr int kVecs = 2 * kStagedKeys * kVecPerRow;  // K then V
  constexpr int kIters = (kVecs + kThreads - 1) / kThreads;  // 512 threads, int4, D 64: half the block idles
  static_assert(F != KvFormat::kInt4 || int4_group(D) == kEV, "an int4 vector must be exactly one group");
  static_assert(!kFold || (kTokenScaled<F> && std::is_same<MT, __nv_bfloat16>::value),
                "kFold: formats with one scale per token, bf16 MT (p * scale stays in range)");
  constexpr int kSteps = D / 16, kNt = D / 8, kKeyTiles = kWarpKeys / 8;
  constexpr bool kRaw = (F == KvFormat::kBF16 && std::is_same<MT, __nv_bfloat16>::value) ||
                        (F == KvFormat::kF16 && std::is_same<MT, __half>::value);
  constexpr bool kPerVecScale = (kTokenScaled<F> && !kFold) || F == KvFormat::kInt4;
  __shared__ __align__(16) MT kv_s[2 * kStagedKeys * kLd];  // K rows, then V rows; the warps' merge after
  MT* const ks = kv_s;
  MT* const vs = kv_s + kStagedKeys * kLd;
  __shared__ float key_factor[kFold ? 2 * kStagedKeys : 1];  // K scale * qk_scale_log2, then V scale

  const int n_rg = (p.rows + kBlockRows - 1) / kBlockRows;
  const int rg = blockIdx.x % n_rg, split = blockIdx.x / n_rg;
  const int b = blockIdx.z / p.kv_heads, h = blockIdx.z % p.kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int block_row0 = rg * kBlockRows;
  const int block_rows = min(kBlockRows, p.rows - block_row0);
  const int kv_len = max(0, min(p.seqlens[b], p.s_max));  // launcher checks; clamp so nothing reads past S_max
  const int lo = split * p.split_size;
  const int split_end = min(lo + p.split_size, kv_len);
  const int hi = min(split_end, kv_len - p.n_query + (block_row0 + block_rows - 1) / p.group + 1);
  if (lo >= hi) return;  // block-uniform: no row of this block sees a key of this split

  const int part = warp % kWarpsPerTile, key0 = part * kWarpKeys;  // this warp's keys of each step
  const int row0 = block_row0 + (warp / kWarpsPerTile) * kMmaRows;  // this warp's m tile
  const int rows_here = min(kMmaRows, p.rows - row0);  // <= 0: the warp only helps loading
  int limit[2];
  uint32_t qa[kSteps][4];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int r = row0 + g + 8 * rr;
    const bool ok = g + 8 * rr < rows_here;
    limit[rr] = ok ? kv_len - p.n_query + r / p.group : -1;
    const int64_t qoff = ok ? b * p.q_sb + (r / p.group) * p.q_sn + (h * p.group + r % p.group) * p.q_sh : 0;
    const unsigned short* q16 = static_cast<const unsigned short*>(p.q);
    const uint32_t keep = ok ? 0xffffffffu : 0u;  // padding rows: +0.0
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {  // natural d order: k 2t, 2t+1 and 2t+8, 2t+9 of step j
      const int d0 = 16 * j + 2 * t;
      qa[j][rr] = load_q_pair(q16, qoff + d0) & keep;
      qa[j][2 + rr] = load_q_pair(q16, qoff + d0 + 8) & keep;
    }
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float oacc[kNt][4];
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) oacc[nt][0] = oacc[nt][1] = oacc[nt][2] = oacc[nt][3] = 0.f;
  const unsigned char* kbase =
      reinterpret_cast<const unsigned char*>(static_cast<const T*>(p.k) + b * p.k_s.b + h * p.k_s.h);
  const unsigned char* vbase =
      reinterpret_cast<const unsigned char*>(static_cast<const T*>(p.v) + b * p.v_s.b + h * p.v_s.h);

  // Thread-owned state of one step in flight: its kIters vectors, their scale / zero (per-vector
  // scaling), or one key's token scale (kFold: thread c < 64 the K scale of key step + c, else V's).
  uint4 raw[kIters];
  float vsc[kPerVecScale ? kIters : 1], vzr[F == KvFormat::kInt4 ? kIters : 1], tok_sc = 0.f;
  auto load_step = [&](int step) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {  // all loads first
      const int c = threadIdx.x + i * kThreads;
      if (kVecs % kThreads != 0 && c >= kVecs) break;
      const bool is_v = c >= kVecs / 2;
      const int cc = is_v ? c - kVecs / 2 : c;
      const int key = step + cc / kVecPerRow;
      raw[i] = make_uint4(0, 0, 0, 0);
      if constexpr (kPerVecScale) vsc[i] = 0.f;  // keys past hi stage as exact zeros (never NaN * 0)
      if constexpr (F == KvFormat::kInt4) vzr[i] = 0.f;
      if (key < hi) {
        const int64_t row_off = (int64_t)key * (is_v ? p.v_s.t : p.k_s.t) * (int64_t)sizeof(T);
        raw[i] = *reinterpret_cast<const uint4*>((is_v ? vbase : kbase) + row_off + (cc % kVecPerRow) * kVB);
        if constexpr (kPerVecScale) {
          const void* srow = nullptr;
          const void* zrow = nullptr;
          scale_rows<F>(p, is_v, b, h, key, &srow, &zrow);
          if constexpr (F == KvFormat::kInt4) {
            const int grp = (cc % kVecPerRow) * kEV / int4_group(D);
            vsc[i] = __half2float(static_cast<const __half*>(srow)[grp]);
            vzr[i] = __half2float(static_cast<const __half*>(zrow)[grp]);
          } else {
            vsc[i] = *static_cast<const float*>(srow);
          }
        }
      }
    }
    if constexpr (kFold) {
      const bool is_v = threadIdx.x >= kStagedKeys;
      const int key = step + (threadIdx.x % kStagedKeys);
      tok_sc = 0.f;
      if (key < hi && threadIdx.x < 2 * kStagedKeys) {
        const Strides3& ss = is_v ? p.vs_s : p.ks_s;
        tok_sc = static_cast<const float*>(is_v ? p.v_scale : p.k_scale)[b * ss.b + h * ss.h + (int64_t)key * ss.t];
      }
    }
  };
  static_assert(!kFold || kThreads >= 2 * kStagedKeys, "one token scale per thread");

  load_step(lo);
  for (int step = lo; step < hi; step += kStagedKeys) {
    __syncthreads();  // the previous step's fragments are consumed
    // ---- dequantize the step's K and V into shared memory (keys >= hi: zeros) ----
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (kVecs % kThreads != 0 && c >= kVecs) break;
      const bool is_v = c >= kVecs / 2;
      const int cc = is_v ? c - kVecs / 2 : c;
      const int kk = cc / kVecPerRow, e0 = (cc % kVecPerRow) * kEV;
      uint32_t out[kEV / 2];
      if constexpr (kRaw) {
        const uint32_t* w = reinterpret_cast<const uint32_t*>(&raw[i]);
#pragma unroll
        for (int j = 0; j < kEV / 2; ++j) out[j] = w[j];
      } else if constexpr (kFold && F == KvFormat::kInt8) {  // codes straight to bf16 pairs (raw is 0 past hi)
        const uint32_t* w = reinterpret_cast<const uint32_t*>(&raw[i]);
#pragma unroll
        for (int j = 0; j < 4; ++j) int8x4_to_bf16x4(w[j], out[2 * j], out[2 * j + 1]);
      } else if constexpr (F == KvFormat::kF32 || F == KvFormat::kBF16 || F == KvFormat::kF16) {
        float f[kEV];
        dequant_vec<F, D, kVB>(raw[i], e0, nullptr, nullptr, f);
#pragma unroll
        for (int j = 0; j < kEV / 2; ++j) out[j] = pack2<MT>(f[2 * j], f[2 * j + 1]);
      } else {
        float f[kEV];  // raw is zero past hi and so are the scale / zero: zeros
        if constexpr (kFold) {
          dequant_codes<F, kVB, false>(raw[i], 0.f, 0.f, f);
        } else {
          dequant_codes<F, kVB>(raw[i], vsc[i], F == KvFormat::kInt4 ? vzr[i] : 0.f, f);
        }
#pragma unroll
        for (int j = 0; j < kEV / 2; ++j) out[j] = pack2<MT>(f[2 * j], f[2 * j + 1]);
      }
      uint4* dst = reinterpret_cast<uint4*>((is_v ? vs : ks) + kk * kLd + e0);
#pragma unroll
      for (int j = 0; j < kEV / 8; ++j) dst[j] = make_uint4(out[4 * j], out[4 * j + 1], out[4 * j + 2], out[4 * j + 3]);
    }
    if constexpr (kFold) {
      if (threadIdx.x < 2 * kStagedKeys)
        key_factor[threadIdx.x] = threadIdx.x < kStagedKeys ? tok_sc * p.qk_scale_log2 : tok_sc;
    }
    __syncthreads();
    if (step + kStagedKeys < hi) load_step(step + kStagedKeys);  // in flight during this step's math
    if (rows_here <= 0) continue;  // warp-uniform

    // ---- S = Q K^T for the warp's keys: n-tile nt holds keys step + key0 + 8 nt + (col) ----
    float s[kKeyTiles][4];
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      // ldmatrix: (d 16j.., 16j+8.., 16j+16.., 16j+24..) of keys 8nt..8nt+7 = b0, b1 of steps j, j+1
      const MT* krow = ks + (key0 + 8 * nt + (lane & 7)) * kLd + 8 * (lane >> 3);
#pragma unroll
      for (int j = 0; j < kSteps; j += 2) {
        uint32_t kb[4];
        ldsm_x4(kb, krow + 16 * j);
        mma16816<MT>(s[nt], qa[j], kb[0], kb[1]);
        mma16816<MT>(s[nt], qa[j + 1], kb[2], kb[3]);
      }
    }
    float2 kf[kKeyTiles];  // the scores' multipliers: per key with kFold, else qk_scale_log2
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt) {
      if constexpr (kFold) kf[nt] = *reinterpret_cast<const float2*>(key_factor + key0 + 8 * nt + 2 * t);
      else kf[nt] = make_float2(p.qk_scale_log2, p.qk_scale_log2);
    }
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kKeyTiles; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int key = step + key0 + 8 * nt + 2 * t + c;
          const bool visible = key < split_end && key <= limit[rr];
          s[nt][2 * rr + c] = visible ? s[nt][2 * rr + c] * (c ? kf[nt].y : kf[nt].x) : -INFINITY;
          mx = fmaxf(mx, s[nt][2 * rr + c]);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[rr], mx);
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[rr] - m_safe);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kKeyTiles; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          s[nt][2 * rr + c] = exp2f(s[nt][2 * rr + c] - m_safe);
          sum += s[nt][2 * rr + c];
        }
      l[rr] = l[rr] * alpha + sum;
      m[rr] = m_new;
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) oacc[nt][2 * rr] *= alpha, oacc[nt][2 * rr + 1] *= alpha;
    }
    if constexpr (kFold) {  // P.V over codes: fold V's token scale into the probabilities (after l)
#pragma unroll
      for (int nt = 0; nt < kKeyTiles; ++nt) {
        const float2 vf = *reinterpret_cast<const float2*>(key_factor + kStagedKeys + key0 + 8 * nt + 2 * t);
        s[nt][0] *= vf.x, s[nt][1] *= vf.y, s[nt][2] *= vf.x, s[nt][3] *= vf.y;
      }
    }
    // ---- O += P V: k16 step kk = key tiles 2kk, 2kk+1; B = V[key][d] for keys 2t.., cols g ----
#pragma unroll
    for (int kk = 0; kk < kWarpKeys / 16; ++kk) {
      const uint32_t pa[4] = {pack2<MT>(s[2 * kk][0], s[2 * kk][1]), pack2<MT>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<MT>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<MT>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      // ldmatrix.trans: (keys 16kk.., 16kk+8..) x (columns 8nt.., 8nt+8..) = b0, b1 of n tiles nt, nt+1
      const MT* vrow = vs + (key0 + 16 * kk + 8 * ((lane >> 3) & 1) + (lane & 7)) * kLd + 8 * (lane >> 4);
#pragma unroll
      for (int nt = 0; nt < kNt; nt += 2) {
        uint32_t vb[4];
        ldsm_x4_trans(vb, vrow + 8 * nt);
        mma16816<MT>(oacc[nt], pa, vb[0], vb[1]);
        mma16816<MT>(oacc[nt + 1], pa, vb[2], vb[3]);
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {  // l was a partial over the thread's columns
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
  }
  if constexpr (kWarpsPerTile == 4) {
    // The 4 warps of an m tile merge lane to lane (same fragment positions) through the staging buffer,
    // in a fixed order: (0 + 2) + (1 + 3). Slot layout [slot][value][lane]: conflict-free.
    constexpr int kVals = 4 * kNt + 4;  // oacc, then m[0], m[1], l[0], l[1]
    constexpr int kSlots = (int)(sizeof(kv_s) / (kVals * 32 * sizeof(float)));
    static_assert(kSlots >= 4, "the K/V buffer must hold 4 warps' states");
    float* const slots = reinterpret_cast<float*>(kv_s);
    const int tile = warp / 4;
    auto put = [&](int slot) {
      float* x = slots + slot * kVals * 32 + lane;
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) x[(4 * nt + c) * 32] = oacc[nt][c];
      x[(4 * kNt) * 32] = m[0], x[(4 * kNt + 1) * 32] = m[1];
      x[(4 * kNt + 2) * 32] = l[0], x[(4 * kNt + 3) * 32] = l[1];
    };
    auto take = [&](int slot) {  // this warp's state = this warp's (+) slot's
      const float* x = slots + slot * kVals * 32 + lane;
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const float m2 = x[(4 * kNt + rr) * 32], l2 = x[(4 * kNt + 2 + rr) * 32];
        const float m_new = fmaxf(m[rr], m2);
        const float m_safe = m_new == -INFINITY ? 0.f : m_new;
        const float a1 = exp2f(m[rr] - m_safe), a2 = exp2f(m2 - m_safe);
        l[rr] = l[rr] * a1 + l2 * a2;
        m[rr] = m_new;
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c)
            oacc[nt][2 * rr + c] = oacc[nt][2 * rr + c] * a1 + x[(4 * nt + 2 * rr + c) * 32] * a2;
      }
    };
    // (the first barrier: every warp is past its last read of the K/V buffer)
#pragma unroll
    for (int r = 0; r < kTiles; r += kSlots / 2) {  // 0 += 2, 1 += 3, for kSlots / 2 tiles at a time
      const bool mine = rows_here > 0 && tile >= r && tile < r + kSlots / 2;
      __syncthreads();
      if (mine && part >= 2) put(2 * (tile - r) + part - 2);
      __syncthreads();
      if (mine && part < 2) take(2 * (tile - r) + part);
    }
#pragma unroll
    for (int r = 0; r < kTiles; r += kSlots) {  // 0 += 1
      const bool mine = rows_here > 0 && tile >= r && tile < r + kSlots;
      __syncthreads();
      if (mine && part == 1) put(tile - r);
      __syncthreads();
      if (mine && part == 0) take(tile - r);
    }
  }
  if (rows_here <= 0 || part != 0) return;
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    if (g + 8 * rr >= rows_here) continue;
    const int64_t base = (((int64_t)b * p.kv_heads + h) * p.rows + row0 + g + 8 * rr) * p.n_split + split;
    const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) p.part_out[base * D + 8 * nt + 2 * t + c] = oacc[nt][2 * rr + c] * inv;
    if (t == 0) p.part_lse[base] = l[rr] > 0.f ? m[rr] + log2f(l[rr]) : -INFINITY;
  }
}

}  // namespace cuda
}  // namespace rapid
