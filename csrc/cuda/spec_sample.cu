// CUDA launcher of rapid::spec_sample: argument checks (c10::ValueError naming the argument), fp32 views, one
// block per (row, position) unit + one assembling thread per row (csrc/include/rapid/spec_sample.cuh). Draft ids
// are checked before the kernels run (and again by the kernel, which never reads with a bad id); NaN/+inf logits,
// bad draft rows and bad ids come back as an error flag read after the kernels (skipped while a CUDA graph is
// being captured: the outputs then stay -1 / 0).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops.h"
#include "rapid/spec_sample.cuh"

namespace rapid {

std::tuple<at::Tensor, at::Tensor> spec_sample_cuda(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                                                    const c10::optional<at::Tensor>& draft_probs,
                                                    const at::Tensor& uniforms, double temperature, int64_t top_k,
                                                    double top_p, double eta, double tail_alpha,
                                                    const std::string& residual) {
  auto is_float = [](at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; };
  TORCH_CHECK_VALUE(target_logits.dim() == 3 && target_logits.is_cuda() && is_float(target_logits.scalar_type()),
                    "spec_sample: target_logits must be a CUDA float32/bfloat16/float16 [B, gamma+1, V] tensor, got ",
                    target_logits.scalar_type(), " ", target_logits.sizes(), " on ", target_logits.device());
  const int64_t B = target_logits.size(0), G = target_logits.size(1) - 1, V = target_logits.size(2);
  TORCH_CHECK_VALUE(G >= 0 && V >= 1 && V < (int64_t{1} << 31), "spec_sample: target_logits needs gamma+1 >= 1 and ",
                    "1 <= V < 2^31, got ", target_logits.sizes());
  TORCH_CHECK_VALUE(B * (G + 1) < (int64_t{1} << 31), "spec_sample: target_logits needs B * (gamma+1) < 2^31 ",
                    "(one CUDA block each), got ", target_logits.sizes());
  const auto dev = target_logits.device();
  TORCH_CHECK_VALUE(draft_tokens.scalar_type() == at::kLong && draft_tokens.dim() == 2 && draft_tokens.size(0) == B &&
                        draft_tokens.size(1) == G && draft_tokens.device() == dev,
                    "spec_sample: draft_tokens must be int64 [B, gamma] = [", B, ", ", G, "] on ", dev, ", got ",
                    draft_tokens.scalar_type(), " ", draft_tokens.sizes(), " on ", draft_tokens.device());
  TORCH_CHECK_VALUE(uniforms.scalar_type() == at::kDouble && uniforms.dim() == 2 && uniforms.size(0) == B &&
                        uniforms.size(1) == G + 1 && uniforms.device() == dev,
                    "spec_sample: uniforms must be float64 [B, gamma+1] = [", B, ", ", G + 1, "] on ", dev);
  if (draft_probs.has_value())
    TORCH_CHECK_VALUE(is_float(draft_probs->scalar_type()) && draft_probs->dim() == 3 && draft_probs->size(0) == B &&
                          draft_probs->size(1) == G && draft_probs->size(2) == V && draft_probs->device() == dev,
                      "spec_sample: draft_probs must be float32/bfloat16/float16 [B, gamma, V] = [", B, ", ", G, ", ",
                      V, "] on ", dev, ", got ", draft_probs->scalar_type(), " ", draft_probs->sizes());
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0,
                    "spec_sample: temperature must be a finite number >= 0 (0 = greedy), got ", temperature);
  TORCH_CHECK_VALUE(top_k >= 0, "spec_sample: top_k must be >= 0 (0 = off), got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "spec_sample: top_p must be in (0, 1] (1 = off), got ", top_p);
  TORCH_CHECK_VALUE(std::isfinite(eta), "spec_sample: eta must be a finite number, got ", eta);
  TORCH_CHECK_VALUE(tail_alpha >= 0 && tail_alpha <= 1, "spec_sample: tail_alpha must be in [0, 1], got ", tail_alpha);
  TORCH_CHECK_VALUE(residual == "exact" || residual == "paper",
                    "spec_sample: residual must be 'exact' or 'paper', got '", residual, "'");
  const c10::cuda::CUDAGuard guard(dev);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  if (!capturing && B * G > 0) {  // one sync; never read memory with an unchecked id
    TORCH_CHECK_VALUE(!((draft_tokens < 0) | (draft_tokens >= V)).any().item<bool>(),
                      "spec_sample: draft_tokens must be token ids in [0, ", V, ")");
  }
  const at::Tensor z = target_logits.to(at::kFloat).contiguous();
  at::Tensor q;
  if (draft_probs.has_value()) q = draft_probs->to(at::kFloat).contiguous();
  const at::Tensor d = draft_tokens.contiguous(), u = uniforms.contiguous();
  at::Tensor tokens = at::full({B, G + 1}, -1, z.options().dtype(at::kLong));
  at::Tensor num_accepted = at::zeros({B}, z.options().dtype(at::kInt));
  at::Tensor error = at::zeros({1}, z.options().dtype(at::kInt));
  at::Tensor unit_token = at::empty({B, G + 1}, z.options().dtype(at::kLong));  // scratch, written per unit
  at::Tensor unit_accept = at::zeros({B, G + 1}, z.options().dtype(at::kInt));
  // float4 row loads need V % 4 == 0 and 16-byte aligned bases (a view may start anywhere).
  auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  const bool vec4 = V % 4 == 0 && aligned(z) && (!q.defined() || aligned(q));
  // Selection masses in fixed point: each token's exp() <= 1 becomes <= 2^bits, the sum over V stays < 2^63.
  int vbits = 0;
  while ((int64_t{1} << vbits) <= V) ++vbits;
  const float fx_scale = std::ldexp(1.0f, std::min(40, 62 - vbits));
  const auto qt = draft_probs.has_value() ? draft_probs->scalar_type() : at::kFloat;
  spec_cuda::Params pr{z.data_ptr<float>(), d.data_ptr<int64_t>(), q.defined() ? q.data_ptr<float>() : nullptr,
                       u.data_ptr<double>(), tokens.data_ptr<int64_t>(), num_accepted.data_ptr<int32_t>(),
                       error.data_ptr<int>(), unit_token.data_ptr<int64_t>(), unit_accept.data_ptr<int32_t>(), B, G, V,
                       temperature > 0 ? static_cast<float>(1.0 / temperature) : 1.f, static_cast<float>(top_p),
                       static_cast<float>(eta), tail_alpha > 0 ? static_cast<float>(std::log(tail_alpha)) : 0.f,
                       qt == at::kFloat ? 1e-3f : (qt == at::kHalf ? 1e-2f : 2e-2f), fx_scale, top_k,
                       temperature == 0, residual == "paper", tail_alpha > 0, vec4};
  if (B > 0) {
    spec_cuda::unit_kernel<<<static_cast<unsigned int>(B * (G + 1)), spec_cuda::kThreads, 0, stream>>>(pr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int kRowThreads = 128;
    spec_cuda::assemble_kernel<<<static_cast<unsigned int>((B + kRowThreads - 1) / kRowThreads), kRowThreads, 0,
                                 stream>>>(pr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!capturing) {
    const int err = error.item<int>();
    TORCH_CHECK_VALUE(!(err & spec_cuda::kBadLogit), "spec_sample: target_logits contains NaN or +inf (-inf is the ",
                      "only allowed mask value)");
    TORCH_CHECK_VALUE(!(err & spec_cuda::kEmptyRow), "spec_sample: target_logits has a row that is -inf everywhere");
    TORCH_CHECK_VALUE(!(err & spec_cuda::kBadProb), "spec_sample: draft_probs must be finite and >= 0");
    TORCH_CHECK_VALUE(!(err & spec_cuda::kBadSum), "spec_sample: draft_probs rows must sum to 1");
    TORCH_CHECK_VALUE(!(err & spec_cuda::kBadDraft), "spec_sample: draft_tokens must be token ids in [0, ", V, ")");
  }
  return {tokens, num_accepted};
}

}  // namespace rapid
