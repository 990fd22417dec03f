// Declarations of every torch-facing launcher. Launchers own all argument checks
// (RAPID_CHECK, rapid/check.h, naming the argument and what was expected); the math lives in
// csrc/include/rapid/ (framework-free, raw pointers).
#pragma once
#include <torch/all.h>

#include "rapid/check.h"

#include <string>
#include <tuple>

namespace rapid {

// ---- KV quantization (layout [B, H, T, D]; see README "KV formats") ----
// Returns (data, scale, zero); scale/zero are empty (numel 0) tensors for formats without them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cpu(const at::Tensor& x, const std::string& kv_dtype);
at::Tensor dequantize_kv_cpu(const at::Tensor& data, const c10::optional<at::Tensor>& scale,
                             const c10::optional<at::Tensor>& zero, const std::string& kv_dtype, int64_t head_dim);
// Quantize x [B, H, T, D] and write it into cache slots [start, start + T) of data/scale/zero (in place).
void kv_append_cpu(at::Tensor& data, at::Tensor& scale, at::Tensor& zero, const at::Tensor& x, int64_t start,
                   const std::string& kv_dtype);

// ---- Verification attention ----
// q [B, n_query, q_heads, D]; k/v data [B, kv_heads, S_max, D(/2 for int4)]; seqlens int32 [B].
at::Tensor verify_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& k_zero,
                                const c10::optional<at::Tensor>& v_scale, const c10::optional<at::Tensor>& v_zero,
                                const at::Tensor& seqlens, const std::string& kv_dtype, double sm_scale);

// ---- Speculative acceptance / resampling ----
// Returns (tokens int64 [B, gamma+1], num_accepted int32 [B]).
std::tuple<at::Tensor, at::Tensor> spec_sample_cpu(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                                                   const c10::optional<at::Tensor>& draft_probs,
                                                   const at::Tensor& uniforms, double temperature, int64_t top_k,
                                                   double top_p, double eta, double tail_alpha,
                                                   const std::string& residual);

// ---- Batch-invariant small-M linear: y = x @ weight.T + bias; row m of y depends only on row m of x ----
// x [..., K] fp32/bf16/fp16; weight [N, K] and bias [N] of x's dtype -> [..., N] in x's dtype.
at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// Which CPU instruction-set path the kernels use now: "avx512", "avx2" or "scalar"
// (RAPID_CPU_ISA=avx512|avx2|scalar forces a lower one; a higher one than the CPU has is an error).
std::string cpu_isa();

#ifdef RAPID_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cuda(const at::Tensor& x, const std::string& kv_dtype);
at::Tensor dequantize_kv_cuda(const at::Tensor& data, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& zero, const std::string& kv_dtype, int64_t head_dim);
void kv_append_cuda(at::Tensor& data, at::Tensor& scale, at::Tensor& zero, const at::Tensor& x, int64_t start,
                    const std::string& kv_dtype);
at::Tensor verify_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& k_zero,
                                 const c10::optional<at::Tensor>& v_scale, const c10::optional<at::Tensor>& v_zero,
                                 const at::Tensor& seqlens, const std::string& kv_dtype, double sm_scale);
std::tuple<at::Tensor, at::Tensor> spec_sample_cuda(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                                                    const c10::optional<at::Tensor>& draft_probs,
                                                    const at::Tensor& uniforms, double temperature, int64_t top_k,
                                                    double top_p, double eta, double tail_alpha,
                                                    const std::string& residual);
#endif

}  // namespace rapid
