// Launcher-side helpers shared by the CUDA KV launchers (kv_quant.cu, verify_attention.cu):
// turn the op's string / dtype arguments into the framework-free enums of rapid/kv_quant.cuh.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "rapid/kv_quant.cuh"

namespace rapid {
namespace cuda_launch {

inline cuda::KvFormat format_of(const std::string& kv_dtype, const char* op) {
  cuda::KvFormat f;
  TORCH_CHECK(cuda::parse_kv_format(kv_dtype, &f), op,
              ": kv_dtype must be one of fp32, bf16, fp16, int8, int4, fp8, got '", kv_dtype, "'");
  return f;
}

// `what` names the argument in the error, e.g. "verify_attention: q".
inline cuda::FloatType float_type_of(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::FloatType::kF32;
    case at::kBFloat16: return cuda::FloatType::kBF16;
    case at::kHalf: return cuda::FloatType::kF16;
    default: TORCH_CHECK(false, what, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return cuda::FloatType::kF32;
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
