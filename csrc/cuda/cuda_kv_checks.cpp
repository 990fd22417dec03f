// Argument checks of the CUDA KV ops; see cuda_kv_checks.h for why this is a host-compiled file.
// No CUDA headers here: only shapes, dtypes, devices, strides and (optionally) seqlens values.
#include "cuda_kv_checks.h"

#include <c10/util/Exception.h>

#include "rapid/check.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace rapid {
namespace cuda_checks {
namespace {

enum Format { kF32 = 0, kBF16 = 1, kF16 = 2, kInt8 = 3, kInt4 = 4, kFp8 = 5 };

bool has_scale(int f) { return f == kInt8 || f == kFp8 || f == kInt4; }
int64_t int4_group(int64_t head_dim) { return head_dim % 32 == 0 ? 32 : 16; }

at::ScalarType data_dtype(int f) {
  switch (f) {
    case kF32: return at::kFloat;
    case kBF16: return at::kBFloat16;
    case kF16: return at::kHalf;
    case kInt8: return at::kChar;
    case kInt4: return at::kByte;
    default: return at::kFloat8_e4m3fn;
  }
}

at::ScalarType scale_dtype(int f) { return f == kInt4 ? at::kHalf : at::kFloat; }

// Shapes of (data, scale, zero) for a logical [B, H, S, D]; empty vector = absent.
std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>> storage_shapes(
    int f, int64_t B, int64_t H, int64_t S, int64_t D) {
  if (f == kInt4) {
    const int64_t ng = D / int4_group(D);
    return {{B, H, S, D / 2}, {B, H, S, ng}, {B, H, S, ng}};
  }
  if (has_scale(f)) return {{B, H, S, D}, {B, H, S}, {}};
  return {{B, H, S, D}, {}, {}};
}

bool given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->numel() > 0; }

// Shape, dtype, device and a contiguous last dimension; with vec_bytes > 0 also the alignment of the
// base pointer and of the batch/head/token strides (the kernels read rows with vector loads).
void check_part(const char* op, const char* name, const at::Tensor& t, const std::vector<int64_t>& shape,
                at::ScalarType dtype, const at::Device& device, int64_t vec_bytes = 0) {
  RAPID_CHECK(t.defined(), op, ": ", name, " is missing");
  RAPID_CHECK(t.sizes() == at::IntArrayRef(shape) && t.scalar_type() == dtype, op, ": ", name, " must be ", dtype,
              " ", at::IntArrayRef(shape), ", got ", t.scalar_type(), " ", t.sizes());
  RAPID_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but the op runs on ", device);
  RAPID_CHECK(t.numel() == 0 || t.stride(-1) == 1, op, ": ", name, "'s last dimension must be contiguous (stride 1)");
  if (vec_bytes == 0 || t.numel() == 0) return;
  const int64_t es = t.element_size();
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % vec_bytes == 0;
  for (int i = 0; i < 3; ++i) aligned = aligned && (t.stride(i) * es) % vec_bytes == 0;
  RAPID_CHECK(aligned, op, ": ", name, " must start on a ", vec_bytes,
              "-byte boundary with batch/head/token strides that keep every row aligned (vector loads)");
}

void check_head_dim(const char* op, int f, int64_t D) {
  RAPID_CHECK(D > 0, op, ": head_dim must be positive, got ", D);
  RAPID_CHECK(f != kInt4 || D % 16 == 0, op, ": int4 KV needs head_dim to be a multiple of 16, got ", D);
}

void check_x(const char* op, const at::Tensor& x) {
  RAPID_CHECK(x.defined() && x.is_cuda(), op, ": x must be a CUDA tensor, got ",
              x.defined() ? x.device() : at::Device(at::kCPU));
  RAPID_CHECK(x.dim() == 4, op, ": x must be [B, H, T, D], got ", x.sizes());
  float_type_code(x, (std::string(op) + ": x").c_str());
  RAPID_CHECK(x.size(0) * x.size(1) * x.size(2) < (int64_t(1) << 31) && x.size(3) < (int64_t(1) << 31), op,
              ": x is too large (", x.sizes(), ")");
}

// Row bytes of a format and the vector width the verify kernels read rows with (16, else 8).
int64_t verify_vector_bytes(int f, int64_t D) {
  const int64_t row = f == kF32 ? 4 * D : (f == kBF16 || f == kF16) ? 2 * D : f == kInt4 ? D / 2 : D;
  return row % 16 == 0 ? 16 : 8;
}

}  // namespace

