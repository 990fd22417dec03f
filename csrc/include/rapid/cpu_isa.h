// Run-time choice of the CPU instruction-set path. Framework-free.
// Kernels are compiled for all paths with function target attributes
// (RAPID_TARGET_AMX / RAPID_TARGET_AVX512 / RAPID_TARGET_AVX2) and pick one per call from isa().
//
// Paths, best first:
//   amx         AMX-BF16 tiles (tdpbf16ps), Intel Sapphire Rapids and later; needs the OS to grant the tile state
//   avx512bf16  AVX-512 with bf16 dot products (vdpbf16ps) as the arithmetic: Intel Cooper Lake+, AMD Zen 4
//   avx512      AVX-512 with fp32 FMAs (the exact-fp32 arithmetic)
//   avx2, scalar
// A kernel without its own code for a path runs the best path below it that it has (vector_isa()).
#pragma once
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define RAPID_X86 1
#define RAPID_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vnni,fma,f16c")))
#define RAPID_TARGET_AMX \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vnni,fma,f16c,amx-tile,amx-bf16,amx-int8")))
#define RAPID_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define RAPID_X86 0
#define RAPID_TARGET_AVX512
#define RAPID_TARGET_AMX
#define RAPID_TARGET_AVX2
#endif

namespace rapid {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

// The FMA-arithmetic path a kernel without bf16-dot / AMX code runs on: amx and avx512bf16 -> avx512.
inline Isa vector_isa(Isa i) { return static_cast<int>(i) > static_cast<int>(Isa::kAvx512) ? Isa::kAvx512 : i; }

// Asks Linux once for permission to use the AMX tile data state (XFEATURE_XTILEDATA = 18); the permission
// is process-wide, so OpenMP workers started before or after may all use tiles. False when refused.
inline bool amx_permitted() {
#if RAPID_X86 && defined(__linux__)
  static const bool ok = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

// Best path this CPU supports. The AVX-512 paths need bf16 + VNNI dot products (Zen 4, Sapphire Rapids).
inline Isa detected_isa() {
#if RAPID_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni")) {
    if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
        __builtin_cpu_supports("amx-int8") && amx_permitted())
      return Isa::kAmx;
    return Isa::kAvx512Bf16;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

// Why the best path is not amx on an x86 CPU with AVX-512 (for skip messages): the missing flag or the OS refusal.
inline const char* amx_unavailable_reason() {
#if RAPID_X86
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("amx-tile")) return "CPU lacks amx_tile";
  if (!__builtin_cpu_supports("amx-bf16")) return "CPU lacks amx_bf16";
  if (!__builtin_cpu_supports("amx-int8")) return "CPU lacks amx_int8";
  if (!amx_permitted()) return "the OS refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)";
  return "";
#else
  return "not an x86-64 CPU";
#endif
}

// Path in use: RAPID_CPU_ISA=amx|avx512bf16|avx512|avx2|scalar forces one (read on every call so tests can switch
// it); asking for more than the CPU has throws.
inline Isa isa() {
  static const Isa best = detected_isa();
  const char* env = std::getenv("RAPID_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return best;
  Isa want;
  if (std::strcmp(env, "amx") == 0) want = Isa::kAmx;
  else if (std::strcmp(env, "avx512bf16") == 0) want = Isa::kAvx512Bf16;
  else if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
  else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
  else if (std::strcmp(env, "scalar") == 0) want = Isa::kScalar;
  else
    throw std::invalid_argument(std::string("RAPID_CPU_ISA must be auto, amx, avx512bf16, avx512, avx2 or scalar, got '") +
                                env + "'");
  if (static_cast<int>(want) > static_cast<int>(best))
    throw std::invalid_argument(std::string("RAPID_CPU_ISA=") + env + " but this CPU supports at most " + isa_name(best) +
                                (want == Isa::kAmx ? std::string(" (") + amx_unavailable_reason() + ")" : std::string()));
  return want;
}

}  // namespace rapid
