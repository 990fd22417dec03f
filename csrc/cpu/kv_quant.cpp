// PLACEHOLDER until the kernel issue lands: every entry point raises.
#include "ops.h"
namespace rapid {
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cpu(const at::Tensor&, const std::string&) {
  TORCH_CHECK(false, "rapid::quantize_kv: CPU kernel not built yet");
}
at::Tensor dequantize_kv_cpu(const at::Tensor&, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                             const std::string&, int64_t) {
  TORCH_CHECK(false, "rapid::dequantize_kv: CPU kernel not built yet");
}
void kv_append_cpu(at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, int64_t, const std::string&) {
  TORCH_CHECK(false, "rapid::kv_append: CPU kernel not built yet");
}
}  // namespace rapid
