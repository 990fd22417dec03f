// Argument checks shared by the KV launchers (quantize / dequantize / append / verify_attention):
// every mismatch is a TORCH_CHECK naming the argument and what was expected.
#pragma once
#include <torch/all.h>

#include "rapid/check.h"

#include <string>

#include "rapid/kv_quant.h"

namespace rapid {

inline KvFormat parse_kv_dtype(const std::string& kv_dtype, const char* op) {
  KvFormat f;
  RAPID_CHECK(kv_format_from_name(kv_dtype.c_str(), &f), op,
              ": kv_dtype must be one of fp32, bf16, fp16, int8, int4, fp8; got '", kv_dtype, "'");
  return f;
}

inline at::ScalarType kv_data_dtype(KvFormat f) {
  switch (f) {
    case KvFormat::kF32: return at::kFloat;
    case KvFormat::kBF16: return at::kBFloat16;
    case KvFormat::kF16: return at::kHalf;
    case KvFormat::kInt8: return at::kChar;
    case KvFormat::kFp8: return at::ScalarType::Float8_e4m3fn;
    default: return at::kByte;
  }
}

inline bool kv_has_scale(KvFormat f) { return f == KvFormat::kInt8 || f == KvFormat::kFp8 || f == KvFormat::kInt4; }

// Checks data [B, H, S, D'] and its scale/zero for format f and logical head_dim D.
// scale/zero may be undefined or numel-0 for formats without them.
inline void check_kv_storage(const char* op, const char* name, const at::Tensor& data, const at::Tensor& scale,
                             const at::Tensor& zero, KvFormat f, int64_t head_dim) {
  RAPID_CHECK(data.dim() == 4, op, ": ", name, " must be [B, H, S, D], got ", data.sizes());
  RAPID_CHECK(data.scalar_type() == kv_data_dtype(f), op, ": ", name, " must be ", kv_data_dtype(f),
              " for this kv_dtype, got ", data.scalar_type());
  RAPID_CHECK(data.size(3) == 0 || data.stride(3) == 1, op, ": ", name, "'s last dimension must be contiguous");
  const bool is_int4 = f == KvFormat::kInt4;
  if (is_int4) RAPID_CHECK(head_dim % 16 == 0, op, ": int4 KV needs head_dim % 16 == 0, got ", head_dim);
  RAPID_CHECK(data.size(3) == (is_int4 ? head_dim / 2 : head_dim), op, ": ", name, " last dim must be ",
              (is_int4 ? head_dim / 2 : head_dim), " for head_dim ", head_dim, ", got ", data.size(3));
  const bool has_scale = kv_has_scale(f);
  const bool scale_given = scale.defined() && scale.numel() > 0;
  const bool zero_given = zero.defined() && zero.numel() > 0;
  if (!has_scale) {
    RAPID_CHECK(!scale_given && !zero_given, op, ": ", name, " scale/zero must be absent for a plain kv_dtype");
    return;
  }
  std::vector<int64_t> sshape = {data.size(0), data.size(1), data.size(2)};
  if (is_int4) sshape.push_back(head_dim / int4_group(head_dim));
  const auto sdt = is_int4 ? at::kHalf : at::kFloat;
  RAPID_CHECK(scale.defined() && scale.sizes() == at::IntArrayRef(sshape) && scale.scalar_type() == sdt, op, ": ",
              name, "_scale must be ", sdt, " ", at::IntArrayRef(sshape), ", got ",
              scale.defined() ? scale.sizes() : at::IntArrayRef{});
  RAPID_CHECK(scale.device() == data.device(), op, ": ", name, "_scale must be on ", name, "'s device");
  RAPID_CHECK(!is_int4 || scale.stride(3) == 1, op, ": ", name, "_scale's last dimension must be contiguous");
  if (is_int4) {
    RAPID_CHECK(zero.defined() && zero.sizes() == at::IntArrayRef(sshape) && zero.scalar_type() == at::kHalf, op,
                ": ", name, "_zero must be Half ", at::IntArrayRef(sshape), ", got ",
                zero.defined() ? zero.sizes() : at::IntArrayRef{});
    RAPID_CHECK(zero.device() == data.device(), op, ": ", name, "_zero must be on ", name, "'s device");
    RAPID_CHECK(zero.stride(3) == 1, op, ": ", name, "_zero's last dimension must be contiguous");
  } else {
    RAPID_CHECK(!zero_given, op, ": ", name, "_zero must be absent unless kv_dtype is int4");
  }
}

}  // namespace rapid
