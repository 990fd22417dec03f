// CUDA launcher of rapid::spec_sample: argument checks (c10::ValueError naming the argument), fp32 views, then the
// split path (csrc/include/rapid/spec_sample_split.cuh): five kernels, each unit's row spread over many blocks.
// Draft ids, NaN/+inf logits and bad draft rows are checked inside the kernels (no kernel reads with a bad id)
// and come back as one error word read after them: the call's only host sync (skipped while a CUDA graph is
// being captured: the outputs are then all -1 / 0 on bad input).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "ops.h"
#include "rapid/spec_sample_split.cuh"

namespace rapid {

std::tuple<at::Tensor, at::Tensor> spec_sample_cuda(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                                                    const c10::optional<at::Tensor>& draft_probs,
                                                    const at::Tensor& uniforms, double temperature, int64_t top_k,
                                                    double top_p, double eta, double tail_alpha,
                                                    const std::string& residual) {
  auto is_float = [](at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; };
  RAPID_CHECK_VALUE(target_logits.dim() == 3 && target_logits.is_cuda() && is_float(target_logits.scalar_type()),
                    "spec_sample: target_logits must be a CUDA float32/bfloat16/float16 [B, gamma+1, V] tensor, got ",
                    target_logits.scalar_type(), " ", target_logits.sizes(), " on ", target_logits.device());
  const int64_t B = target_logits.size(0), G = target_logits.size(1) - 1, V = target_logits.size(2);
  RAPID_CHECK_VALUE(G >= 0 && V >= 1 && V < (int64_t{1} << 31), "spec_sample: target_logits needs gamma+1 >= 1 and ",
                    "1 <= V < 2^31, got ", target_logits.sizes());
  const auto dev = target_logits.device();
  RAPID_CHECK_VALUE(draft_tokens.scalar_type() == at::kLong && draft_tokens.dim() == 2 && draft_tokens.size(0) == B &&
                        draft_tokens.size(1) == G && draft_tokens.device() == dev,
                    "spec_sample: draft_tokens must be int64 [B, gamma] = [", B, ", ", G, "] on ", dev, ", got ",
                    draft_tokens.scalar_type(), " ", draft_tokens.sizes(), " on ", draft_tokens.device());
  RAPID_CHECK_VALUE(uniforms.scalar_type() == at::kDouble && uniforms.dim() == 2 && uniforms.size(0) == B &&
                        uniforms.size(1) == G + 1 && uniforms.device() == dev,
                    "spec_sample: uniforms must be float64 [B, gamma+1] = [", B, ", ", G + 1, "] on ", dev);
  if (draft_probs.has_value())
    RAPID_CHECK_VALUE(is_float(draft_probs->scalar_type()) && draft_probs->dim() == 3 && draft_probs->size(0) == B &&
                          draft_probs->size(1) == G && draft_probs->size(2) == V && draft_probs->device() == dev,
                      "spec_sample: draft_probs must be float32/bfloat16/float16 [B, gamma, V] = [", B, ", ", G, ", ",
                      V, "] on ", dev, ", got ", draft_probs->scalar_type(), " ", draft_probs->sizes());
  RAPID_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0,
                    "spec_sample: temperature must be a finite number >= 0 (0 = greedy), got ", temperature);
  RAPID_CHECK_VALUE(top_k >= 0, "spec_sample: top_k must be >= 0 (0 = off), got ", top_k);
  RAPID_CHECK_VALUE(top_p > 0 && top_p <= 1, "spec_sample: top_p must be in (0, 1] (1 = off), got ", top_p);
  RAPID_CHECK_VALUE(std::isfinite(eta), "spec_sample: eta must be a finite number, got ", eta);
  RAPID_CHECK_VALUE(tail_alpha >= 0 && tail_alpha <= 1, "spec_sample: tail_alpha must be in [0, 1], got ", tail_alpha);
  RAPID_CHECK_VALUE(residual == "exact" || residual == "paper",
                    "spec_sample: residual must be 'exact' or 'paper', got '", residual, "'");
  const c10::cuda::CUDAGuard guard(dev);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  const at::Tensor z = target_logits.to(at::kFloat).contiguous();
  at::Tensor q;
  if (draft_probs.has_value()) q = draft_probs->to(at::kFloat).contiguous();
  const at::Tensor d = draft_tokens.contiguous(), u = uniforms.contiguous();
  at::Tensor tokens = at::empty({B, G + 1}, z.options().dtype(at::kLong));  // every entry written by the assembler
  at::Tensor num_accepted = at::empty({B}, z.options().dtype(at::kInt));
  if (B == 0) return {tokens, num_accepted};

