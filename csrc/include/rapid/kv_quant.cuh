// KV cache formats on the GPU: quantize-on-write and dequantize (framework-free CUDA).
//
// Layout [B, H, S, D] with each head's tokens contiguous; scales in separate tensors.
// Rounding matches rapid_engine/ops/reference.py bit for bit, also under --use_fast_math:
// divisions are __fdiv_rn, products/sums that must not contract into an FMA are __fmul_rn/__fadd_rn,
// rintf is round-to-nearest-even, fp8 uses cuda_fp8.h's saturating RNE conversion (hardware on
// sm_89+, the header's software path on sm_80).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include <string>

namespace rapid {
namespace cuda {

enum class KvFormat : int { kF32 = 0, kBF16 = 1, kF16 = 2, kInt8 = 3, kInt4 = 4, kFp8 = 5 };
enum class FloatType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Storage element of one row of data (int4: one byte holds two values).
template <KvFormat F> struct KvStorage;
template <> struct KvStorage<KvFormat::kF32> { using T = float; };
template <> struct KvStorage<KvFormat::kBF16> { using T = __nv_bfloat16; };
template <> struct KvStorage<KvFormat::kF16> { using T = __half; };
template <> struct KvStorage<KvFormat::kInt8> { using T = int8_t; };
template <> struct KvStorage<KvFormat::kInt4> { using T = uint8_t; };
template <> struct KvStorage<KvFormat::kFp8> { using T = uint8_t; };  // e4m3fn bits

// "fp32" | "bf16" | "fp16" | "int8" | "int4" | "fp8" -> format; false for anything else.
inline bool parse_kv_format(const std::string& s, KvFormat* out) {
  static const char* const names[] = {"fp32", "bf16", "fp16", "int8", "int4", "fp8"};
  for (int i = 0; i < 6; ++i)
    if (s == names[i]) {
      *out = static_cast<KvFormat>(i);
      return true;
    }
  return false;
}

__host__ __device__ constexpr int int4_group(int head_dim) { return head_dim % 32 == 0 ? 32 : 16; }
__host__ __device__ constexpr int row_bytes(KvFormat f, int head_dim) {
  return f == KvFormat::kF32 ? 4 * head_dim
         : (f == KvFormat::kBF16 || f == KvFormat::kF16) ? 2 * head_dim
         : f == KvFormat::kInt4 ? head_dim / 2
                                : head_dim;
}

__device__ __forceinline__ float load_float(const void* p, int64_t i, FloatType t) {
  switch (t) {
    case FloatType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case FloatType::kF16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_float(void* p, int64_t i, float x, FloatType t) {
  switch (t) {
    case FloatType::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(x); break;
    case FloatType::kF16: static_cast<__half*>(p)[i] = __float2half_rn(x); break;
    default: static_cast<float*>(p)[i] = x;
  }
}

__device__ __forceinline__ float e4m3_to_float(uint8_t bits) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(bits), __NV_E4M3)));
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Strides (in elements) of a [B, H, T, ...] tensor; the last dimension is contiguous unless noted.
struct Strides3 {
  int64_t b, h, t;
};

struct QuantizeParams {
  const void* x;      // [B, H, T, D] float, any strides
  FloatType x_type;
  int64_t x_sb, x_sh, x_st, x_sd;
  void* data;         // cache [B, H, S_max, D (int4: D/2)]
  Strides3 data_s;
  void* scale;        // fp32 [B, H, S_max] (int8/fp8) or fp16 [B, H, S_max, D/G] (int4)
  void* zero;         // fp16 [B, H, S_max, D/G] (int4)
  Strides3 scale_s, zero_s;
  int B, H, T, D;
  int64_t start;      // first cache slot written
};

// One warp per token row: grid-stride over the B*H*T rows.
template <KvFormat F>
__global__ void quantize_kv_kernel(QuantizeParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x / 32);
  const int64_t n_rows = (int64_t)p.B * p.H * p.T;
  for (int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < n_rows; row += warps_total) {
    const int t = (int)(row % p.T);
    const int h = (int)((row / p.T) % p.H);
    const int b = (int)(row / ((int64_t)p.T * p.H));
    const int64_t xrow = b * p.x_sb + h * p.x_sh + t * p.x_st;
    const int64_t slot = p.start + t;
    const int64_t drow = b * p.data_s.b + h * p.data_s.h + slot * p.data_s.t;
    using T = typename KvStorage<F>::T;
    T* data = static_cast<T*>(p.data);
    if constexpr (F == KvFormat::kF32 || F == KvFormat::kBF16 || F == KvFormat::kF16) {
      for (int d = lane; d < p.D; d += 32)
        store_float(data, drow + d, load_float(p.x, xrow + d * p.x_sd, p.x_type),
                    static_cast<FloatType>(static_cast<int>(F)));
    } else if constexpr (F == KvFormat::kInt8 || F == KvFormat::kFp8) {
      float amax = 0.f;
      for (int d = lane; d < p.D; d += 32) amax = fmaxf(amax, fabsf(load_float(p.x, xrow + d * p.x_sd, p.x_type)));
      amax = warp_max(amax);
      const float scale = __fdiv_rn(amax, F == KvFormat::kInt8 ? 127.f : 448.f);
      for (int d = lane; d < p.D; d += 32) {
        const float x = load_float(p.x, xrow + d * p.x_sd, p.x_type);
        const float y = scale > 0.f ? __fdiv_rn(x, scale) : 0.f;
        if constexpr (F == KvFormat::kInt8) {
          data[drow + d] = static_cast<int8_t>(fminf(fmaxf(rintf(y), -127.f), 127.f));
        } else {
          data[drow + d] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(fminf(fmaxf(y, -448.f), 448.f),
                                                                      __NV_SATFINITE, __NV_E4M3));
        }
      }
      if (lane == 0)
        static_cast<float*>(p.scale)[b * p.scale_s.b + h * p.scale_s.h + slot * p.scale_s.t] = scale;
    } else {  // int4: lane owns value pairs (2j, 2j+1); a group of G values is G/2 consecutive lanes
      const int G = int4_group(p.D);
      const int pairs_per_group = G / 2;  // 16 or 8: divides 32, so groups never straddle iterations
      for (int base = 0; base < p.D / 2; base += 32) {
        const int pair = base + lane;
        const bool active = pair < p.D / 2;  // inactive lanes form whole groups (D/2 % (G/2) == 0)
        float x0 = 0.f, x1 = 0.f;
        if (active) {
          x0 = load_float(p.x, xrow + (2 * pair) * p.x_sd, p.x_type);
          x1 = load_float(p.x, xrow + (2 * pair + 1) * p.x_sd, p.x_type);
        }
        float mn = active ? fminf(x0, x1) : INFINITY;
        float mx = active ? fmaxf(x0, x1) : -INFINITY;
        for (int o = pairs_per_group / 2; o > 0; o >>= 1) {
          mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        }
        if (!active) continue;
        const __half scale16 = __float2half_rn(__fdiv_rn(mx - mn, 15.f));
        const __half zero16 = __float2half_rn(mn);
        const float s = __half2float(scale16), z = __half2float(zero16);
        const float q0 = s > 0.f ? fminf(fmaxf(rintf(__fdiv_rn(x0 - z, s)), 0.f), 15.f) : 0.f;
        const float q1 = s > 0.f ? fminf(fmaxf(rintf(__fdiv_rn(x1 - z, s)), 0.f), 15.f) : 0.f;
        data[drow + pair] = static_cast<uint8_t>(static_cast<int>(q0) | (static_cast<int>(q1) << 4));
        if (pair % pairs_per_group == 0) {
          const int g = 2 * pair / G;
          static_cast<__half*>(p.scale)[b * p.scale_s.b + h * p.scale_s.h + slot * p.scale_s.t + g] = scale16;
          static_cast<__half*>(p.zero)[b * p.zero_s.b + h * p.zero_s.h + slot * p.zero_s.t + g] = zero16;
        }
      }
    }
  }
}

