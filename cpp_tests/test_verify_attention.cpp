// An embedding engine's use of the CPU kernels, without Python: quantize a KV cache on write, run
// verification attention through the launcher and through the dispatcher by name, check against a
// double-precision reference over the dequantized cache, and check that bad input throws c10::Error.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "ops.h"

namespace {

int g_failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++g_failures;
}

// out[b, i, h, :] = softmax(q . k / sqrt(D)) v over keys 0 .. seqlen - nq + i, in double; or, with
// bf16_inputs, the same-precision path of the bf16 kernel paths: q, K, V and the softmax numerators
// rounded to bf16, float32 sums.
at::Tensor reference(const at::Tensor& q, const at::Tensor& kf, const at::Tensor& vf, const std::vector<int>& seqlens,
                     bool bf16_inputs = false) {
  const int64_t B = q.size(0), nq = q.size(1), qh = q.size(2), D = q.size(3), kvh = kf.size(1);
  const auto work = bf16_inputs ? at::kFloat : at::kDouble;
  auto rounded = [&](const at::Tensor& t) { return bf16_inputs ? t.to(at::kBFloat16).to(at::kFloat) : t.to(at::kDouble); };
  auto qd = rounded(q), kd = rounded(kf), vd = rounded(vf);
  auto out = at::zeros({B, nq, qh, D}, work);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t h = 0; h < qh; ++h) {
        const int64_t n = seqlens[b] - nq + i + 1, kh = h / (qh / kvh);
        auto keys = kd[b][kh].narrow(0, 0, n), vals = vd[b][kh].narrow(0, 0, n);
        auto s = at::matmul(keys, qd[b][i][h]) / std::sqrt(double(D));
        auto p = at::exp(s - s.max());
        if (bf16_inputs) p = p.to(at::kBFloat16).to(at::kFloat);
        out[b][i][h] = at::matmul(p, vals) / p.sum();
      }
  return out;
}

void run_format(const std::string& fmt) {
  const int64_t B = 2, nq = 5, qh = 8, kvh = 2, S = 1100, D = 128;
  const std::vector<int> seqlens = {1100, 613};
  at::manual_seed(0);
  // The engine's cache, allocated once at max length; new K/V quantized into it on write.
  auto [k_data, k_scale, k_zero] = rapid::quantize_kv_cpu(at::zeros({B, kvh, S, D}), fmt);
  auto [v_data, v_scale, v_zero] = rapid::quantize_kv_cpu(at::zeros({B, kvh, S, D}), fmt);
  for (int64_t start = 0; start < S; start += 300) {  // prefill in chunks
    const int64_t t = std::min<int64_t>(300, S - start);
    rapid::kv_append_cpu(k_data, k_scale, k_zero, at::randn({B, kvh, t, D}), start, fmt);
    rapid::kv_append_cpu(v_data, v_scale, v_zero, at::randn({B, kvh, t, D}), start, fmt);
  }
  auto opt = [](const at::Tensor& t) { return t.numel() ? c10::optional<at::Tensor>(t) : c10::nullopt; };
  const auto q = at::randn({B, nq, qh, D});
  const auto sl = at::tensor(std::vector<int32_t>(seqlens.begin(), seqlens.end()), at::kInt);
  const double sm_scale = 1.0 / std::sqrt(double(D));
  auto out = rapid::verify_attention_cpu(q, k_data, v_data, opt(k_scale), opt(k_zero), opt(v_scale), opt(v_zero), sl,
                                         fmt, sm_scale);
  const auto kf = rapid::dequantize_kv_cpu(k_data, opt(k_scale), opt(k_zero), fmt, D);
  const auto vf = rapid::dequantize_kv_cpu(v_data, opt(v_scale), opt(v_zero), fmt, D);
  const auto oracle = reference(q, kf, vf, seqlens);
  const double err = (out.to(at::kDouble) - oracle).abs().max().item<double>();
  // The amx path computes in bf16 (fp32 / fp16 KV stay on the exact-fp32 core): its bound is twice the error
  // of the same-precision path; every other path is exact fp32.
  const bool bf16_path = rapid::cpu_isa() == "amx" && fmt != "fp32" && fmt != "fp16";
  const double base = bf16_path ? (reference(q, kf, vf, seqlens, true).to(at::kDouble) - oracle).abs().max().item<double>() : 0.0;
  expect(err <= 2 * base + 1e-5, fmt + ": launcher vs double reference, max err " + std::to_string(err) +
                                     " (bound " + std::to_string(2 * base + 1e-5) + ", " + rapid::cpu_isa() + ")");

  // By name through the dispatcher, as code that only knows the schema would call it (the typed
  // signature must be the registered launcher's: std::string for `str`).
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("rapid::verify_attention", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                  const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                  const at::Tensor&, const std::string&, double)>();
  auto out2 = op.call(q, k_data, v_data, opt(k_scale), opt(k_zero), opt(v_scale), opt(v_zero), sl, fmt, sm_scale);
  expect(at::equal(out, out2), fmt + ": dispatcher call equals the launcher call");
}

void bad_input() {
  auto [kd, ks, kz] = rapid::quantize_kv_cpu(at::randn({1, 2, 16, 64}), "int8");
  const auto q = at::randn({1, 2, 4, 64});
  bool threw = false;
  try {
    rapid::verify_attention_cpu(q, kd, kd, ks, c10::nullopt, ks, c10::nullopt, at::tensor({17}, at::kInt), "int8",
                                0.125);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("seqlens[0] = 17") != std::string::npos;
  }
  expect(threw, "seqlens above S_max throws c10::Error naming the argument");
  threw = false;
  try {
    rapid::verify_attention_cpu(q, kd, kd, c10::nullopt, c10::nullopt, ks, c10::nullopt, at::tensor({8}, at::kInt),
                                "int8", 0.125);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("k_scale") != std::string::npos;
  }
  expect(threw, "missing k_scale throws c10::Error naming the argument");
}

}  // namespace

int main() {
  std::printf("CPU path: %s\n", rapid::cpu_isa().c_str());
  for (const char* fmt : {"fp32", "bf16", "fp16", "int8", "int4", "fp8"}) run_format(fmt);
  bad_input();
  std::printf("%s\n", g_failures ? "FAILED" : "ALL PASSED");
  return g_failures ? 1 : 0;
}
