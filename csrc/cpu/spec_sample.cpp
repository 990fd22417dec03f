// PLACEHOLDER until the kernel issue lands.
#include "ops.h"
namespace rapid {
std::tuple<at::Tensor, at::Tensor> spec_sample_cpu(const at::Tensor&, const at::Tensor&,
                                                   const c10::optional<at::Tensor>&, const at::Tensor&, double,
                                                   int64_t, double, double, double, const std::string&) {
  TORCH_CHECK(false, "rapid::spec_sample: CPU kernel not built yet");
}
}  // namespace rapid
