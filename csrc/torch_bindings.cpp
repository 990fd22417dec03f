// The one place where ops get their schemas: TORCH_LIBRARY(rapid) + one impl per dispatch key.
// Python mirrors these schema strings in rapid_engine/ops/_schemas.py for builds without the
// extension; python_tests/test_registration.py checks the two agree.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(rapid, m) {
  m.def("quantize_kv(Tensor x, str kv_dtype) -> (Tensor data, Tensor scale, Tensor zero)");
  m.def("dequantize_kv(Tensor data, Tensor? scale, Tensor? zero, str kv_dtype, int head_dim) -> Tensor");
  m.def("kv_append(Tensor(a!) data, Tensor(b!) scale, Tensor(c!) zero, Tensor x, int start, str kv_dtype) -> ()");
  m.def(
      "verify_attention(Tensor q, Tensor k, Tensor v, Tensor? k_scale, Tensor? k_zero, Tensor? v_scale, "
      "Tensor? v_zero, Tensor seqlens, str kv_dtype, float sm_scale) -> Tensor");
  m.def(
      "spec_sample(Tensor target_logits, Tensor draft_tokens, Tensor? draft_probs, Tensor uniforms, "
      "float temperature, int top_k, float top_p, float eta, float tail_alpha, str residual) -> (Tensor, Tensor)");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(rapid, CPU, m) {
  m.impl("quantize_kv", &rapid::quantize_kv_cpu);
  m.impl("dequantize_kv", &rapid::dequantize_kv_cpu);
  m.impl("kv_append", &rapid::kv_append_cpu);
  m.impl("verify_attention", &rapid::verify_attention_cpu);
  m.impl("spec_sample", &rapid::spec_sample_cpu);
  m.impl("linear", &rapid::linear_cpu);
}

#ifdef RAPID_WITH_CUDA
TORCH_LIBRARY_IMPL(rapid, CUDA, m) {
  m.impl("quantize_kv", &rapid::quantize_kv_cuda);
  m.impl("dequantize_kv", &rapid::dequantize_kv_cuda);
  m.impl("kv_append", &rapid::kv_append_cuda);
  m.impl("verify_attention", &rapid::verify_attention_cuda);
  m.impl("spec_sample", &rapid::spec_sample_cuda);
}
#endif

// Python module `rapid_engine._C`: build facts only; the ops live in torch.ops.rapid.
#ifndef RAPID_NO_PYBIND
#include <torch/extension.h>
PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("cpu_isa", &rapid::cpu_isa, "CPU kernel path in use: amx, avx512bf16, avx512, avx2 or scalar");
#ifdef RAPID_WITH_CUDA
  mod.attr("with_cuda") = true;
#else
  mod.attr("with_cuda") = false;
#endif
}
#endif
