// KV-cache formats: scalar conversions and per-token quantize / dequantize. Framework-free.
// Bit-exact with rapid_engine/ops/reference.py (section "attention and KV quantization"):
// every rounding is round-to-nearest-even, done in fp32 in the same order as the reference.
// Compiled without FMA contraction on purpose (plain x86-64 target): q*scale + zero must round twice.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace rapid {

enum class KvFormat { kF32, kBF16, kF16, kInt8, kFp8, kInt4 };

inline bool kv_format_from_name(const char* s, KvFormat* out) {
  static const struct { const char* name; KvFormat f; } table[] = {
      {"fp32", KvFormat::kF32}, {"bf16", KvFormat::kBF16}, {"fp16", KvFormat::kF16},
      {"int8", KvFormat::kInt8}, {"fp8", KvFormat::kFp8},   {"int4", KvFormat::kInt4}};
  for (const auto& e : table)
    if (std::strcmp(s, e.name) == 0) { *out = e.f; return true; }
  return false;
}

// int4 group along D: 32, or 16 when D % 32 != 0 (D % 16 == 0 is required).
inline int int4_group(int64_t head_dim) { return head_dim % 32 == 0 ? 32 : 16; }

// Bytes of one token's data row (the stride between rows may be larger); kv_quant.cuh's row_bytes on the GPU.
constexpr int row_data_bytes(KvFormat f, int head_dim) {
  return f == KvFormat::kF32                              ? 4 * head_dim
         : (f == KvFormat::kBF16 || f == KvFormat::kF16) ? 2 * head_dim
         : f == KvFormat::kInt4                          ? head_dim / 2
                                                         : head_dim;
}

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// ---- bf16 / fp16 / fp8 e4m3fn <-> fp32 ----
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u > 0x7F800000u) return sign | 0x7E00;            // NaN
  if (u >= 0x477FF000u) return sign | 0x7C00;           // >= 65520 rounds to inf
  if (u < 0x38800000u) {                                 // below 2^-14: subnormal half (exact scaling by 2^24)
    return sign | static_cast<uint16_t>(std::nearbyint(bits_f32(u) * 16777216.0f));
  }
  const uint32_t m = u - 0x38000000u;                   // rebias exponent 127 -> 15
  return sign | static_cast<uint16_t>((m + 0xFFFu + ((m >> 13) & 1u)) >> 13);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) {  // zero / subnormal: m * 2^-24, exact in fp32
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);
    return bits_f32(f32_bits(v) | sign);
  }
  if (e == 31) return bits_f32(sign | 0x7F800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// e4m3fn: bias 7, no infinities, 0x7F = NaN, max 448. Saturates finite overflow to +-448.
inline uint8_t f32_to_e4m3(float f) {
  uint32_t u = f32_bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  u &= 0x7FFFFFFFu;
  if (u > 0x7F800000u) return sign | 0x7F;
  const float a = bits_f32(u);
  if (a < 0.015625f) return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));  // subnormal: units 2^-9
  if (a >= 464.0f) return sign | 0x7E;                                                  // past 448's half-ulp
  const uint32_t m = u - (120u << 23);                                                  // rebias 127 -> 7
  return sign | static_cast<uint8_t>((m + 0x7FFFFu + ((m >> 20) & 1u)) >> 20);
}
inline float e4m3_to_f32(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  const uint32_t e = (b >> 3) & 0xFu, m = b & 7u;
  if (e == 15 && m == 7) return bits_f32(sign | 0x7FC00000u);
  if (e == 0) return bits_f32(f32_bits(static_cast<float>(m) * (1.0f / 512.0f)) | sign);
  return bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

// ---- one token row of D values ----
// Output pointers address this row's entries: data (D elements; int4: D/2 bytes), scale (int8/fp8: 1 fp32;
// int4: D/G fp16), zero (int4: D/G fp16). Unused pointers may be null.
inline void quantize_row(KvFormat fmt, const float* x, int64_t D, void* data, void* scale, void* zero) {
  switch (fmt) {
    case KvFormat::kF32: std::memcpy(data, x, D * sizeof(float)); return;
    case KvFormat::kBF16: {
      auto* o = static_cast<uint16_t*>(data);
      for (int64_t d = 0; d < D; ++d) o[d] = f32_to_bf16(x[d]);
      return;
    }
    case KvFormat::kF16: {
      auto* o = static_cast<uint16_t*>(data);
      for (int64_t d = 0; d < D; ++d) o[d] = f32_to_f16(x[d]);
      return;
    }
    case KvFormat::kInt8:
    case KvFormat::kFp8: {
      float amax = 0.f;
      for (int64_t d = 0; d < D; ++d) amax = std::fmax(amax, std::fabs(x[d]));
      const float s = amax / (fmt == KvFormat::kInt8 ? 127.0f : 448.0f);
      *static_cast<float*>(scale) = s;
      if (fmt == KvFormat::kInt8) {
        auto* o = static_cast<int8_t*>(data);
        for (int64_t d = 0; d < D; ++d) {
          const float r = s > 0.f ? std::nearbyint(x[d] / s) : 0.f;
          o[d] = static_cast<int8_t>(std::fmin(127.f, std::fmax(-127.f, r)));
        }
      } else {
        auto* o = static_cast<uint8_t*>(data);
        for (int64_t d = 0; d < D; ++d) {
          const float y = s > 0.f ? std::fmin(448.f, std::fmax(-448.f, x[d] / s)) : 0.f;
          o[d] = f32_to_e4m3(y);
        }
      }
      return;
    }
    case KvFormat::kInt4: {
      const int G = int4_group(D);
      auto* o = static_cast<uint8_t*>(data);
      auto* sc = static_cast<uint16_t*>(scale);
      auto* ze = static_cast<uint16_t*>(zero);
      for (int64_t g = 0; g < D / G; ++g) {
        const float* xg = x + g * G;
        float mn = xg[0], mx = xg[0];
        for (int i = 1; i < G; ++i) { mn = std::fmin(mn, xg[i]); mx = std::fmax(mx, xg[i]); }
        sc[g] = f32_to_f16((mx - mn) / 15.0f);
        ze[g] = f32_to_f16(mn);
        const float s = f16_to_f32(sc[g]), z = f16_to_f32(ze[g]);
        for (int i = 0; i < G; i += 2) {
          uint8_t q[2];
          for (int j = 0; j < 2; ++j) {
            const float r = s > 0.f ? std::nearbyint((xg[i + j] - z) / s) : 0.f;
            q[j] = static_cast<uint8_t>(std::fmin(15.f, std::fmax(0.f, r)));
          }
          o[(g * G + i) / 2] = static_cast<uint8_t>(q[0] | (q[1] << 4));
        }
      }
      return;
    }
  }
}

inline void dequantize_row(KvFormat fmt, const void* data, const void* scale, const void* zero, int64_t D, float* out) {
  switch (fmt) {
    case KvFormat::kF32: std::memcpy(out, data, D * sizeof(float)); return;
    case KvFormat::kBF16:
      for (int64_t d = 0; d < D; ++d) out[d] = bf16_to_f32(static_cast<const uint16_t*>(data)[d]);
      return;
    case KvFormat::kF16:
      for (int64_t d = 0; d < D; ++d) out[d] = f16_to_f32(static_cast<const uint16_t*>(data)[d]);
      return;
    case KvFormat::kInt8: {
      const float s = *static_cast<const float*>(scale);
      for (int64_t d = 0; d < D; ++d) out[d] = static_cast<float>(static_cast<const int8_t*>(data)[d]) * s;
      return;
    }
    case KvFormat::kFp8: {
      const float s = *static_cast<const float*>(scale);
      for (int64_t d = 0; d < D; ++d) out[d] = e4m3_to_f32(static_cast<const uint8_t*>(data)[d]) * s;
      return;
    }
    case KvFormat::kInt4: {
      const int G = int4_group(D);
      const auto* in = static_cast<const uint8_t*>(data);
      for (int64_t d = 0; d < D; ++d) {
        const uint8_t b = in[d / 2];
        const float q = static_cast<float>((d & 1) ? (b >> 4) : (b & 0xF));
        const float s = f16_to_f32(static_cast<const uint16_t*>(scale)[d / G]);
        const float z = f16_to_f32(static_cast<const uint16_t*>(zero)[d / G]);
        const float qs = q * s;  // two roundings, as the reference (no FMA)
        out[d] = qs + z;
      }
      return;
    }
  }
}

}  // namespace rapid
