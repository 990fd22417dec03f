// PLACEHOLDER until the kernel issue lands.
#include "ops.h"
namespace rapid {
at::Tensor verify_attention_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                const at::Tensor&, const std::string&, double) {
  TORCH_CHECK(false, "rapid::verify_attention: CPU kernel not built yet");
}
}  // namespace rapid
