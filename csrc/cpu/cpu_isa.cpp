#include "ops.h"
#include "rapid/cpu_isa.h"

namespace rapid {
std::string cpu_isa() { return isa_name(isa()); }
}  // namespace rapid
