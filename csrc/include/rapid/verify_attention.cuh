// Verification attention on the GPU: split-KV flash-decoding over a (quantized) KV cache.
// Framework-free CUDA; the launcher (csrc/cuda/verify_attention.cu) checks every argument.
//
// Grid (split, row tile, batch * kv_head), 256 threads = 8 warps. The rows of a block are the
// n_query x group query rows that share one KV head (row r = query r / group, q head
// kv_head * group + r % group), up to kRowsPerBlock of them, so each KV tile is read from memory
// and dequantized once for all drafted tokens and all heads of the GQA group.
//   * load: 16-byte (8 for odd int4 rows) vector loads of kTileKeys keys of K and V, dequantized in
//     registers, stored to shared memory as fp32 (K rows padded by one float: conflict-free reads);
//   * scores: lane j of a warp owns key j of the tile, the warp owns rows w, w+8, ...;
//   * online softmax in the log2 domain (sm_scale * log2(e) folded into q);
//   * P.V: lane owns output columns lane + 32 * j, probabilities broadcast with shuffles.
// Each block writes a normalized partial (out, lse) per row; merge_splits_kernel combines the splits
// of a row in a fixed order. Split boundaries are multiples of split_size, fixed by the launcher from
// (S_max, B, kv_heads, SM count), so a row's result does not depend on n_query.
#pragma once
#include "rapid/kv_quant.cuh"

namespace rapid {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 8;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;  // 64
constexpr int kTileKeys = 32;                         // one key per lane

struct VerifyParams {
  const void* q;  // [B, n_query, q_heads, D], last dim contiguous
  FloatType q_type;
  int64_t q_sb, q_sn, q_sh;
  const void* k;  // storage [B, kv_heads, S_max, D (int4: D/2)], last dim contiguous
  const void* v;
  Strides3 k_s, v_s;
  const void* k_scale;  // fp32 [B, kvh, S] or fp16 [B, kvh, S, D/G]; zero shares the scale's strides
  const void* k_zero;
  const void* v_scale;
  const void* v_zero;
  Strides3 ks_s, vs_s;
  const int* seqlens;  // [B]
  float* part_out;     // [B, kv_heads, rows, n_split, D]
  float* part_lse;     // [B, kv_heads, rows, n_split], log2 domain
  void* out;           // [B, n_query, q_heads, D] in q's type
  int64_t o_sb, o_sn, o_sh;
  int n_query, q_heads, kv_heads, group, rows, s_max, split_size, n_split;
  float qk_scale_log2;  // sm_scale * log2(e)
};

__host__ __device__ constexpr int vector_bytes(KvFormat f, int head_dim) {
  return row_bytes(f, head_dim) % 16 == 0 ? 16 : 8;
}

__host__ __device__ constexpr int smem_floats(int head_dim, int rows_cap) {
  return rows_cap * head_dim + kTileKeys * (head_dim + 1) + kTileKeys * head_dim;
}

template <int N> struct VecType;
template <> struct VecType<16> { using T = uint4; };
template <> struct VecType<8> { using T = uint2; };

// Dequantize the `vb` bytes of one vector (starting at value `e0` of key row `key`) into dst[0 ..).
template <KvFormat F, int D, int VB>
__device__ __forceinline__ void dequant_vector(const typename VecType<VB>::T& raw, int e0, const void* scale_row,
                                               const void* zero_row, float* dst) {
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(&raw);
  if constexpr (F == KvFormat::kF32) {
#pragma unroll
    for (int i = 0; i < VB / 4; ++i) dst[i] = reinterpret_cast<const float*>(bytes)[i];
  } else if constexpr (F == KvFormat::kBF16) {
#pragma unroll
    for (int i = 0; i < VB / 2; ++i) dst[i] = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(bytes)[i]);
  } else if constexpr (F == KvFormat::kF16) {
#pragma unroll
    for (int i = 0; i < VB / 2; ++i) dst[i] = __half2float(reinterpret_cast<const __half*>(bytes)[i]);
  } else if constexpr (F == KvFormat::kInt8) {
    const float s = *static_cast<const float*>(scale_row);
#pragma unroll
    for (int i = 0; i < VB; ++i) dst[i] = (float)reinterpret_cast<const int8_t*>(bytes)[i] * s;
  } else if constexpr (F == KvFormat::kFp8) {
    const float s = *static_cast<const float*>(scale_row);
#pragma unroll
    for (int i = 0; i < VB; ++i) dst[i] = e4m3_to_float(bytes[i]) * s;
  } else {  // int4: 2 * VB values; each group of G is whole inside the vector or spans several vectors
    constexpr int G = int4_group(D);
    const __half* sc = static_cast<const __half*>(scale_row);
    const __half* zr = static_cast<const __half*>(zero_row);
#pragma unroll
    for (int i = 0; i < VB; ++i) {
      const int g = (e0 + 2 * i) / G;  // both values of a byte share a group (G is even)
      const float s = __half2float(sc[g]), z = __half2float(zr[g]);
      dst[2 * i] = (float)(bytes[i] & 0xF) * s + z;
      dst[2 * i + 1] = (float)(bytes[i] >> 4) * s + z;
    }
  }
}

