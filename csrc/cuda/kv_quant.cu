// CUDA launchers of the KV cache formats: quantize_kv, kv_append (quantize-on-write), dequantize_kv.
// Every argument is checked here; the kernels are in csrc/include/rapid/kv_quant.cuh.
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
using cuda_launch::float_type_of;
using cuda_launch::format_of;

bool has_scale(KvFormat f) { return f == KvFormat::kInt8 || f == KvFormat::kFp8 || f == KvFormat::kInt4; }

// Shapes of (data, scale, zero) for a logical [B, H, S, D]; empty vector = absent.
std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>> storage_shapes(
    KvFormat f, int64_t B, int64_t H, int64_t S, int64_t D) {
  if (f == KvFormat::kInt4) {
    const int64_t ng = D / cuda::int4_group((int)D);
    return {{B, H, S, D / 2}, {B, H, S, ng}, {B, H, S, ng}};
  }
  if (has_scale(f)) return {{B, H, S, D}, {B, H, S}, {}};
  return {{B, H, S, D}, {}, {}};
}

void check_part(const char* op, const char* name, const at::Tensor& t, const std::vector<int64_t>& shape,
                at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape) && t.scalar_type() == dtype, op, ": ", name, " must be ",
              dtype, " ", at::IntArrayRef(shape), ", got ", t.scalar_type(), " ", t.sizes());
  TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but x/data is on ", device);
  TORCH_CHECK(t.stride(-1) == 1, op, ": ", name, "'s last dimension must be contiguous (stride 1)");
}

cuda::Strides3 strides3(const at::Tensor& t) {
  if (t.dim() < 3) return {0, 0, 0};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

void check_head_dim(const char* op, KvFormat f, int64_t D) {
  TORCH_CHECK(D > 0, op, ": head_dim must be positive, got ", D);
  TORCH_CHECK(f != KvFormat::kInt4 || D % 16 == 0, op, ": int4 KV needs head_dim to be a multiple of 16, got ", D);
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
  p.x_type = float_type_of(x, "x");
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

void check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, H, T, D], got ", x.sizes());
  float_type_of(x, "x");
  TORCH_CHECK(x.size(0) * x.size(1) * x.size(2) < (int64_t(1) << 31) && x.size(3) < (int64_t(1) << 31), op,
              ": x is too large (", x.sizes(), ")");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cuda(const at::Tensor& x, const std::string& kv_dtype) {
  const char* op = "quantize_kv";
  const KvFormat f = format_of(kv_dtype, op);
  check_x(op, x);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  check_head_dim(op, f, D);
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
  const char* op = "kv_append";
  const KvFormat f = format_of(kv_dtype, op);
  check_x(op, x);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  check_head_dim(op, f, D);
  TORCH_CHECK(data.dim() == 4, op, ": data must be [B, H, S_max, D(/2)], got ", data.sizes());
  const int64_t s_max = data.size(2);
  TORCH_CHECK(start >= 0 && start + T <= s_max, op, ": slots [", start, ", ", start + T,
              ") do not fit a cache of ", s_max, " tokens");
  auto [dshape, sshape, zshape] = storage_shapes(f, B, H, s_max, D);
  check_part(op, "data", data, dshape, data_dtype(f), x.device());
  if (!sshape.empty())
    check_part(op, "scale", scale, sshape, f == KvFormat::kInt4 ? at::kHalf : at::kFloat, x.device());
  if (!zshape.empty()) check_part(op, "zero", zero, zshape, at::kHalf, x.device());
  quantize_into(data, scale, zero, x, start, f);
}

at::Tensor dequantize_kv_cuda(const at::Tensor& data, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& zero, const std::string& kv_dtype, int64_t head_dim) {
  const char* op = "dequantize_kv";
  const KvFormat f = format_of(kv_dtype, op);
  TORCH_CHECK(data.is_cuda(), op, ": data must be a CUDA tensor, got ", data.device());
  TORCH_CHECK(data.dim() == 4, op, ": data must be [B, H, T, D(/2)], got ", data.sizes());
  check_head_dim(op, f, head_dim);
  const int64_t B = data.size(0), H = data.size(1), T = data.size(2);
  auto [dshape, sshape, zshape] = storage_shapes(f, B, H, T, head_dim);
  check_part(op, "data", data, dshape, data_dtype(f), data.device());
  const bool s_given = scale.has_value() && scale->numel() > 0;
  const bool z_given = zero.has_value() && zero->numel() > 0;
  TORCH_CHECK(s_given == !sshape.empty(), op, ": scale must be ", sshape.empty() ? "absent" : "given",
              " for kv_dtype '", kv_dtype, "'");
  TORCH_CHECK(z_given == !zshape.empty(), op, ": zero must be ", zshape.empty() ? "absent" : "given",
              " for kv_dtype '", kv_dtype, "'");
  if (s_given) check_part(op, "scale", *scale, sshape, f == KvFormat::kInt4 ? at::kHalf : at::kFloat, data.device());
  if (z_given) check_part(op, "zero", *zero, zshape, at::kHalf, data.device());
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
