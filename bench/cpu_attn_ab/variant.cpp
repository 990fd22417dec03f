// One build of the CPU verify_attention header behind a C entry point, compiled once per variant with
// -DRUN=run_A / -DRUN=run_B and -I pointing at that variant's csrc/include (see ab.sh).
// Build it as a shared library with hidden visibility: with default visibility the dynamic linker binds the
// header's inline template functions to the first copy loaded, so both variants would run the same code.
#include <cmath>

#include "rapid/verify_attention.h"

using namespace rapid;

// K and V: [1, kvh, S, row_bytes] rows; int8/fp8 scales fp32 [kvh, S]; int4 scale/zero fp16 [kvh, S, D/G].
extern "C" __attribute__((visibility("default"))) void RUN(int qh, int kvh, int D, int S, int nq, int fmt,
                                                          const float* q, float* out, const uint8_t* kd,
                                                          const uint8_t* vd, const float* scale,
                                                          const uint16_t* gscale, const uint16_t* gzero,
                                                          int64_t row_bytes) {
  const int32_t seqlen = S;
  const int ng = D / int4_group(D);
  attn::Params p{};
  p.B = 1, p.n_query = nq, p.q_heads = qh, p.kv_heads = kvh, p.D = D;
  p.q = q, p.out = out, p.seqlens = &seqlen;
  p.sm_scale = 1.f / std::sqrt(static_cast<float>(D));
  p.fmt = static_cast<KvFormat>(fmt);
  auto set = [&](attn::KvTensor& t, const uint8_t* data) {
    t.data = data, t.st = row_bytes, t.sh = S * row_bytes, t.sb = kvh * S * row_bytes;
    t.scale = scale, t.sst = 1, t.ssh = S;
    t.gscale = gscale, t.gzero = gzero, t.gst = ng, t.gsh = int64_t(S) * ng, t.zst = ng, t.zsh = int64_t(S) * ng;
  };
  set(p.k, kd);
  set(p.v, vd);
  attn::run(p, Isa::kAvx512);
}
