// Launcher-side helpers shared by the CUDA KV launchers (kv_quant.cu, verify_attention.cu): the codes
// returned by the host-compiled checks (cuda_kv_checks.h) as the framework-free enums of rapid/kv_quant.cuh.
// Nothing here throws: arguments reach the .cu files validated.
#pragma once
#include <ATen/core/Tensor.h>

#include "cuda_kv_checks.h"
#include "rapid/kv_quant.cuh"

namespace rapid {
namespace cuda_launch {

inline cuda::KvFormat format_from_code(int code) { return static_cast<cuda::KvFormat>(code); }

// float32 / bfloat16 / float16 tensor (checked before) -> FloatType.
inline cuda::FloatType float_type_unchecked(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return cuda::FloatType::kBF16;
    case at::kHalf: return cuda::FloatType::kF16;
    default: return cuda::FloatType::kF32;
  }
}

// dtype of the cache's data tensor for each format (README "Layouts and formats").
inline at::ScalarType data_dtype(cuda::KvFormat f) {
  switch (f) {
    case cuda::KvFormat::kF32: return at::kFloat;
    case cuda::KvFormat::kBF16: return at::kBFloat16;
    case cuda::KvFormat::kF16: return at::kHalf;
    case cuda::KvFormat::kInt8: return at::kChar;
    case cuda::KvFormat::kInt4: return at::kByte;
    default: return at::kFloat8_e4m3fn;
  }
}

}  // namespace cuda_launch
}  // namespace rapid
