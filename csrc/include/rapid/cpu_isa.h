// Run-time choice of the CPU instruction-set path. Framework-free.
// Kernels are compiled for all paths with function target attributes
// (RAPID_TARGET_AVX512 / RAPID_TARGET_AVX2) and pick one per call from isa().
#pragma once
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define RAPID_X86 1
#define RAPID_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vnni,fma,f16c")))
#define RAPID_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define RAPID_X86 0
#define RAPID_TARGET_AVX512
#define RAPID_TARGET_AVX2
#endif

namespace rapid {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

// Best path this CPU supports. The AVX-512 path needs bf16 + VNNI dot products (Zen 4, Sapphire Rapids).
inline Isa detected_isa() {
#if RAPID_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

// Path in use: RAPID_CPU_ISA=avx512|avx2|scalar forces one (read on every call so tests can switch it);
// asking for more than the CPU has throws.
inline Isa isa() {
  static const Isa best = detected_isa();
  const char* env = std::getenv("RAPID_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return best;
  Isa want;
  if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
  else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
  else if (std::strcmp(env, "scalar") == 0) want = Isa::kScalar;
  else throw std::invalid_argument(std::string("RAPID_CPU_ISA must be auto, avx512, avx2 or scalar, got '") + env + "'");
  if (static_cast<int>(want) > static_cast<int>(best))
    throw std::invalid_argument(std::string("RAPID_CPU_ISA=") + env + " but this CPU supports at most " + isa_name(best));
  return want;
}

}  // namespace rapid