int kv_format_code(const std::string& kv_dtype, const char* op) {
  static const char* const names[] = {"fp32", "bf16", "fp16", "int8", "int4", "fp8"};
  for (int i = 0; i < 6; ++i)
    if (kv_dtype == names[i]) return i;
  RAPID_CHECK(false, op, ": kv_dtype must be one of fp32, bf16, fp16, int8, int4, fp8, got '", kv_dtype, "'");
  return -1;
}

int float_type_code(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kHalf: return 2;
    default: RAPID_CHECK(false, what, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return -1;
}

int check_quantize_kv(const at::Tensor& x, const std::string& kv_dtype) {
  const char* op = "quantize_kv";
  const int f = kv_format_code(kv_dtype, op);
  check_x(op, x);
  check_head_dim(op, f, x.size(3));
  return f;
}

int check_kv_append(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& zero, const at::Tensor& x,
                    int64_t start, const std::string& kv_dtype) {
  const char* op = "kv_append";
  const int f = kv_format_code(kv_dtype, op);
  check_x(op, x);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  check_head_dim(op, f, D);
  RAPID_CHECK(data.dim() == 4, op, ": data must be [B, H, S_max, D(/2)], got ", data.sizes());
  const int64_t s_max = data.size(2);
  RAPID_CHECK(start >= 0 && start + T <= s_max, op, ": slots [", start, ", ", start + T, ") do not fit a cache of ",
              s_max, " tokens");
  auto [dshape, sshape, zshape] = storage_shapes(f, B, H, s_max, D);
  check_part(op, "data", data, dshape, data_dtype(f), x.device());
  if (!sshape.empty()) check_part(op, "scale", scale, sshape, scale_dtype(f), x.device());
  if (!zshape.empty()) check_part(op, "zero", zero, zshape, at::kHalf, x.device());
  return f;
}

int check_dequantize_kv(const at::Tensor& data, const c10::optional<at::Tensor>& scale,
                        const c10::optional<at::Tensor>& zero, const std::string& kv_dtype, int64_t head_dim) {
  const char* op = "dequantize_kv";
  const int f = kv_format_code(kv_dtype, op);
  RAPID_CHECK(data.is_cuda(), op, ": data must be a CUDA tensor, got ", data.device());
  RAPID_CHECK(data.dim() == 4, op, ": data must be [B, H, T, D(/2)], got ", data.sizes());
  check_head_dim(op, f, head_dim);
  const int64_t B = data.size(0), H = data.size(1), T = data.size(2);
  RAPID_CHECK(B * H * T * head_dim < (int64_t(1) << 40) && B * H * T < (int64_t(1) << 31), op,
              ": data is too large (", data.sizes(), ")");
  auto [dshape, sshape, zshape] = storage_shapes(f, B, H, T, head_dim);
  check_part(op, "data", data, dshape, data_dtype(f), data.device());
  RAPID_CHECK(given(scale) == !sshape.empty(), op, ": scale must be ", sshape.empty() ? "absent" : "given",
              " for kv_dtype '", kv_dtype, "'");
  RAPID_CHECK(given(zero) == !zshape.empty(), op, ": zero must be ", zshape.empty() ? "absent" : "given",
              " for kv_dtype '", kv_dtype, "'");
  if (given(scale)) check_part(op, "scale", *scale, sshape, scale_dtype(f), data.device());
  if (given(zero)) check_part(op, "zero", *zero, zshape, at::kHalf, data.device());
  return f;
}

VerifyArgs check_verify_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& k_zero,
                                  const c10::optional<at::Tensor>& v_scale, const c10::optional<at::Tensor>& v_zero,
                                  const at::Tensor& seqlens, const std::string& kv_dtype, bool check_seqlens_values,
                                  int64_t max_rows_per_grid_y) {
  const char* op = "verify_attention";
  VerifyArgs a{};
  a.format = kv_format_code(kv_dtype, op);
  const int f = a.format;
  RAPID_CHECK(q.is_cuda(), "verify_attention: q must be a CUDA tensor, got ", q.device());
  RAPID_CHECK(q.dim() == 4, "verify_attention: q must be [B, n_query, q_heads, D], got ", q.sizes());
  a.q_type = float_type_code(q, "verify_attention: q");
  RAPID_CHECK(q.stride(3) == 1, "verify_attention: q's last dimension must be contiguous (stride 1)");
  a.B = q.size(0), a.n_query = q.size(1), a.q_heads = q.size(2), a.head_dim = q.size(3);
  const int64_t B = a.B, nq = a.n_query, qh = a.q_heads, D = a.head_dim;
  RAPID_CHECK(k.dim() == 4 && v.dim() == 4, "verify_attention: k and v must be [B, kv_heads, S_max, D(/2)], got ",
              k.sizes(), " and ", v.sizes());
  a.kv_heads = k.size(1), a.s_max = k.size(2);
  const int64_t kvh = a.kv_heads, s_max = a.s_max;
  RAPID_CHECK(kvh > 0 && qh % kvh == 0, "verify_attention: q_heads (", qh, ") must be a multiple of kv_heads (", kvh,
              ")");
  RAPID_CHECK(D == 64 || D == 80 || D == 96 || D == 128 || D == 256,
              "verify_attention (cuda): head_dim must be 64, 80, 96, 128 or 256, got ", D);
  RAPID_CHECK(f != kInt4 || D % 16 == 0, "verify_attention: int4 KV needs head_dim % 16 == 0, got ", D);
  const int64_t vec = verify_vector_bytes(f, D);
  auto [dshape, sshape, zshape] = storage_shapes(f, B, kvh, s_max, D);
  check_part(op, "k", k, dshape, data_dtype(f), q.device(), vec);
  check_part(op, "v", v, dshape, data_dtype(f), q.device(), vec);
  const bool scaled = has_scale(f);
  RAPID_CHECK(given(k_scale) == scaled && given(v_scale) == scaled, "verify_attention: k_scale and v_scale must be ",
              scaled ? "given" : "absent", " for kv_dtype '", kv_dtype, "'");
  RAPID_CHECK(given(k_zero) == (f == kInt4) && given(v_zero) == (f == kInt4), "verify_attention: k_zero and v_zero must be ",
              f == kInt4 ? "given" : "absent", " for kv_dtype '", kv_dtype, "'");
  if (scaled) {
    check_part(op, "k_scale", *k_scale, sshape, scale_dtype(f), q.device());
    check_part(op, "v_scale", *v_scale, sshape, scale_dtype(f), q.device());
  }
  if (f == kInt4) {
    check_part(op, "k_zero", *k_zero, zshape, at::kHalf, q.device());
    check_part(op, "v_zero", *v_zero, zshape, at::kHalf, q.device());
    RAPID_CHECK(k_zero->strides() == k_scale->strides() && v_zero->strides() == v_scale->strides(),
                "verify_attention: k_zero/v_zero must have the same strides as k_scale/v_scale");
  }
  RAPID_CHECK(seqlens.scalar_type() == at::kInt && seqlens.dim() == 1 && seqlens.size(0) == B,
              "verify_attention: seqlens must be int32 [", B, "], got ", seqlens.scalar_type(), " ", seqlens.sizes());
  RAPID_CHECK(seqlens.device() == q.device(), "verify_attention: seqlens is on ", seqlens.device(), " but q is on ",
              q.device());
  RAPID_CHECK(seqlens.is_contiguous(), "verify_attention: seqlens must be contiguous, got strides ", seqlens.strides());
  RAPID_CHECK(s_max < (int64_t(1) << 30) && nq * (qh / kvh) <= max_rows_per_grid_y && B * kvh <= 65535,
              "verify_attention: sizes out of range for the CUDA kernel (S_max < 2^30, n_query * group <= ",
              max_rows_per_grid_y, ", B * kv_heads <= 65535), got S_max ", s_max, ", n_query * group ", nq * (qh / kvh),
              ", B * kv_heads ", B * kvh);
  if (check_seqlens_values && B > 0) {
    const at::Tensor host = seqlens.cpu().contiguous();  // one small device-to-host copy, no kernel
    const int* vals = host.data_ptr<int>();
    int64_t lo = vals[0], hi = vals[0];
    for (int64_t i = 1; i < B; ++i) lo = std::min<int64_t>(lo, vals[i]), hi = std::max<int64_t>(hi, vals[i]);
    RAPID_CHECK(lo >= nq && hi <= s_max, "verify_attention: seqlens must lie in [n_query=", nq, ", S_max=", s_max,
                "], got values in [", lo, ", ", hi, "]");
  }
  return a;
}

}  // namespace cuda_checks
}  // namespace rapid