  using namespace spec_cuda;
  const int64_t U = B * (G + 1);
  // Candidate capacity: the finishing block holds z, q, id (4 B each) and a uint16 boundary list per candidate in
  // dynamic shared memory, next to its static shared memory; at most 16384 (positions fit 15 bits).
  static int max_dyn = -1, static_smem = 0;
  if (max_dyn < 0) {
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev.index()));
    cudaFuncAttributes fa{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&fa, finish_kernel));
    static_smem = static_cast<int>(fa.sharedSizeBytes);
    max_dyn = optin - static_smem - 1024;
    C10_CUDA_CHECK(cudaFuncSetAttribute(finish_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_dyn));
  }
  constexpr int64_t kPerCand = 3 * 4 + 2;
  const int64_t cap_dev = std::min<int64_t>(16384, (max_dyn / kPerCand) / 512 * 512);
  const bool use_hist = V > cap_dev;
  const int64_t cap = use_hist ? cap_dev : V;  // small V: every token fits
  // Big slices: enough blocks to fill the GPU for small calls, long enough to amortize the histogram flush.
  const int64_t slice = std::min<int64_t>((V + 1023) / 1024 * 1024, U * V <= (int64_t{1} << 22) ? 2048 : 8192);
  const int64_t ns = (V + slice - 1) / slice, ns_small = (V + kSmallSlice - 1) / kSmallSlice;
  RAPID_CHECK_VALUE(U * std::max(ns, ns_small) < (int64_t{1} << 31), "spec_sample: target_logits ",
                    target_logits.sizes(),
                    " needs more than 2^31 CUDA blocks");

  // One scratch buffer, carved in 16-byte aligned pieces.
  int64_t bytes = 0;
  auto take = [&](int64_t n) { const int64_t at = bytes; bytes += (n + 15) / 16 * 16; return at; };
  const int64_t o_pmax = take(U * ns * 4), o_pq = take(U * ns * 4), o_perr = take(U * ns * 4);
  const int64_t o_pe = take(U * ns * 4);
  const int64_t o_zmax = take(U * 4), o_err = take(U * 4), o_mode = take(U * 4), o_bhi = take(U * 4);
  const int64_t o_beyond = take(U * 8), o_ticket = take(U * 4), o_fill = take(U * 4);
  const int64_t o_hc = take(use_hist ? U * kHistBins * 4 : 0), o_hm = take(use_hist ? U * kHistBins * 8 : 0);
  const int64_t o_sb = take(U * ns_small * 4), o_sl = take(U * ns_small * 4);
  const int64_t o_cand = take(U * cap * static_cast<int64_t>(sizeof(Cand)));
  // Per-slice lists of the histogram blocks (a sixteenth of a slice, at least 256 tokens): when they hold every
  // candidate, the gather pass (a third read of the logits) is skipped. Off by default: writing the lists costs
  // the histogram blocks more than the gather pass (docs/BENCHMARKS.md, H200). RAPID_SPEC_SAMPLE_LISTS=1 turns
  // them on (the GPU check runs both).
  const bool use_local = use_hist && std::getenv("RAPID_SPEC_SAMPLE_LISTS") != nullptr;
  const int64_t local_cap = std::max<int64_t>(slice / 16, 256);
  const int64_t o_local = take(use_local ? U * ns * local_cap * static_cast<int64_t>(sizeof(Cand)) : 0);
  const int64_t o_llen = take(U * ns * 4), o_minb = take(U * 4), o_lists = take(U * 4);
  const int64_t o_tok = take(U * 8), o_acc = take(U * 4), o_error = take(4);
  at::Tensor scratch = at::empty({bytes}, z.options().dtype(at::kByte));
  char* base = reinterpret_cast<char*>(scratch.data_ptr());
  auto at_ = [&](int64_t off) { return static_cast<void*>(base + off); };

  // float4 row loads need V % 4 == 0 and 16-byte aligned bases (a view may start anywhere).
  auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  const bool vec4 = V % 4 == 0 && aligned(z) && (!q.defined() || aligned(q));
  // Selection masses in fixed point: each token's exp() <= 1 becomes <= 2^32 (the histogram packs a slice's
  // count and mass in one 64-bit word), the sum over V stays < 2^63.
  int vbits = 0;
  while ((int64_t{1} << vbits) <= V) ++vbits;
  const float fx_scale = std::ldexp(1.0f, std::min(32, 62 - vbits));
  const auto qt = draft_probs.has_value() ? draft_probs->scalar_type() : at::kFloat;
  Params pr{};
  pr.logits = z.data_ptr<float>();
  pr.drafts = d.data_ptr<int64_t>();
  pr.q = q.defined() ? q.data_ptr<float>() : nullptr;
  pr.uniforms = u.data_ptr<double>();
  pr.tokens = tokens.data_ptr<int64_t>();
  pr.num_accepted = num_accepted.data_ptr<int32_t>();
  pr.error = static_cast<int*>(at_(o_error));
  pr.unit_token = static_cast<int64_t*>(at_(o_tok));
  pr.unit_accept = static_cast<int32_t*>(at_(o_acc));
  pr.B = B, pr.G = G, pr.V = V;
  pr.inv_t = temperature > 0 ? static_cast<float>(1.0 / temperature) : 1.f;
  pr.top_p = static_cast<float>(top_p);
  pr.eta = static_cast<float>(eta);
  pr.log_alpha = tail_alpha > 0 ? static_cast<float>(std::log(tail_alpha)) : 0.f;
  pr.sum_tol = qt == at::kFloat ? 1e-3f : (qt == at::kHalf ? 1e-2f : 2e-2f);
  pr.fx_scale = fx_scale;
  pr.top_k = top_k;
  pr.greedy = temperature == 0, pr.paper = residual == "paper", pr.tail = tail_alpha > 0, pr.vec4 = vec4;
  pr.part_max = static_cast<float*>(at_(o_pmax));
  pr.part_qsum = static_cast<float*>(at_(o_pq));
  pr.part_esum = static_cast<float*>(at_(o_pe));
  pr.part_err = static_cast<int*>(at_(o_perr));
  pr.unit_zmax = static_cast<float*>(at_(o_zmax));
  pr.unit_err = static_cast<int*>(at_(o_err));
  pr.unit_mode = static_cast<int*>(at_(o_mode));
  pr.unit_bhi = static_cast<int*>(at_(o_bhi));
  pr.unit_beyond = static_cast<unsigned long long*>(at_(o_beyond));
  pr.unit_ticket = static_cast<unsigned int*>(at_(o_ticket));
  pr.unit_fill = static_cast<unsigned int*>(at_(o_fill));
  pr.hist_count = static_cast<unsigned int*>(at_(o_hc));
  pr.hist_mass = static_cast<unsigned long long*>(at_(o_hm));
  pr.seg_base = static_cast<int*>(at_(o_sb));
  pr.seg_len = static_cast<int*>(at_(o_sl));
  pr.cand = static_cast<Cand*>(at_(o_cand));
  pr.cand_local = static_cast<Cand*>(at_(o_local));
  pr.local_len = static_cast<int*>(at_(o_llen));
  pr.unit_minbloc = static_cast<int*>(at_(o_minb));
  pr.unit_lists = static_cast<int*>(at_(o_lists));
  pr.local_cap = local_cap, pr.use_local = use_local;
  // Histogram atomics: three native 32-bit shared atomics per token by default; RAPID_SPEC_SAMPLE_HIST64=1 packs
  // count and mass in one 64-bit shared atomic instead (which the hardware may run as a CAS loop; the GPU
  // check times both).
  pr.hist64 = std::getenv("RAPID_SPEC_SAMPLE_HIST64") != nullptr;
  pr.slice = slice, pr.ns = ns, pr.ns_small = ns_small, pr.cap = cap, pr.use_hist = use_hist;

  const auto blocks = [](int64_t n) { return static_cast<unsigned int>(n); };
  stats_kernel<<<blocks(U * ns), kSplitThreads, 0, stream>>>(pr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  hist_kernel<<<blocks(U * ns), kSplitThreads, 0, stream>>>(pr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!pr.greedy) {
    gather_kernel<<<blocks(std::min<int64_t>(U * ns_small, 4096)), kSplitThreads, 0, stream>>>(pr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t dyn = pr.greedy ? 0 : cap * kPerCand;
  finish_kernel<<<blocks(U), kThreads, static_cast<size_t>(dyn), stream>>>(pr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  assemble_kernel<<<1, kAssembleThreads, 0, stream>>>(pr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!capturing) {
    int err = 0;  // the one sync of the call
    C10_CUDA_CHECK(cudaMemcpyAsync(&err, pr.error, sizeof(int), cudaMemcpyDeviceToHost, stream));
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    RAPID_CHECK_VALUE(!(err & spec_cuda::kBadLogit), "spec_sample: target_logits contains NaN or +inf (-inf is the ",
                      "only allowed mask value)");
    RAPID_CHECK_VALUE(!(err & spec_cuda::kEmptyRow), "spec_sample: target_logits has a row that is -inf everywhere");
    RAPID_CHECK_VALUE(!(err & spec_cuda::kBadProb), "spec_sample: draft_probs must be finite and >= 0");
    RAPID_CHECK_VALUE(!(err & spec_cuda::kBadSum), "spec_sample: draft_probs rows must sum to 1");
    RAPID_CHECK_VALUE(!(err & spec_cuda::kBadDraft), "spec_sample: draft_tokens must be token ids in [0, ", V, ")");
  }
  return {tokens, num_accepted};
}

}  // namespace rapid
