// RAPID_CHECK / RAPID_CHECK_VALUE: TORCH_CHECK / TORCH_CHECK_VALUE whose message is assembled here, without
// iostreams' number formatting.
//
// Why: on the H200 image (extension built by its /opt/gcc toolchain against torch 2.11), every failing
// TORCH_CHECK whose message streamed an integer or a size list SIGSEGV'd inside std::ostream's number
// formatting (num_put), in .cu and .cpp launchers alike, while string-only messages raised cleanly
// (bench/results/gpu_h200/cuda_bad_input_crash.log). Integers are turned into text with std::to_string
// (header-only to_chars, no locale), sizes with a join of those, dtypes and devices with c10's own functions,
// so the message that reaches c10::Error is a plain std::string. Every launcher check uses these macros
// (python_tests/test_sources.py enforces it).
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <type_traits>

namespace rapid {
namespace check_detail {

inline void append(std::string& s, const char* x) { s += x; }
inline void append(std::string& s, const std::string& x) { s += x; }
inline void append(std::string& s, char x) { s += x; }
inline void append(std::string& s, bool x) { s += x ? "true" : "false"; }

template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                                        !std::is_same_v<T, char>, int> = 0>
inline void append(std::string& s, T x) {
  s += std::to_string(x);
}

template <class T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
inline void append(std::string& s, T x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(x));
  s += buf;
}

inline void append(std::string& s, c10::IntArrayRef xs) {
  s += '[';
  for (size_t i = 0; i < xs.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(xs[i]);
  }
  s += ']';
}

inline void append(std::string& s, c10::ScalarType t) { s += c10::toString(t); }
inline void append(std::string& s, const c10::Device& d) { s += d.str(); }

template <class... Args>
std::string message(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

}  // namespace check_detail
}  // namespace rapid

#define RAPID_CHECK(cond, ...) TORCH_CHECK(cond, ::rapid::check_detail::message(__VA_ARGS__))
#define RAPID_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::rapid::check_detail::message(__VA_ARGS__))