// K tile -> ks[key][D + 1], V tile -> vs[key][D]; keys at or past `hi` are zero-filled, never read.
template <KvFormat F, int D>
__device__ __forceinline__ void load_kv_tile(const VerifyParams& p, int b, int h, int tile_start, int hi,
                                             float* ks, float* vs) {
  using T = typename KvStorage<F>::T;
  constexpr int VB = vector_bytes(F, D);
  constexpr int kChunksPerRow = row_bytes(F, D) / VB;
  constexpr int kValsPerChunk = F == KvFormat::kInt4 ? 2 * VB : VB / (int)sizeof(T);
  using V = typename VecType<VB>::T;
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s.b + h * p.k_s.h;
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_s.b + h * p.v_s.h;
  for (int c = threadIdx.x; c < 2 * kTileKeys * kChunksPerRow; c += kThreads) {
    const bool is_v = c >= kTileKeys * kChunksPerRow;
    const int cc = is_v ? c - kTileKeys * kChunksPerRow : c;
    const int t = cc / kChunksPerRow;
    const int e0 = (cc % kChunksPerRow) * kValsPerChunk;  // first value of this chunk in the row
    const int key = tile_start + t;
    float vals[kValsPerChunk];
    if (key < hi) {
      const T* row = is_v ? vbase + key * p.v_s.t : kbase + key * p.k_s.t;
      const int byte_off = (cc % kChunksPerRow) * VB;
      const V raw = *reinterpret_cast<const V*>(reinterpret_cast<const unsigned char*>(row) + byte_off);
      const Strides3& ss = is_v ? p.vs_s : p.ks_s;
      const int64_t soff = b * ss.b + h * ss.h + key * ss.t;
      const void* srow = nullptr;
      const void* zrow = nullptr;
      if constexpr (F == KvFormat::kInt8 || F == KvFormat::kFp8) {
        srow = static_cast<const float*>(is_v ? p.v_scale : p.k_scale) + soff;
      } else if constexpr (F == KvFormat::kInt4) {
        srow = static_cast<const __half*>(is_v ? p.v_scale : p.k_scale) + soff;
        zrow = static_cast<const __half*>(is_v ? p.v_zero : p.k_zero) + soff;
      }
      dequant_vector<F, D, VB>(raw, e0, srow, zrow, vals);
    } else {
#pragma unroll
      for (int i = 0; i < kValsPerChunk; ++i) vals[i] = 0.f;
    }
    float* dst = is_v ? vs + t * D + e0 : ks + t * (D + 1) + e0;
#pragma unroll
    for (int i = 0; i < kValsPerChunk; ++i) dst[i] = vals[i];
  }
}

template <KvFormat F, int D>
__global__ void __launch_bounds__(kThreads) verify_split_kernel(VerifyParams p) {
  constexpr int NJ = (D + 31) / 32;  // output columns per lane
  extern __shared__ float smem[];
  const int split = blockIdx.x;
  const int row0 = blockIdx.y * kRowsPerBlock;
  const int b = blockIdx.z / p.kv_heads;
  const int h = blockIdx.z % p.kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int rows_here = min(kRowsPerBlock, p.rows - row0);
  const int kv_len = max(0, min(p.seqlens[b], p.s_max));  // launcher checks; clamp so nothing reads past S_max
  const int lo = split * p.split_size;
  const int split_end = min(lo + p.split_size, kv_len);
  // Last key any row of this block sees: whole tiles above the causal edge are skipped.
  const int hi = min(split_end, kv_len - p.n_query + (row0 + rows_here - 1) / p.group + 1);
  if (lo >= hi) return;  // the merge never reads this (split, row tile): no row sees a key here

  const int rows_cap = min(kRowsPerBlock, p.rows);
  float* qs = smem;                         // [rows_cap][D], pre-scaled by sm_scale * log2(e)
  float* ks = qs + rows_cap * D;            // [kTileKeys][D + 1]
  float* vs = ks + kTileKeys * (D + 1);     // [kTileKeys][D]
  for (int i = threadIdx.x; i < rows_here * D; i += kThreads) {
    const int r = row0 + i / D, d = i % D;
    const int qi = r / p.group, head = h * p.group + r % p.group;
    qs[i] = load_float(p.q, b * p.q_sb + qi * p.q_sn + head * p.q_sh + d, p.q_type) * p.qk_scale_log2;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][NJ];
  int limit[kRowsPerWarp];  // last key index each of this warp's rows sees
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = row0 + warp + kWarps * i;
    limit[i] = (warp + kWarps * i < rows_here) ? kv_len - p.n_query + r / p.group : -1;
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int j = 0; j < NJ; ++j) acc[i][j] = 0.f;
  }

  for (int tile = lo; tile < hi; tile += kTileKeys) {
    __syncthreads();  // previous tile fully consumed (and, the first time, qs written)
    load_kv_tile<F, D>(p, b, h, tile, hi, ks, vs);
    __syncthreads();
    const int key = tile + lane;
    float s[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) s[i] = 0.f;
    for (int d = 0; d < D; ++d) {
      const float kd = ks[lane * (D + 1) + d];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i)
        if (warp + kWarps * i < rows_here) s[i] += qs[(warp + kWarps * i) * D + d] * kd;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      if (warp + kWarps * i >= rows_here) continue;  // warp-uniform
      const bool visible = key < split_end && key <= limit[i];
      const float si = visible ? s[i] : -INFINITY;
      const float m_new = fmaxf(m[i], warp_max(si));
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet in this row
      const float alpha = exp2f(m[i] - m_safe);
      const float pr = visible ? exp2f(si - m_safe) : 0.f;
      l[i] = l[i] * alpha + pr;  // lane-local partial sum; reduced once at the end
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < NJ; ++j) acc[i][j] *= alpha;
      s[i] = pr;
    }