struct DequantizeParams {
  const void* data;  // [B, H, T, D (int4: D/2)]
  Strides3 data_s;
  const void* scale;
  const void* zero;
  Strides3 scale_s, zero_s;
  float* out;        // contiguous fp32 [B, H, T, D]
  int B, H, T, D;
};

// Dequantized value of element d of one token row (pointers already at that row).
template <KvFormat F>
__device__ __forceinline__ float dequant_element(const typename KvStorage<F>::T* row, const void* scale_row,
                                                 const void* zero_row, int d, int G) {
  if constexpr (F == KvFormat::kF32) return row[d];
  else if constexpr (F == KvFormat::kBF16) return __bfloat162float(row[d]);
  else if constexpr (F == KvFormat::kF16) return __half2float(row[d]);
  else if constexpr (F == KvFormat::kInt8) return __fmul_rn((float)row[d], *static_cast<const float*>(scale_row));
  else if constexpr (F == KvFormat::kFp8) return __fmul_rn(e4m3_to_float(row[d]), *static_cast<const float*>(scale_row));
  else {
    const int code = (row[d >> 1] >> ((d & 1) * 4)) & 0xF;
    const float s = __half2float(static_cast<const __half*>(scale_row)[d / G]);
    const float z = __half2float(static_cast<const __half*>(zero_row)[d / G]);
    return __fadd_rn(__fmul_rn((float)code, s), z);  // reference order: q * scale, then + zero
  }
}

template <KvFormat F>
__global__ void dequantize_kv_kernel(DequantizeParams p) {
  using T = typename KvStorage<F>::T;
  const int64_t n = (int64_t)p.B * p.H * p.T * p.D;
  const int G = int4_group(p.D);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int d = (int)(i % p.D);
    const int64_t row = i / p.D;
    const int t = (int)(row % p.T);
    const int h = (int)((row / p.T) % p.H);
    const int b = (int)(row / ((int64_t)p.T * p.H));
    const T* drow = static_cast<const T*>(p.data) + b * p.data_s.b + h * p.data_s.h + t * p.data_s.t;
    const void* srow = nullptr;
    const void* zrow = nullptr;
    if constexpr (F == KvFormat::kInt8 || F == KvFormat::kFp8) {
      srow = static_cast<const float*>(p.scale) + b * p.scale_s.b + h * p.scale_s.h + t * p.scale_s.t;
    } else if constexpr (F == KvFormat::kInt4) {
      srow = static_cast<const __half*>(p.scale) + b * p.scale_s.b + h * p.scale_s.h + t * p.scale_s.t;
      zrow = static_cast<const __half*>(p.zero) + b * p.zero_s.b + h * p.zero_s.h + t * p.zero_s.t;
    }
    p.out[i] = dequant_element<F>(drow, srow, zrow, d, G);
  }
}

}  // namespace cuda
}  // namespace rapid
