// CPU launchers for KV quantization: quantize_kv, dequantize_kv, kv_append (quantize-on-write).
// The per-token math is rapid/kv_quant.h; here: argument checks, strides, parallel loop over rows.
#include <ATen/Parallel.h>

#include "kv_checks.h"
#include "ops.h"
#include "rapid/kv_quant.h"

namespace rapid {
namespace {

// Row (b, h, t) addressing of one storage tensor (data, scale or zero); empty tensor -> null pointers.
struct RowAddr {
  char* base = nullptr;
  int64_t elem = 0, sb = 0, sh = 0, st = 0;
  explicit RowAddr(const at::Tensor& t) {
    if (!t.defined() || t.numel() == 0) return;
    base = static_cast<char*>(t.data_ptr());
    elem = t.element_size();
    sb = t.stride(0), sh = t.stride(1), st = t.stride(2);
  }
  void* at(int64_t b, int64_t h, int64_t t) const {
    return base ? base + (b * sb + h * sh + t * st) * elem : nullptr;
  }
};

// Quantize x (fp32 contiguous [B, H, T, D]) into rows [start, start+T) of the storage tensors.
void quantize_rows(KvFormat f, const at::Tensor& x, const at::Tensor& data, const at::Tensor& scale,
                   const at::Tensor& zero, int64_t start) {
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  const float* xp = x.data_ptr<float>();
  const RowAddr d(data), s(scale), z(zero);
  at::parallel_for(0, B * H * T, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / (H * T), h = (r / T) % H, t = r % T;
      quantize_row(f, xp + r * D, D, d.at(b, h, start + t), s.at(b, h, start + t), z.at(b, h, start + t));
    }
  });
}

void check_x(const char* op, const at::Tensor& x) {
  RAPID_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  RAPID_CHECK(x.dim() == 4, op, ": x must be [B, H, T, D], got ", x.sizes());
  RAPID_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cpu(const at::Tensor& x, const std::string& kv_dtype) {
  const KvFormat f = parse_kv_dtype(kv_dtype, "quantize_kv");
  check_x("quantize_kv", x);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  if (f == KvFormat::kInt4) RAPID_CHECK(D % 16 == 0, "quantize_kv: int4 needs D % 16 == 0, got D=", D);
  const auto opts = x.options();
  at::Tensor data = at::empty({B, H, T, f == KvFormat::kInt4 ? D / 2 : D}, opts.dtype(kv_data_dtype(f)));
  at::Tensor scale = at::empty({0}, opts.dtype(at::kFloat)), zero = at::empty({0}, opts.dtype(at::kFloat));
  if (f == KvFormat::kInt8 || f == KvFormat::kFp8) scale = at::empty({B, H, T}, opts.dtype(at::kFloat));
  if (f == KvFormat::kInt4) {
    scale = at::empty({B, H, T, D / int4_group(D)}, opts.dtype(at::kHalf));
    zero = at::empty_like(scale);
  }
  quantize_rows(f, x.to(at::kFloat).contiguous(), data, scale, zero, 0);
  return {data, scale, zero};
}

at::Tensor dequantize_kv_cpu(const at::Tensor& data, const c10::optional<at::Tensor>& scale,
                             const c10::optional<at::Tensor>& zero, const std::string& kv_dtype, int64_t head_dim) {
  const KvFormat f = parse_kv_dtype(kv_dtype, "dequantize_kv");
  RAPID_CHECK(data.device().is_cpu(), "dequantize_kv: data must be a CPU tensor, got ", data.device());
  const at::Tensor sc = scale.has_value() ? *scale : at::Tensor(), ze = zero.has_value() ? *zero : at::Tensor();
  check_kv_storage("dequantize_kv", "data", data, sc, ze, f, head_dim);
  const int64_t B = data.size(0), H = data.size(1), T = data.size(2), D = head_dim;
  at::Tensor out = at::empty({B, H, T, D}, data.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  const RowAddr d(data), s(sc), z(ze);
  at::parallel_for(0, B * H * T, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / (H * T), h = (r / T) % H, t = r % T;
      dequantize_row(f, d.at(b, h, t), s.at(b, h, t), z.at(b, h, t), D, op + r * D);
    }
  });
  return out;
}

void kv_append_cpu(at::Tensor& data, at::Tensor& scale, at::Tensor& zero, const at::Tensor& x, int64_t start,
                   const std::string& kv_dtype) {
  const KvFormat f = parse_kv_dtype(kv_dtype, "kv_append");
  check_x("kv_append", x);
  RAPID_CHECK(data.device().is_cpu(), "kv_append: data must be a CPU tensor, got ", data.device());
  check_kv_storage("kv_append", "data", data, scale, zero, f, x.size(3));
  RAPID_CHECK(x.size(0) == data.size(0) && x.size(1) == data.size(1), "kv_append: x ", x.sizes(),
              " does not match the cache ", data.sizes(), " in B or H");
  RAPID_CHECK(start >= 0 && start + x.size(2) <= data.size(2), "kv_append: slots [", start, ", ",
              start + x.size(2), ") do not fit a cache of ", data.size(2), " tokens");
  quantize_rows(f, x.to(at::kFloat).contiguous(), data, scale, zero, start);
}

}  // namespace rapid