#pragma unroll 4
    for (int t = 0; t < kTileKeys; ++t) {
      float vcol[NJ];
#pragma unroll
      for (int j = 0; j < NJ; ++j) vcol[j] = (lane + 32 * j < D) ? vs[t * D + lane + 32 * j] : 0.f;
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        if (warp + kWarps * i >= rows_here) continue;
        const float pt = __shfl_sync(0xffffffffu, s[i], t);
#pragma unroll
        for (int j = 0; j < NJ; ++j) acc[i][j] += pt * vcol[j];
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    if (warp + kWarps * i >= rows_here) continue;
    const float lsum = warp_sum(l[i]);
    const int r = row0 + warp + kWarps * i;
    const int64_t base = (((int64_t)b * p.kv_heads + h) * p.rows + r) * p.n_split + split;
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
      if (lane + 32 * j < D) p.part_out[base * D + lane + 32 * j] = acc[i][j] * inv;
    if (lane == 0) p.part_lse[base] = lsum > 0.f ? m[i] + log2f(lsum) : -INFINITY;
  }
}

// One warp per output row (b, query, q head): weights 2^(lse_s - max) over the splits that hold a
// visible key, summed in split order.
template <int D>
__global__ void merge_splits_kernel(VerifyParams p, int B) {
  constexpr int NJ = (D + 31) / 32;
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= (int64_t)B * p.n_query * p.q_heads) return;
  const int head = (int)(row % p.q_heads);
  const int qi = (int)((row / p.q_heads) % p.n_query);
  const int b = (int)(row / ((int64_t)p.q_heads * p.n_query));
  const int kv_len = max(0, min(p.seqlens[b], p.s_max));
  const int limit = kv_len - p.n_query + qi;
  const int64_t o = b * p.o_sb + qi * p.o_sn + head * p.o_sh;
  if (limit < 0) {  // unreachable after the launcher's seqlens check; defined output anyway
    for (int d = lane; d < D; d += 32) store_float(p.out, o + d, 0.f, p.q_type);
    return;
  }
  const int n_used = limit / p.split_size + 1;
  const int h = head / p.group, r = qi * p.group + head % p.group;
  const int64_t base = (((int64_t)b * p.kv_heads + h) * p.rows + r) * p.n_split;
  float mx = -INFINITY;
  for (int s = lane; s < n_used; s += 32) mx = fmaxf(mx, p.part_lse[base + s]);
  mx = warp_max(mx);
  float acc[NJ], wsum = 0.f;
#pragma unroll
  for (int j = 0; j < NJ; ++j) acc[j] = 0.f;
  // kU splits' loads in flight at once (a long cache has 100+ splits per row); the sums still run in
  // split order (deterministic).
  constexpr int kU = NJ <= 4 ? 16 : 8;
  int s = 0;
  for (; s + kU <= n_used; s += kU) {
    float w[kU], x[kU][NJ];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      w[u] = exp2f(p.part_lse[base + s + u] - mx);
#pragma unroll
      for (int j = 0; j < NJ; ++j) x[u][j] = lane + 32 * j < D ? p.part_out[(base + s + u) * D + lane + 32 * j] : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      wsum += w[u];
#pragma unroll
      for (int j = 0; j < NJ; ++j) acc[j] += w[u] * x[u][j];
    }
  }
  for (; s < n_used; ++s) {
    const float w = exp2f(p.part_lse[base + s] - mx);
    wsum += w;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
      if (lane + 32 * j < D) acc[j] += w * p.part_out[(base + s) * D + lane + 32 * j];
  }
#pragma unroll
  for (int j = 0; j < NJ; ++j)
    if (lane + 32 * j < D) store_float(p.out, o + lane + 32 * j, acc[j] / wsum, p.q_type);
}

}  // namespace cuda
}  // namespace rapid
