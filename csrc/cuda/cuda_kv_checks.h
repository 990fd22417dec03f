// Argument checks of the CUDA KV ops (quantize_kv, kv_append, dequantize_kv, verify_attention), in one
// host-compiled translation unit (cuda_kv_checks.cpp): the .cu launchers call these first and then only
// see validated arguments. Messages go through RAPID_CHECK (rapid/check.h explains why nothing here is
// formatted with iostreams).
// Format and float codes follow the order of rapid::cuda::KvFormat / FloatType (rapid/kv_quant.cuh).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace rapid {
namespace cuda_checks {

// fp32, bf16, fp16, int8, int4, fp8 -> 0..5; anything else throws.
int kv_format_code(const std::string& kv_dtype, const char* op);
// float32, bfloat16, float16 -> 0..2; anything else throws (`what` names the argument).
int float_type_code(const at::Tensor& t, const char* what);

int check_quantize_kv(const at::Tensor& x, const std::string& kv_dtype);
int check_kv_append(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& zero, const at::Tensor& x,
                    int64_t start, const std::string& kv_dtype);
int check_dequantize_kv(const at::Tensor& data, const c10::optional<at::Tensor>& scale,
                        const c10::optional<at::Tensor>& zero, const std::string& kv_dtype, int64_t head_dim);

struct VerifyArgs {
  int format;  // KvFormat code
  int q_type;  // FloatType code
  int64_t B, n_query, q_heads, head_dim, kv_heads, s_max;
};

// Everything about verify_attention's arguments; with check_seqlens_values also the values of seqlens
// (one small device-to-host copy: the caller skips it while a CUDA graph is being captured).
// max_rows_per_grid_y: rows per block of the FMA kernel times 65535 (its grid.y limit).
VerifyArgs check_verify_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& k_zero,
                                  const c10::optional<at::Tensor>& v_scale, const c10::optional<at::Tensor>& v_zero,
                                  const at::Tensor& seqlens, const std::string& kv_dtype, bool check_seqlens_values,
                                  int64_t max_rows_per_grid_y);

}  // namespace cuda_checks
}  // namespace rapid
