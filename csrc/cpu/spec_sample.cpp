// CPU launcher of rapid::spec_sample: argument checks, fp32 views, then the framework-free kernel
// (csrc/include/rapid/spec_sample.h). Every bad input is a c10::ValueError (Python ValueError) naming the
// argument; nothing is read with an unchecked draft id.
#include <cmath>

#include "ops.h"
#include "rapid/spec_sample.h"

namespace rapid {
namespace {

bool is_float_type(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

double prob_sum_tol(at::ScalarType t) {  // mirrors PROB_SUM_TOL in rapid_engine/ops/sampling.py
  return t == at::kFloat ? 1e-3 : (t == at::kHalf ? 1e-2 : 2e-2);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> spec_sample_cpu(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                                                   const c10::optional<at::Tensor>& draft_probs,
                                                   const at::Tensor& uniforms, double temperature, int64_t top_k,
                                                   double top_p, double eta, double tail_alpha,
                                                   const std::string& residual) {
  RAPID_CHECK_VALUE(target_logits.dim() == 3, "spec_sample: target_logits must be [B, gamma+1, V], got ",
                    target_logits.sizes());
  RAPID_CHECK_VALUE(target_logits.device().is_cpu(), "spec_sample: target_logits must be on the CPU");
  RAPID_CHECK_VALUE(is_float_type(target_logits.scalar_type()),
                    "spec_sample: target_logits must be float32/bfloat16/float16, got ", target_logits.scalar_type());
  const int64_t B = target_logits.size(0), G = target_logits.size(1) - 1, V = target_logits.size(2);
  RAPID_CHECK_VALUE(G >= 0 && V >= 1 && V < (int64_t{1} << 31),
                    "spec_sample: target_logits [B, gamma+1, V] needs gamma+1 >= 1 and 1 <= V < 2^31, got ",
                    target_logits.sizes());
  RAPID_CHECK_VALUE(draft_tokens.scalar_type() == at::kLong && draft_tokens.dim() == 2 &&
                        draft_tokens.size(0) == B && draft_tokens.size(1) == G && draft_tokens.device().is_cpu(),
                    "spec_sample: draft_tokens must be CPU int64 [B, gamma] = [", B, ", ", G, "], got ",
                    draft_tokens.scalar_type(), " ", draft_tokens.sizes());
  RAPID_CHECK_VALUE(uniforms.scalar_type() == at::kDouble && uniforms.dim() == 2 && uniforms.size(0) == B &&
                        uniforms.size(1) == G + 1 && uniforms.device().is_cpu(),
                    "spec_sample: uniforms must be CPU float64 [B, gamma+1] = [", B, ", ", G + 1, "], got ",
                    uniforms.scalar_type(), " ", uniforms.sizes());
  if (draft_probs.has_value()) {
    const at::Tensor& q = *draft_probs;
    RAPID_CHECK_VALUE(is_float_type(q.scalar_type()) && q.dim() == 3 && q.size(0) == B && q.size(1) == G &&
                          q.size(2) == V && q.device().is_cpu(),
                      "spec_sample: draft_probs must be CPU float32/bfloat16/float16 [B, gamma, V] = [", B, ", ", G,
                      ", ", V, "], got ", q.scalar_type(), " ", q.sizes());
  }
  RAPID_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0,
                    "spec_sample: temperature must be a finite number >= 0 (0 = greedy), got ", temperature);
  RAPID_CHECK_VALUE(top_k >= 0, "spec_sample: top_k must be >= 0 (0 = off), got ", top_k);
  RAPID_CHECK_VALUE(top_p > 0 && top_p <= 1, "spec_sample: top_p must be in (0, 1] (1 = off), got ", top_p);
  RAPID_CHECK_VALUE(std::isfinite(eta), "spec_sample: eta must be a finite number, got ", eta);
  RAPID_CHECK_VALUE(tail_alpha >= 0 && tail_alpha <= 1, "spec_sample: tail_alpha must be in [0, 1], got ",
                    tail_alpha);
  RAPID_CHECK_VALUE(residual == "exact" || residual == "paper",
                    "spec_sample: residual must be 'exact' or 'paper', got '", residual, "'");

  const at::Tensor drafts = draft_tokens.contiguous();
  const at::Tensor u = uniforms.contiguous();
  const int64_t* d = drafts.data_ptr<int64_t>();
  for (int64_t j = 0; j < B * G; ++j)
    RAPID_CHECK_VALUE(d[j] >= 0 && d[j] < V, "spec_sample: draft_tokens must be token ids in [0, ", V, "), got ",
                      d[j], " at [", j / std::max<int64_t>(G, 1), ", ", j % std::max<int64_t>(G, 1), "]");
  const double* up = u.data_ptr<double>();
  for (int64_t j = 0; j < B * (G + 1); ++j)
    RAPID_CHECK_VALUE(up[j] >= 0 && up[j] < 1, "spec_sample: uniforms must lie in [0, 1), got ", up[j]);

  // Half inputs are widened once; fp32 inputs are read in place.
  const at::Tensor z = target_logits.to(at::kFloat).contiguous();
  at::Tensor q;
  if (draft_probs.has_value()) q = draft_probs->to(at::kFloat).contiguous();
  at::Tensor zmax = at::empty({B, G + 1}, target_logits.options().dtype(at::kFloat));

  spec::Problem pb{z.data_ptr<float>(), d, q.defined() ? q.data_ptr<float>() : nullptr, up, zmax.data_ptr<float>(),
                   B, G, V, static_cast<float>(temperature), static_cast<float>(top_p), static_cast<float>(eta),
                   static_cast<float>(tail_alpha), top_k, residual == "paper"};
  const double tol = draft_probs.has_value() ? prob_sum_tol(draft_probs->scalar_type()) : 0;
  at::Tensor tokens = at::empty({B, G + 1}, target_logits.options().dtype(at::kLong));
  at::Tensor num_accepted = at::empty({B}, target_logits.options().dtype(at::kInt));
  const spec::ValidateOut bad = spec::validate_and_sample(pb, zmax.data_ptr<float>(), tol, tokens.data_ptr<int64_t>(),
                                                          num_accepted.data_ptr<int32_t>());
  RAPID_CHECK_VALUE(bad.bad_logit < 0, "spec_sample: target_logits contains NaN or +inf (-inf is the only allowed ",
                    "mask value), first at row [", bad.bad_logit / (G + 1), ", ", bad.bad_logit % (G + 1), "]");
  RAPID_CHECK_VALUE(bad.empty_row < 0, "spec_sample: target_logits has a row that is -inf everywhere (nothing can ",
                    "be sampled) at [", bad.empty_row / (G + 1), ", ", bad.empty_row % (G + 1), "]");
  RAPID_CHECK_VALUE(bad.bad_prob < 0, "spec_sample: draft_probs must be finite and >= 0");
  RAPID_CHECK_VALUE(bad.bad_sum < 0, "spec_sample: draft_probs rows must sum to 1 (within ", tol,
                    "), worst row is off by ", bad.worst_sum_err);
  return {tokens, num_accepted};
}

}  // namespace rapid
