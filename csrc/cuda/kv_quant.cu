// CUDA launchers of the KV cache formats: quantize_kv, kv_append (quantize-on-write), dequantize_kv.
// Arguments are checked first by the host-compiled cuda_kv_checks.cpp; kernels: csrc/include/rapid/kv_quant.cuh.
// Only light ATen/c10 headers: the full <torch/all.h> triples nvcc time per architecture.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>
#include <tuple>
#include <vector>

#include "kv_launch.h"
#include "rapid/kv_quant.cuh"

namespace rapid {
namespace {

using cuda::FloatType;
using cuda::KvFormat;

using cuda_launch::data_dtype;
using cuda_launch::format_from_code;

bool has_scale(KvFormat f) { return f == KvFormat::kInt8 || f == KvFormat::kFp8 || f == KvFormat::kInt4; }

// Shapes of (data, scale, zero) for a logical [B, H, S, D] (arguments already checked).
std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>> storage_shapes(
    KvFormat f, int64_t B, int64_t H, int64_t S, int64_t D) {
  if (f == KvFormat::kInt4) {
    const int64_t ng = D / cuda::int4_group((int)D);
    return {{B, H, S, D / 2}, {B, H, S, ng}, {B, H, S, ng}};
  }
  if (has_scale(f)) return {{B, H, S, D}, {B, H, S}, {}};
  return {{B, H, S, D}, {}, {}};
}

cuda::Strides3 strides3(const at::Tensor& t) {
  if (t.dim() < 3) return {0, 0, 0};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

template <KvFormat F>
void launch_quantize(const cuda::QuantizeParams& p, cudaStream_t stream) {
  const int64_t rows = (int64_t)p.B * p.H * p.T;
  const int warps_per_block = 4;
  const int64_t blocks = std::min<int64_t>((rows + warps_per_block - 1) / warps_per_block, 1 << 20);
  cuda::quantize_kv_kernel<F><<<(unsigned)blocks, 32 * warps_per_block, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void quantize_into(at::Tensor& data, at::Tensor& scale, at::Tensor& zero, const at::Tensor& x,
                   int64_t start, KvFormat f) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::QuantizeParams p{};
  p.x = x.data_ptr();
  p.x_type = cuda_launch::float_type_unchecked(x);
  p.x_sb = x.stride(0), p.x_sh = x.stride(1), p.x_st = x.stride(2), p.x_sd = x.stride(3);
  p.data = data.data_ptr();
  p.data_s = strides3(data);
  p.scale = has_scale(f) ? scale.data_ptr() : nullptr;
  p.scale_s = has_scale(f) ? strides3(scale) : cuda::Strides3{0, 0, 0};
  p.zero = f == KvFormat::kInt4 ? zero.data_ptr() : nullptr;
  p.zero_s = f == KvFormat::kInt4 ? strides3(zero) : cuda::Strides3{0, 0, 0};
  p.B = (int)x.size(0), p.H = (int)x.size(1), p.T = (int)x.size(2), p.D = (int)x.size(3);
  p.start = start;
  if ((int64_t)p.B * p.H * p.T == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  switch (f) {
    case KvFormat::kF32: launch_quantize<KvFormat::kF32>(p, stream); break;
    case KvFormat::kBF16: launch_quantize<KvFormat::kBF16>(p, stream); break;
    case KvFormat::kF16: launch_quantize<KvFormat::kF16>(p, stream); break;
    case KvFormat::kInt8: launch_quantize<KvFormat::kInt8>(p, stream); break;
    case KvFormat::kInt4: launch_quantize<KvFormat::kInt4>(p, stream); break;
    case KvFormat::kFp8: launch_quantize<KvFormat::kFp8>(p, stream); break;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cuda(const at::Tensor& x, const std::string& kv_dtype) {
  const KvFormat f = format_from_code(cuda_checks::check_quantize_kv(x, kv_dtype));
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  auto [dshape, sshape, zshape] = storage_shapes(f, B, H, T, D);
  const auto opts = x.options();
  at::Tensor data = at::empty(dshape, opts.dtype(data_dtype(f)));
  at::Tensor scale = sshape.empty() ? at::empty({0}, opts.dtype(at::kFloat))
                                    : at::empty(sshape, opts.dtype(f == KvFormat::kInt4 ? at::kHalf : at::kFloat));
  at::Tensor zero = zshape.empty() ? at::empty({0}, opts.dtype(at::kFloat)) : at::empty(zshape, opts.dtype(at::kHalf));
  quantize_into(data, scale, zero, x, 0, f);
  return {data, scale, zero};
}

void kv_append_cuda(at::Tensor& data, at::Tensor& scale, at::Tensor& zero, const at::Tensor& x, int64_t start,
                    const std::string& kv_dtype) {
  const KvFormat f = format_from_code(cuda_checks::check_kv_append(data, scale, zero, x, start, kv_dtype));
  quantize_into(data, scale, zero, x, start, f);
}

at::Tensor dequantize_kv_cuda(const at::Tensor& data, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& zero, const std::string& kv_dtype, int64_t head_dim) {
  const KvFormat f = format_from_code(cuda_checks::check_dequantize_kv(data, scale, zero, kv_dtype, head_dim));
  const int64_t B = data.size(0), H = data.size(1), T = data.size(2);
  const bool s_given = scale.has_value() && scale->numel() > 0;
  const bool z_given = zero.has_value() && zero->numel() > 0;
  at::Tensor out = at::empty({B, H, T, head_dim}, data.options().dtype(at::kFloat));
  const int64_t n = out.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(data.device());
  cuda::DequantizeParams p{};
  p.data = data.data_ptr();
  p.data_s = strides3(data);
  p.scale = s_given ? scale->data_ptr() : nullptr;
  p.scale_s = s_given ? strides3(*scale) : cuda::Strides3{0, 0, 0};
  p.zero = z_given ? zero->data_ptr() : nullptr;
  p.zero_s = z_given ? strides3(*zero) : cuda::Strides3{0, 0, 0};
  p.out = out.data_ptr<float>();
  p.B = (int)B, p.H = (int)H, p.T = (int)T, p.D = (int)head_dim;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(data.device().index()).stream();
  const unsigned blocks = (unsigned)std::min<int64_t>((n + 255) / 256, 1 << 20);
  switch (f) {
#define RAPID_DEQ(FMT) \
  case FMT: cuda::dequantize_kv_kernel<FMT><<<blocks, 256, 0, stream>>>(p); break;
    RAPID_DEQ(KvFormat::kF32)
    RAPID_DEQ(KvFormat::kBF16)
    RAPID_DEQ(KvFormat::kF16)
    RAPID_DEQ(KvFormat::kInt8)
    RAPID_DEQ(KvFormat::kInt4)
    RAPID_DEQ(KvFormat::kFp8)
#undef RAPID_DEQ
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace rapid
