// CPU launcher of verify_attention: argument checks, then rapid/verify_attention.h.
#include "kv_checks.h"
#include "ops.h"
#include "rapid/cpu_isa.h"
#include "rapid/verify_attention.h"

namespace rapid {
namespace {

attn::KvTensor kv_tensor(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& zero, KvFormat f) {
  attn::KvTensor t;
  const int64_t es = data.element_size();
  t.data = static_cast<const uint8_t*>(data.data_ptr());
  t.sb = data.stride(0) * es, t.sh = data.stride(1) * es, t.st = data.stride(2) * es;
  if (f == KvFormat::kInt8 || f == KvFormat::kFp8) {
    t.scale = scale.data_ptr<float>();
    t.ssb = scale.stride(0), t.ssh = scale.stride(1), t.sst = scale.stride(2);
  } else if (f == KvFormat::kInt4) {
    t.gscale = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
    t.gsb = scale.stride(0), t.gsh = scale.stride(1), t.gst = scale.stride(2);
    t.gzero = reinterpret_cast<const uint16_t*>(zero.data_ptr<at::Half>());
    t.zsb = zero.stride(0), t.zsh = zero.stride(1), t.zst = zero.stride(2);
  }
  return t;
}

at::Tensor opt_or_empty(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

}  // namespace

at::Tensor verify_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& k_zero,
                                const c10::optional<at::Tensor>& v_scale, const c10::optional<at::Tensor>& v_zero,
                                const at::Tensor& seqlens, const std::string& kv_dtype, double sm_scale) {
  constexpr const char* op = "verify_attention";
  const KvFormat f = parse_kv_dtype(kv_dtype, op);
  RAPID_CHECK(q.dim() == 4, op, ": q must be [B, n_query, q_heads, D], got ", q.sizes());
  const auto qdt = q.scalar_type();
  RAPID_CHECK(qdt == at::kFloat || qdt == at::kBFloat16 || qdt == at::kHalf, op,
              ": q must be float32, bfloat16 or float16, got ", qdt);
  RAPID_CHECK(q.device().is_cpu(), op, ": q must be a CPU tensor, got ", q.device());
  RAPID_CHECK(q.size(3) == 0 || q.stride(3) == 1, op, ": q's last dimension must be contiguous");
  const int64_t B = q.size(0), nq = q.size(1), qh = q.size(2), D = q.size(3);
  RAPID_CHECK(nq >= 1 && qh >= 1 && D >= 1, op, ": q must have n_query, q_heads and D >= 1, got ", q.sizes());
  for (const auto* t : {&k, &v, &seqlens})
    RAPID_CHECK(t->device() == q.device(), op, ": k, v and seqlens must be on q's device (", q.device(), "), got ",
                t->device());
  const at::Tensor ks = opt_or_empty(k_scale), kz = opt_or_empty(k_zero);
  const at::Tensor vs = opt_or_empty(v_scale), vz = opt_or_empty(v_zero);
  check_kv_storage(op, "k", k, ks, kz, f, D);
  check_kv_storage(op, "v", v, vs, vz, f, D);
  RAPID_CHECK(k.sizes() == v.sizes(), op, ": k ", k.sizes(), " and v ", v.sizes(), " must have the same shape");
  RAPID_CHECK(k.size(0) == B, op, ": k batch ", k.size(0), " != q batch ", B);
  const int64_t kvh = k.size(1), s_max = k.size(2);
  RAPID_CHECK(kvh >= 1 && qh % kvh == 0, op, ": q_heads (", qh, ") must be a multiple of kv_heads (", kvh, ")");
  RAPID_CHECK(seqlens.scalar_type() == at::kInt && seqlens.dim() == 1 && seqlens.size(0) == B, op,
              ": seqlens must be int32 [", B, "], got ", seqlens.scalar_type(), " ", seqlens.sizes());
  const at::Tensor sl = seqlens.contiguous();
  const int32_t* slp = sl.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    RAPID_CHECK(slp[b] >= nq && slp[b] <= s_max, op, ": seqlens[", b, "] = ", slp[b],
                " must lie in [n_query=", nq, ", S_max=", s_max, "]");
  RAPID_CHECK(std::isfinite(sm_scale), op, ": sm_scale must be finite, got ", sm_scale);

  const at::Tensor qf = q.to(at::kFloat).contiguous();  // [B, nq, qh, D]
  at::Tensor out = at::empty({B, nq, qh, D}, q.options().dtype(at::kFloat));
  if (B == 0) return out.to(qdt);
  attn::Params p;
  p.B = B, p.n_query = nq, p.q_heads = qh, p.kv_heads = kvh, p.D = D;
  p.q = qf.data_ptr<float>();
  p.out = out.data_ptr<float>();
  p.seqlens = slp;
  p.sm_scale = static_cast<float>(sm_scale);
  p.fmt = f;
  p.k = kv_tensor(k, ks, kz, f);
  p.v = kv_tensor(v, vs, vz, f);
  attn::run(p, isa());
  return qdt == at::kFloat ? out : out.to(qdt);
}

}  // namespace rapid
