// CPU launcher of the batch-invariant small-M linear (math in rapid/linear.h).
#include <ATen/Parallel.h>

#include "ops.h"
#include "rapid/cpu_isa.h"
#include "rapid/linear.h"
#include "rapid/linear_bf16.h"

namespace rapid {

namespace {
template <typename T>
void run(Isa path, const at::Tensor& x2d, const at::Tensor& w, const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t M = x2d.size(0), K = x2d.size(1), N = w.size(0);
  const T* xp = reinterpret_cast<const T*>(x2d.data_ptr());
  const T* wp = reinterpret_cast<const T*>(w.data_ptr());
  const T* bp = bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t ldx = x2d.stride(0);
  // Threads split the weight rows in whole tiles; each output is computed by exactly one thread in
  // the same order whatever the split, so the thread count does not change any bit of the result.
  const int64_t tiles = (N + linear::kTileN - 1) / linear::kTileN;
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(K, 1));  // ~64 KiB of fp32 weights
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    linear::small_m_rows<T>(path, xp, ldx, wp, bp, yp, M, N, K, t0 * linear::kTileN,
                            std::min(N, t1 * linear::kTileN));
  });
}
// bf16 weights on the bf16 dot-product units. AMX: x is packed once for all threads; threads split the weight
// rows in whole 16-row blocks, each configures its tiles and releases them after.
void run_bf16(Isa path, const at::Tensor& x2d, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
              at::Tensor& y) {
  using linear::Bf16;
  namespace bd = linear::bf16dot;
  const int64_t M = x2d.size(0), K = x2d.size(1), N = w.size(0);
  const Bf16* xp = reinterpret_cast<const Bf16*>(x2d.data_ptr());
  const Bf16* wp = reinterpret_cast<const Bf16*>(w.data_ptr());
  const Bf16* bp = bias.has_value() ? reinterpret_cast<const Bf16*>(bias->data_ptr()) : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t ldx = x2d.stride(0);
#if RAPID_X86
  if (path == Isa::kAmx) {
    auto packed = at::empty({bd::packed_x_words(M, K)}, x2d.options().dtype(at::kInt));
    uint32_t* xpack = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
    bd::pack_x(xp, ldx, M, K, xpack);
    constexpr int64_t kGroup = bd::kRows;
    const int64_t groups = (N + kGroup - 1) / kGroup;
    const int64_t grain = std::max<int64_t>(1, (1 << 17) / (kGroup * K * 2));  // >= ~128 KiB of weights a task
    at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
      bd::rows_amx_thread(xpack, wp, bp, yp, M, N, K, g0 * kGroup, std::min(N, g1 * kGroup));
    });
    return;
  }
  if (path == Isa::kAvx512Bf16) {
    const int64_t tiles = (N + linear::kTileN - 1) / linear::kTileN;
    const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(K, 1));
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      bd::rows_dpbf16(xp, ldx, wp, bp, yp, M, N, K, t0 * linear::kTileN, std::min(N, t1 * linear::kTileN));
    });
    return;
  }
#endif
  run<Bf16>(path, x2d, w, bias, y);
}
}  // namespace

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  RAPID_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rapid::linear: x and weight must be CPU tensors");
  const auto dt = x.scalar_type();
  RAPID_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "rapid::linear: x must be float32, bfloat16 or float16, got ", dt);
  RAPID_CHECK(x.dim() >= 1 && x.size(-1) > 0, "rapid::linear: x must be [..., K] with K > 0, got ", x.sizes());
  RAPID_CHECK(weight.dim() == 2, "rapid::linear: weight must be 2-D [N, K], got ", weight.dim(), " dims");
  RAPID_CHECK(weight.scalar_type() == dt, "rapid::linear: weight dtype ", weight.scalar_type(),
              " must equal x dtype ", dt);
  const int64_t K = x.size(-1), N = weight.size(0);
  RAPID_CHECK(weight.size(1) == K, "rapid::linear: weight must be [N, ", K, "] to match x's last dim, got [", N,
              ", ", weight.size(1), "]");
  if (bias.has_value()) {
    RAPID_CHECK(bias->device().is_cpu() && bias->scalar_type() == dt && bias->dim() == 1 && bias->size(0) == N,
                "rapid::linear: bias must be a CPU ", dt, " tensor [", N, "], got ", bias->scalar_type(), " ",
                bias->sizes());
  }
  const auto w = weight.contiguous();
  const auto b = bias.has_value() ? c10::optional<at::Tensor>(bias->contiguous()) : c10::nullopt;
  // Rows must be unit-stride along K; any row stride is fine (e.g. a slice of a wider activation).
  auto x2d = x.reshape({-1, K});
  if (x2d.stride(1) != 1 || (x2d.size(0) > 1 && x2d.stride(0) < K)) x2d = x2d.contiguous();
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  auto y = at::empty({x2d.size(0), N}, x.options().dtype(at::kFloat));
  if (x2d.size(0) > 0 && N > 0) {
    const Isa path = isa();
    if (dt == at::kFloat)
      run<float>(path, x2d, w, b, y);
    else if (dt == at::kBFloat16)
      run_bf16(path, x2d, w, b, y);
    else
      run<linear::Fp16>(path, x2d, w, b, y);
  }
  if (dt != at::kFloat) y = y.to(dt);
  return y.view(out_sizes);
}

}  // namespace rapid
