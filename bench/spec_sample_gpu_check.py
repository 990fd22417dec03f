"""GPU check of spec_sample (run on a GPU machine): CUDA and Triton kernels vs the float64 reference with the
same uniforms, one 10^5-row chi-square, and bench rows. `PYTHONPATH=. python bench/spec_sample_gpu_check.py`."""
import sys

import torch
from scipy.stats import chi2

sys.path.insert(0, "python_tests")
from rapid_engine import _ext, ops  # noqa: E402
from rapid_engine.ops import reference as R  # noqa: E402
from test_spec_sample import CASES, _inputs  # noqa: E402


def kernel(backend, *args):
    if backend == "triton":
        from rapid_engine.triton.spec_sample import spec_sample_triton
        return spec_sample_triton(*args)
    return torch.ops.rapid.spec_sample(*args)


print(torch.cuda.get_device_name(), _ext.backends())
for backend in (sys.argv[1:] or ["cuda", "triton"]):
    for case in CASES:
        B, G, V, dtype, T, k, p, eta, alpha, res, with_q = case
        z, d, q, u = _inputs(B, G, V, dtype, seed=0, with_q=with_q)
        want = R.spec_sample(z, d, q, u, T, k, p, eta, alpha, res)
        got = kernel(backend, z.cuda(), d.cuda(), None if q is None else q.cuda(), u.cuda(), T, k, p, eta, alpha, res)
        same = (got[0].cpu() == want[0]).all(1).double().mean().item()
        print(f"{backend} {case[:3]} T={T} k={k} p={p} eta={eta} {res}: agree {same:.3f}")
    zz = torch.randn(4, 6) * 1.5
    qq = torch.softmax(torch.randn(3, 6) * 1.5, -1)
    N = 200_000
    d = torch.stack([torch.multinomial(qq[i], N, replacement=True) for i in range(3)], 1)
    pz, _, phat, _ = R.spec_distributions(zz[None], d[:1], qq[None], 1.0, 0, 1.0, 2.0, 0.1, "exact")
    tok, n = ops.spec_sample(zz.expand(N, 4, 6).contiguous().cuda(), d.cuda(), qq.expand(N, 3, 6).contiguous().cuda(),
                             eta=2.0, generator=torch.Generator("cuda").manual_seed(1), backend=backend)
    tok, n = tok.cpu(), n.cpu().long()
    for i in range(4):
        law = phat[0, i] if i < 3 else pz[0, 3]
        s = tok[n >= i, i]
        c = torch.bincount(s, minlength=6).double()
        e = law * s.numel()
        stat = float(((c - e) ** 2 / e).sum())
        print(f"{backend} chi2 position {i}: p-value {chi2.sf(stat, 5):.3g}")
