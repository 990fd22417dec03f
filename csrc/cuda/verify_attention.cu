// CUDA launcher of verify_attention: argument checks, split choice, workspace, dispatch on
// (KV format, head_dim), then the split kernel and the merge kernel on the current stream.
// Kernels: csrc/include/rapid/verify_attention.cuh.
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>

#include "kv_launch.h"
#include "rapid/verify_attention.cuh"

namespace rapid {
namespace {

using cuda::FloatType;
using cuda::KvFormat;

constexpr int kDecodeMaxQueries = 64;  // above: a prefill chunk, one split (row tiles fill the GPU)

using cuda_launch::data_dtype;

int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

// Keys per split: a power-of-two multiple of 256 giving about 4 blocks per SM. Depends only on
// (S_max, B, kv_heads, SM count), so decode results do not change with n_query (batch invariance).
int choose_split_size(int64_t s_max, int64_t B, int64_t kv_heads, int64_t n_query, int device) {
  int64_t split = 256;
  if (n_query > kDecodeMaxQueries) {
    while (split < s_max) split *= 2;
    return (int)split;
  }
  const int64_t target = 4 * (int64_t)sm_count(device);
  while (split < s_max && B * kv_heads * ((s_max + split - 1) / split) > target) split *= 2;
  return (int)split;
}

void check_kv(const char* name, const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype,
              const at::Device& device, int vec_bytes) {
  TORCH_CHECK(t.sizes() == shape && t.scalar_type() == dtype, "verify_attention: ", name, " must be ", dtype, " ",
              shape, ", got ", t.scalar_type(), " ", t.sizes());
  TORCH_CHECK(t.device() == device, "verify_attention: ", name, " is on ", t.device(), " but q is on ", device);
  TORCH_CHECK(t.stride(-1) == 1, "verify_attention: ", name, "'s last dimension must be contiguous (stride 1)");
  if (vec_bytes == 0) return;
  const int64_t es = t.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % vec_bytes == 0 &&
                       (t.stride(0) * es) % vec_bytes == 0 && (t.stride(1) * es) % vec_bytes == 0 &&
                       (t.stride(2) * es) % vec_bytes == 0;
  TORCH_CHECK(aligned, "verify_attention: ", name, " must start on a ", vec_bytes,
              "-byte boundary with batch/head/token strides that keep every row aligned (vector loads)");
}

template <KvFormat F, int D>
void launch(const cuda::VerifyParams& p, int B, cudaStream_t stream, int device) {
  const int rows_cap = std::min(cuda::kRowsPerBlock, p.rows);
  const size_t smem = sizeof(float) * cuda::smem_floats(D, rows_cap);
  auto kernel = cuda::verify_split_kernel<F, D>;
  if (smem > 48 * 1024) {
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    TORCH_CHECK(smem <= (size_t)optin, "verify_attention: head_dim ", D, " needs ", smem,
                " bytes of shared memory per block, this GPU allows ", optin);
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  }
  const dim3 grid(p.n_split, (p.rows + cuda::kRowsPerBlock - 1) / cuda::kRowsPerBlock, B * p.kv_heads);
  kernel<<<grid, cuda::kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t out_rows = (int64_t)B * p.n_query * p.q_heads;
  const int rows_per_block = 4;
  cuda::merge_splits_kernel<D><<<(unsigned)((out_rows + rows_per_block - 1) / rows_per_block), 32 * rows_per_block,
                                  0, stream>>>(p, B);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <KvFormat F>
void launch_for_dim(const cuda::VerifyParams& p, int D, int B, cudaStream_t stream, int device) {
  switch (D) {
    case 64: return launch<F, 64>(p, B, stream, device);
    case 80: return launch<F, 80>(p, B, stream, device);
    case 96: return launch<F, 96>(p, B, stream, device);
    case 128: return launch<F, 128>(p, B, stream, device);
    case 256: return launch<F, 256>(p, B, stream, device);
    default: TORCH_CHECK(false, "verify_attention (cuda): head_dim must be 64, 80, 96, 128 or 256, got ", D);
  }
}

cuda::Strides3 strides3(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

}  // namespace

at::Tensor verify_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& k_zero,
                                 const c10::optional<at::Tensor>& v_scale, const c10::optional<at::Tensor>& v_zero,
                                 const at::Tensor& seqlens, const std::string& kv_dtype, double sm_scale) {
  const KvFormat f = cuda_launch::format_of(kv_dtype, "verify_attention");
  TORCH_CHECK(q.is_cuda(), "verify_attention: q must be a CUDA tensor, got ", q.device());
  TORCH_CHECK(q.dim() == 4, "verify_attention: q must be [B, n_query, q_heads, D], got ", q.sizes());
  const FloatType q_type = cuda_launch::float_type_of(q, "verify_attention: q");
  TORCH_CHECK(q.stride(3) == 1, "verify_attention: q's last dimension must be contiguous (stride 1)");
  const int64_t B = q.size(0), nq = q.size(1), qh = q.size(2), D = q.size(3);
  TORCH_CHECK(k.dim() == 4 && v.dim() == 4, "verify_attention: k and v must be [B, kv_heads, S_max, D(/2)], got ",
              k.sizes(), " and ", v.sizes());
  const int64_t kvh = k.size(1), s_max = k.size(2);
  TORCH_CHECK(kvh > 0 && qh % kvh == 0, "verify_attention: q_heads (", qh, ") must be a multiple of kv_heads (",
              kvh, ")");
  TORCH_CHECK(D == 64 || D == 80 || D == 96 || D == 128 || D == 256,
              "verify_attention (cuda): head_dim must be 64, 80, 96, 128 or 256, got ", D);
  TORCH_CHECK(f != KvFormat::kInt4 || D % 16 == 0, "verify_attention: int4 KV needs head_dim % 16 == 0, got ", D);
  const int vec = cuda::vector_bytes(f, (int)D);
  const int64_t data_d = f == KvFormat::kInt4 ? D / 2 : D;
  check_kv("k", k, {B, kvh, s_max, data_d}, data_dtype(f), q.device(), vec);
  check_kv("v", v, {B, kvh, s_max, data_d}, data_dtype(f), q.device(), vec);
  const bool scaled = f == KvFormat::kInt8 || f == KvFormat::kFp8 || f == KvFormat::kInt4;
  auto given = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->numel() > 0; };
  TORCH_CHECK(given(k_scale) == scaled && given(v_scale) == scaled, "verify_attention: k_scale and v_scale must be ",
              scaled ? "given" : "absent", " for kv_dtype '", kv_dtype, "'");
  TORCH_CHECK(given(k_zero) == (f == KvFormat::kInt4) && given(v_zero) == (f == KvFormat::kInt4),
              "verify_attention: k_zero and v_zero must be ", f == KvFormat::kInt4 ? "given" : "absent",
              " for kv_dtype '", kv_dtype, "'");
  if (f == KvFormat::kInt4) {
    const int64_t ng = D / cuda::int4_group((int)D);
    check_kv("k_scale", *k_scale, {B, kvh, s_max, ng}, at::kHalf, q.device(), 0);
    check_kv("v_scale", *v_scale, {B, kvh, s_max, ng}, at::kHalf, q.device(), 0);
    check_kv("k_zero", *k_zero, {B, kvh, s_max, ng}, at::kHalf, q.device(), 0);
    check_kv("v_zero", *v_zero, {B, kvh, s_max, ng}, at::kHalf, q.device(), 0);
    TORCH_CHECK(k_zero->strides() == k_scale->strides() && v_zero->strides() == v_scale->strides(),
                "verify_attention: k_zero/v_zero must have the same strides as k_scale/v_scale");
  } else if (scaled) {
    check_kv("k_scale", *k_scale, {B, kvh, s_max}, at::kFloat, q.device(), 0);
    check_kv("v_scale", *v_scale, {B, kvh, s_max}, at::kFloat, q.device(), 0);
  }
  TORCH_CHECK(seqlens.scalar_type() == at::kInt && seqlens.dim() == 1 && seqlens.size(0) == B,
              "verify_attention: seqlens must be int32 [", B, "], got ", seqlens.scalar_type(), " ", seqlens.sizes());
  TORCH_CHECK(seqlens.device() == q.device(), "verify_attention: seqlens is on ", seqlens.device(), " but q is on ",
              q.device());
  TORCH_CHECK(s_max < (int64_t(1) << 30) && nq * (qh / kvh) <= 65535LL * cuda::kRowsPerBlock && B * kvh <= 65535,
              "verify_attention: sizes out of range for the CUDA kernel (S_max < 2^30, n_query * group <= 4M, "
              "B * kv_heads <= 65535)");

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({B, nq, qh, D}, q.options());
  if (out.numel() == 0) return out;
  // Values of seqlens: one host sync, skipped while a CUDA graph is being captured (the kernels
  // clamp to [0, S_max] either way, so a bad value can never read out of bounds).
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
    auto [lo_t, hi_t] = at::aminmax(seqlens);
    const at::Tensor lohi = at::stack({lo_t, hi_t}).cpu();
    const int lo = lohi[0].item<int>(), hi = lohi[1].item<int>();
    TORCH_CHECK(lo >= nq && hi <= s_max, "verify_attention: seqlens must lie in [n_query=", nq, ", S_max=", s_max,
                "], got values in [", lo, ", ", hi, "]");
  }

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
