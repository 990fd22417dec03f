// CUDA launcher of verify_attention: split choice, workspace, dispatch on (KV format, head_dim,
// q dtype), then the split kernel and the merge kernel on the current stream. Arguments are checked
// first by the host-compiled cuda_kv_checks.cpp (nothing here formats an error message).
// Kernels: rapid/verify_attention_mma.cuh (tensor cores: bf16/fp16 q, head_dim 64/128) and
// rapid/verify_attention.cuh (fp32 FMA: fp32 q or other head_dims; the merge kernel).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "kv_launch.h"
#include "rapid/check.h"
#include "rapid/verify_attention_mma.cuh"

namespace rapid {
namespace {

using cuda::FloatType;
using cuda::KvFormat;

constexpr int kDecodeMaxQueries = 64;  // above: a prefill chunk, one split (row tiles fill the GPU)

int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

// Tuning knob RAPID_CUDA_VERIFY_BLOCKS_PER_SM (default 2, 1..64); read each call, so a benchmark can
// sweep it. Changing it between calls changes split boundaries, hence the last bits of the results.
int blocks_per_sm() {
  const char* env = std::getenv("RAPID_CUDA_VERIFY_BLOCKS_PER_SM");
  const int v = env ? std::atoi(env) : 0;
  return v >= 1 && v <= 64 ? v : 2;
}

// Keys per split: a power-of-two multiple of 256 giving about 2 blocks per SM (fewer, longer blocks amortize
// each block's fixed costs: docs/BENCHMARKS.md, H200). Depends only on (S_max, B, kv_heads, SM count), so decode
// results do not change with n_query (batch invariance).
int choose_split_size(int64_t s_max, int64_t B, int64_t kv_heads, int64_t n_query, int device) {
  int64_t split = 256;
  if (n_query > kDecodeMaxQueries) {
    while (split < s_max) split *= 2;
    return (int)split;
  }
  const int64_t target = blocks_per_sm() * (int64_t)sm_count(device);
  while (split < s_max && B * kv_heads * ((s_max + split - 1) / split) > target) split *= 2;
  return (int)split;
}

template <int D>
void launch_merge(const cuda::VerifyParams& p, int B, cudaStream_t stream) {
  const int64_t out_rows = (int64_t)B * p.n_query * p.q_heads;
  const int rows_per_block = 4;
  cuda::merge_splits_kernel<D><<<(unsigned)((out_rows + rows_per_block - 1) / rows_per_block), 32 * rows_per_block,
                                  0, stream>>>(p, B);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Tensor-core kernel variant, RAPID_CUDA_VERIFY_KERNEL=staged|quarters|direct (read each call; default
// staged; rapid/verify_attention_mma.cuh describes them). staged and quarters load each 64-key step once
// into shared memory for all row tiles of the block; staged computes a tile with one warp, quarters with
// 4 (a quarter of the one-query chain: faster at one query, slower at 11, so it suits plain decoding).
// direct streams K/V from global memory into mma fragments per warp, one m16 row tile per block (slower
// than staged at 1 and 11 queries; timings: docs/BENCHMARKS.md, H100). Each keeps a row's result independent of n_query; they
// differ from each other in the last bits.
enum class MmaKernel { kStaged, kQuarters, kDirect };
MmaKernel mma_kernel() {
  const char* env = std::getenv("RAPID_CUDA_VERIFY_KERNEL");
  if (env != nullptr && std::strcmp(env, "quarters") == 0) return MmaKernel::kQuarters;
  if (env != nullptr && std::strcmp(env, "direct") == 0) return MmaKernel::kDirect;
  return MmaKernel::kStaged;
}

template <KvFormat F, int D, typename MT, int kWarpsPerTile, int kTiles>
void launch_staged(const cuda::VerifyParams& p, int B, cudaStream_t stream) {
  // int8 / fp8 token scales on scores and probabilities with bf16 q (fp16 q: per element, range)
  constexpr bool kFold = cuda::kTokenScaled<F> && std::is_same<MT, __nv_bfloat16>::value;
  constexpr int kBlockRows = cuda::kMmaRows * kTiles;
  const int64_t row_groups = (p.rows + kBlockRows - 1) / kBlockRows;
  const dim3 grid((unsigned)(row_groups * p.n_split), 1, B * p.kv_heads);
  cuda::verify_staged_kernel<F, D, MT, kFold, kWarpsPerTile, kTiles>
      <<<grid, 32 * kWarpsPerTile * kTiles, 0, stream>>>(p);
}

template <KvFormat F, int D, typename MT>
void launch_mma(const cuda::VerifyParams& p, int B, cudaStream_t stream) {
  switch (mma_kernel()) {
    case MmaKernel::kStaged: launch_staged<F, D, MT, 1, 4>(p, B, stream); break;
    case MmaKernel::kQuarters:  // tiles per block do not change a row's arithmetic: chosen by row count
      if (p.rows <= cuda::kMmaRows) launch_staged<F, D, MT, 4, 1>(p, B, stream);
      else if (p.rows <= 2 * cuda::kMmaRows) launch_staged<F, D, MT, 4, 2>(p, B, stream);
      else launch_staged<F, D, MT, 4, 4>(p, B, stream);
      break;
    case MmaKernel::kDirect: {
      const int64_t m_tiles = (p.rows + cuda::kMmaRows - 1) / cuda::kMmaRows;
      const dim3 grid((unsigned)(m_tiles * p.n_split), 1, B * p.kv_heads);  // m tiles of one split side by side (L2)
      cuda::verify_mma_kernel<F, D, MT><<<grid, cuda::kMmaThreads, 0, stream>>>(p);
      break;
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_merge<D>(p, B, stream);
}

template <KvFormat F, int D>
void launch(const cuda::VerifyParams& p, int B, cudaStream_t stream, int device) {
  if constexpr (cuda::mma_head_dim(D) && F != KvFormat::kF32) {  // fp32 KV: the FMA kernel (rare format)
    if (p.q_type == FloatType::kBF16) return launch_mma<F, D, __nv_bfloat16>(p, B, stream);
    if (p.q_type == FloatType::kF16) return launch_mma<F, D, __half>(p, B, stream);
  }
  const int rows_cap = std::min(cuda::kRowsPerBlock, p.rows);
  const size_t smem = sizeof(float) * cuda::smem_floats(D, rows_cap);
  auto kernel = cuda::verify_split_kernel<F, D>;
  if (smem > 48 * 1024) {
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    RAPID_CHECK(smem <= (size_t)optin, "verify_attention: this head_dim needs more shared memory per block than the GPU allows");
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  }
  const dim3 grid(p.n_split, (p.rows + cuda::kRowsPerBlock - 1) / cuda::kRowsPerBlock, B * p.kv_heads);
  kernel<<<grid, cuda::kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_merge<D>(p, B, stream);
}

template <KvFormat F>
void launch_for_dim(const cuda::VerifyParams& p, int D, int B, cudaStream_t stream, int device) {
  switch (D) {
    case 64: return launch<F, 64>(p, B, stream, device);
    case 80: return launch<F, 80>(p, B, stream, device);
    case 96: return launch<F, 96>(p, B, stream, device);
    case 128: return launch<F, 128>(p, B, stream, device);
    case 256: return launch<F, 256>(p, B, stream, device);
    default: RAPID_CHECK(false, "verify_attention (cuda): unsupported head_dim");  // checked before
  }
}

cuda::Strides3 strides3(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

}  // namespace

at::Tensor verify_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& k_zero,
                                 const c10::optional<at::Tensor>& v_scale, const c10::optional<at::Tensor>& v_zero,
                                 const at::Tensor& seqlens, const std::string& kv_dtype, double sm_scale) {
  // Values of seqlens: one host sync, skipped while a CUDA graph is being captured (the kernels
  // clamp to [0, S_max] either way, so a bad value can never read out of bounds).
  const bool capturing = q.is_cuda() && c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  const cuda_checks::VerifyArgs a = cuda_checks::check_verify_attention(
      q, k, v, k_scale, k_zero, v_scale, v_zero, seqlens, kv_dtype, !capturing, 65535LL * cuda::kRowsPerBlock);
  const KvFormat f = cuda_launch::format_from_code(a.format);
  const FloatType q_type = static_cast<FloatType>(a.q_type);
  const int64_t B = a.B, nq = a.n_query, qh = a.q_heads, D = a.head_dim, kvh = a.kv_heads, s_max = a.s_max;
  const bool scaled = f == KvFormat::kInt8 || f == KvFormat::kFp8 || f == KvFormat::kInt4;

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({B, nq, qh, D}, q.options());
  if (out.numel() == 0) return out;

  const int device = q.device().index();
  const int64_t rows = nq * (qh / kvh);
  const int split = choose_split_size(s_max, B, kvh, nq, device);
  const int64_t n_split = (s_max + split - 1) / split;
  at::Tensor part_out = at::empty({B, kvh, rows, n_split, D}, q.options().dtype(at::kFloat));
  at::Tensor part_lse = at::empty({B, kvh, rows, n_split}, q.options().dtype(at::kFloat));

  cuda::VerifyParams p{};
  p.q = q.data_ptr();
  p.q_type = q_type;
  p.q_sb = q.stride(0), p.q_sh = q.stride(2), p.q_sn = q.stride(1);
  p.k = k.data_ptr(), p.v = v.data_ptr();
  p.k_s = strides3(k), p.v_s = strides3(v);
  if (scaled) {
    p.k_scale = k_scale->data_ptr(), p.v_scale = v_scale->data_ptr();
    p.ks_s = strides3(*k_scale), p.vs_s = strides3(*v_scale);
  }
  if (f == KvFormat::kInt4) p.k_zero = k_zero->data_ptr(), p.v_zero = v_zero->data_ptr();
  p.seqlens = seqlens.data_ptr<int>();
  p.part_out = part_out.data_ptr<float>();
  p.part_lse = part_lse.data_ptr<float>();
  p.out = out.data_ptr();
  p.o_sb = out.stride(0), p.o_sn = out.stride(1), p.o_sh = out.stride(2);
  p.n_query = (int)nq, p.q_heads = (int)qh, p.kv_heads = (int)kvh, p.group = (int)(qh / kvh);
  p.rows = (int)rows, p.s_max = (int)s_max, p.split_size = split, p.n_split = (int)n_split;
  p.qk_scale_log2 = (float)(sm_scale * 1.4426950408889634);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  switch (f) {
    case KvFormat::kF32: launch_for_dim<KvFormat::kF32>(p, (int)D, (int)B, stream, device); break;
    case KvFormat::kBF16: launch_for_dim<KvFormat::kBF16>(p, (int)D, (int)B, stream, device); break;
    case KvFormat::kF16: launch_for_dim<KvFormat::kF16>(p, (int)D, (int)B, stream, device); break;
    case KvFormat::kInt8: launch_for_dim<KvFormat::kInt8>(p, (int)D, (int)B, stream, device); break;
    case KvFormat::kInt4: launch_for_dim<KvFormat::kInt4>(p, (int)D, (int)B, stream, device); break;
    case KvFormat::kFp8: launch_for_dim<KvFormat::kFp8>(p, (int)D, (int)B, stream, device); break;
  }
  return out;
}

}  // namespace rapid
