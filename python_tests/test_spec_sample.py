"""spec_sample: kernels vs the float64 reference with the same uniforms, invariants, greedy, filters, bad input."""
import math

import pytest
import torch

from conftest import available_backends, cpu_isas
from rapid_engine import _ext, ops
from rapid_engine.ops import reference as R

BACKENDS = available_backends("cpu")
KERNELS = [b for b in BACKENDS if b != "torch"]


def _inputs(B, G, V, dtype=torch.float32, seed=0, scale=2.0, with_q=True):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, G + 1, V, generator=g) * scale).to(dtype)  # [B, G+1, V]
    q = torch.softmax(torch.randn(B, G, V, generator=g) * scale, -1)  # [B, G, V]
    drafts = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, G) if G else \
        torch.empty(B, 0, dtype=torch.long)
    u = torch.rand(B, G + 1, dtype=torch.float64, generator=g)
    return z, drafts, (q if with_q else None), u


def _kernel(backend, *args):
    if backend == "triton":
        from rapid_engine.triton.spec_sample import spec_sample_triton
        return spec_sample_triton(*args)
    return torch.ops.rapid.spec_sample(*args)


def _check_structure(tokens, n, drafts):
    B, G1 = tokens.shape
    pos = torch.arange(G1)[None]
    n = n.long()
    assert ((n >= 0) & (n <= G1 - 1)).all()
    assert (tokens[pos < n[:, None]] == drafts[pos[:, : G1 - 1] < n[:, None]]).all(), "accepted = the drafts"
    assert (tokens.gather(1, n[:, None]) >= 0).all(), "one final token after the accepted drafts"
    assert (tokens[pos > n[:, None]] == -1).all(), "-1 after the emitted tokens"


# (B, G, V, dtype, temperature, top_k, top_p, eta, tail_alpha, residual, with_q)
CASES = [
    (64, 3, 7, torch.float32, 1.0, 0, 1.0, 0.0, 0.1, "exact", True),
    (64, 4, 97, torch.float32, 0.8, 0, 0.9, 10.0, 0.1, "exact", True),
    (64, 4, 97, torch.float16, 1.3, 0, 1.0, 3.0, 0.0, "paper", True),
    (32, 2, 1025, torch.bfloat16, 1.0, 50, 0.9, 10.0, 0.1, "exact", True),
    (32, 3, 1025, torch.float32, 1.0, 7, 1.0, 2.0, 0.5, "paper", False),
    (8, 1, 32769, torch.float32, 1.0, 0, 0.95, 10.0, 0.1, "exact", True),
    (16, 0, 1025, torch.float32, 0.7, 0, 0.8, 5.0, 0.1, "exact", True),
    (64, 3, 97, torch.float32, 0.0, 0, 1.0, 0.0, 0.1, "exact", True),
    (64, 3, 97, torch.float32, 0.0, 0, 1.0, 4.0, 0.1, "exact", True),
]
# The Triton interpreter costs seconds per call (a program per row tile, 33 select passes per filter), so Triton
# gets the same features on small vocabularies: odd V 7 / 97, top-k + top-p, eta > 0 with and without tail
# protection, both residuals, no draft_probs, half inputs, gamma 0, greedy with and without eta. GPUs run CASES.
TRITON_CASES = [
    (64, 3, 7, torch.float32, 1.0, 0, 1.0, 0.0, 0.1, "exact", True),
    (48, 4, 97, torch.float32, 0.8, 0, 0.9, 10.0, 0.1, "exact", True),
    (48, 4, 97, torch.float16, 1.3, 0, 1.0, 3.0, 0.0, "paper", True),
    (32, 2, 97, torch.bfloat16, 1.0, 20, 0.9, 10.0, 0.1, "exact", True),
    (32, 3, 97, torch.float32, 1.0, 7, 1.0, 2.0, 0.5, "paper", False),
    (32, 0, 97, torch.float32, 0.7, 0, 0.8, 5.0, 0.1, "exact", True),
    (64, 3, 97, torch.float32, 0.0, 0, 1.0, 0.0, 0.1, "exact", True),
    (64, 3, 97, torch.float32, 0.0, 0, 1.0, 4.0, 0.1, "exact", True),
]


def _agree(backend, case, seed=0):
    B, G, V, dtype, T, k, p, eta, alpha, res, with_q = case
    z, d, q, u = _inputs(B, G, V, dtype, seed=seed, with_q=with_q)
    want = R.spec_sample(z, d, q, u, T, k, p, eta, alpha, res)
    got = _kernel(backend, z, d, q, u, T, k, p, eta, alpha, res)
    _check_structure(*got, d)
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.int32
    same = (got[0] == want[0]).all(1)
    # Same uniforms -> same tokens, up to float32-vs-float64 rounding at a decision boundary (rare).
    assert float(same.double().mean()) >= 0.97 and int((~same).sum()) <= 2, f"{int((~same).sum())} rows differ"
    assert (got[1][same] == want[1][same]).all()


def _case_id(c):
    return f"B{c[0]}G{c[1]}V{c[2]}-{str(c[3])[6:]}-T{c[4]}-k{c[5]}-p{c[6]}-eta{c[7]}-a{c[8]}-{c[9]}-q{int(c[10])}"


KERNEL_CASES = [(b, c) for b in KERNELS for c in (TRITON_CASES if b == "triton" else CASES)]


@pytest.mark.parametrize("backend,case", KERNEL_CASES, ids=[f"{b}-{_case_id(c)}" for b, c in KERNEL_CASES])
def test_kernel_matches_reference(backend, case):
    _agree(backend, case)


def _size(backend, full, triton):
    """Test size: `full` everywhere but under the Triton interpreter (seconds per call), which gets `triton`."""
    return triton if backend == "triton" else full


@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_isa_paths_match_reference(isa, force_isa):
    if "cpu" not in KERNELS:
        pytest.skip("no C++ extension")
    force_isa(isa)
    assert _ext.cpu_isa() == isa
    for case in CASES:
        _agree("cpu", case, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_target_emits_its_tokens(backend):
    B, G, V = _size(backend, (256, 4, 33), (64, 4, 33))
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, V, (B, G + 1), generator=g)
    z = torch.full((B, G + 1, V), -math.inf).scatter(2, target[..., None], 0.0)  # one finite logit per position
    drafts = torch.where(torch.rand(B, G, generator=g) < 0.7, target[:, :G], torch.randint(0, V, (B, G), generator=g))
    for eta, q in [(0.0, None), (5.0, torch.softmax(torch.randn(B, G, V, generator=g), -1))]:
        tokens, n = ops.spec_sample(z, drafts, q, eta=eta, top_p=0.9, generator=torch.Generator().manual_seed(3),
                                    backend=backend)
        _check_structure(tokens, n, drafts)
        match = (drafts == target[:, :G]).long().cumprod(1).sum(1)  # leading drafts equal to the target
        if q is None:
            assert (n.long() == match).all()
        emitted = torch.arange(G + 1)[None] <= n.long()[:, None]
        assert (tokens[emitted] == target[emitted]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_draft_equal_to_target_accepts_everything(backend):
    B, G, V = _size(backend, (512, 5, 257), (48, 5, 97))
    g = torch.Generator().manual_seed(4)
    z = torch.randn(B, G + 1, V, generator=g) * 2
    for top_k, top_p in [(0, 1.0), (20, 0.9)]:
        keep = R.spec_filter_mask(z, 1.0, top_k, top_p)
        p = torch.softmax(z.double().masked_fill(~keep, -math.inf), -1)  # [B, G+1, V]
        q = p[:, :G].float()
        drafts = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, G)
        tokens, n = ops.spec_sample(z, drafts, q, top_k=top_k, top_p=top_p, generator=g, backend=backend)
        assert (n == G).all()
        _check_structure(tokens, n, drafts)
        assert keep[torch.arange(B), G, tokens[:, G]].all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_filters_never_emit_filtered_tokens(backend):
    B, G, V = _size(backend, (256, 3, 513), (48, 3, 97))
    z, d, q, _ = _inputs(B, G, V, seed=5)
    for top_k, top_p, eta in [(5, 1.0, 0.0), (0, 0.5, 10.0), (40, 0.7, 3.0), (1, 0.9, 0.0)]:
        keep = R.spec_filter_mask(z, 1.0, top_k, top_p)  # [B, G+1, V]
        tokens, n = ops.spec_sample(z, d, q, top_k=top_k, top_p=top_p, eta=eta,
                                    generator=torch.Generator().manual_seed(6), backend=backend)
        emitted = tokens >= 0
        b, i = emitted.nonzero(as_tuple=True)
        assert keep[b, i, tokens[emitted]].all(), f"top_k={top_k} top_p={top_p}: a filtered-out token was emitted"
        if top_k == 1:  # top-1 is greedy on the target
            assert (tokens.gather(1, n.long()[:, None])[:, 0] == z[torch.arange(B), n.long()].argmax(-1)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_follows_argmax_rule(backend):
    B, G, V = 128, 4, 301
    z, _, q, _ = _inputs(B, G, V, seed=8)
    best = z[:, :G].double().argmax(-1)  # [B, G]
    # drafts: the argmax for a random number of leading positions, then something else
    lead = torch.randint(0, G + 1, (B,), generator=torch.Generator().manual_seed(9))
    drafts = torch.where(torch.arange(G)[None] < lead[:, None], best, (best + 1) % V)
    tokens, n = ops.spec_sample(z, drafts, None, temperature=0.0, backend=backend)
    assert (n.long() == lead).all()
    final = tokens.gather(1, n.long()[:, None])[:, 0]
    assert (final == z[torch.arange(B), n.long()].argmax(-1)).all()
    # with eta: argmax(z + eta (q - softmax z)); the bonus stays argmax z
    eta = 6.0
    shifted = (z[:, :G].double() + eta * (q.double() - torch.softmax(z[:, :G].double(), -1))).argmax(-1)
    tokens, n = ops.spec_sample(z, shifted, q, temperature=0.0, eta=eta, backend=backend)
    assert (n == G).all() and (tokens[:, G] == z[:, G].argmax(-1)).all()
    assert (tokens[:, :G] == shifted).all()


@pytest.mark.parametrize("backend", KERNELS)
def test_tied_and_masked_logits_match_reference(backend):
    """Integer logits (many ties at the top-k / top-p boundary, broken by token id) and -inf masks."""
    B, G, V = _size(backend, (16, 3, 5_003), (16, 2, 97))
    z, d, q, u = _inputs(B, G, V, seed=13)
    z = z.round()  # [B, G+1, V]: ~9 distinct values
    g = torch.Generator().manual_seed(14)
    z[torch.rand(z.shape, generator=g) < 0.3] = -math.inf
    z[..., 0] = 5.0  # every row keeps a finite logit
    for top_k, top_p, eta in [(0, 0.9, 10.0), (0, 0.5, 0.0), (37, 1.0, 2.0), (300, 0.8, 10.0), (0, 1.0, 3.0)]:
        want = R.spec_sample(z, d, q, u, 1.0, top_k, top_p, eta, 0.1, "exact")
        got = _kernel(backend, z, d, q, u, 1.0, top_k, top_p, eta, 0.1, "exact")
        _check_structure(*got, d)
        same = (got[0] == want[0]).all(1)
        assert int((~same).sum()) <= 1, f"top_k={top_k} top_p={top_p}: {int((~same).sum())} rows differ"


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_generator_state_same_result(backend):
    z, d, q, _ = _inputs(32, 3, 97, seed=10)
    a = ops.spec_sample(z, d, q, eta=2.0, top_p=0.9, generator=torch.Generator().manual_seed(7), backend=backend)
    b = ops.spec_sample(z, d, q, eta=2.0, top_p=0.9, generator=torch.Generator().manual_seed(7), backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _bad_cases():
    z, d, q, _ = _inputs(2, 2, 11, seed=11)
    nan = z.clone()
    nan[1, 2, 3] = math.nan
    pinf = z.clone()
    pinf[0, 0, 0] = math.inf
    empty = z.clone()
    empty[1, 1] = -math.inf
    neg_q = q.clone()
    neg_q[0, 1, 2] = -0.1
    yield "negative draft id", (z, d.clone().fill_(-1), q), {}, "draft_tokens"
    yield "draft id >= V", (z, d.clone().fill_(11), q), {}, "draft_tokens"
    yield "NaN logit", (nan, d, q), {}, "target_logits"
    yield "+inf logit", (pinf, d, q), {}, "target_logits"
    yield "all -inf row", (empty, d, q), {}, "target_logits"
    yield "draft_tokens shape", (z, d[:, :1], q), {}, "draft_tokens"
    yield "draft_probs shape", (z, d, q[:, :, :5]), {}, "draft_probs"
    yield "draft_tokens dtype", (z, d.int(), q), {}, "draft_tokens"
    yield "logits 2-D", (z[0], d, q), {}, "target_logits"
    yield "logits int", (z.long(), d, q), {}, "target_logits"
    yield "rows not summing to 1", (z, d, q * 1.1), {}, "draft_probs"
    yield "negative prob", (z, d, neg_q), {}, "draft_probs"
    yield "temperature < 0", (z, d, q), {"temperature": -0.5}, "temperature"
    yield "top_p = 0", (z, d, q), {"top_p": 0.0}, "top_p"
    yield "top_p > 1", (z, d, q), {"top_p": 1.5}, "top_p"
    yield "top_k < 0", (z, d, q), {"top_k": -1}, "top_k"
    yield "residual", (z, d, q), {"residual": "vllm"}, "residual"
    yield "tail_alpha", (z, d, q), {"tail_alpha": 2.0}, "tail_alpha"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,args,kw,arg", list(_bad_cases()), ids=[c[0] for c in _bad_cases()])
def test_bad_input_is_a_clear_error(backend, name, args, kw, arg):
    with pytest.raises(ValueError, match=arg):
        ops.spec_sample(*args, backend=backend, **kw)


@pytest.mark.parametrize("name,args,kw,arg", [c for c in _bad_cases() if c[0] not in ("draft_tokens dtype",)],
                         ids=[c[0] for c in _bad_cases() if c[0] not in ("draft_tokens dtype",)])
def test_cpu_launcher_checks_without_python(name, args, kw, arg):
    """The registered op itself (no Python wrapper in front) rejects the same input."""
    if "cpu" not in KERNELS:
        pytest.skip("no C++ extension")
    z, d, q = args
    p = dict(temperature=1.0, top_k=0, top_p=1.0, eta=0.0, tail_alpha=0.1, residual="exact")
    p.update(kw)
    u = torch.rand(d.shape[0], d.shape[-1] + 1, dtype=torch.float64) if d.dim() == 2 else torch.rand(2, 3).double()
    with pytest.raises(ValueError, match=arg):
        torch.ops.rapid.spec_sample(z, d, q, u, p["temperature"], p["top_k"], p["top_p"], p["eta"], p["tail_alpha"],
                                    p["residual"])


@pytest.mark.parametrize("where", ["NaN logit in the bonus row", "negative prob in the last draft row"])
def test_cpu_bad_rows_behind_a_rejection_are_found(where):
    """Draft 0 is rejected for certain (target logit -inf at it), so the later positions are never sampled; the
    CPU kernel validates each row inside its item and must still check those rows."""
    if "cpu" not in KERNELS:
        pytest.skip("no C++ extension")
    B, G, V = 2, 3, 50
    z, d, q, u = _inputs(B, G, V, seed=21)
    z = z.clone()
    q = q.clone()
    d = d.clone()
    d[:, 0] = 7
    z[:, 0, 7] = -math.inf  # p(7) = 0 at position 0: draft 0 rejected whatever the uniforms
    if where.startswith("NaN"):
        z[1, G, 5] = math.nan
        arg = "target_logits"
    else:
        q[1, G - 1, 5] = -0.1
        arg = "draft_probs"
    with pytest.raises(ValueError, match=arg):
        torch.ops.rapid.spec_sample(z, d, q, u, 1.0, 0, 0.9, 0.0, 0.1, "exact")


def test_opcheck():
    z, d, q, u = _inputs(3, 2, 50, seed=12)
    for args in [(z, d, q, u, 1.0, 0, 0.9, 2.0, 0.1, "exact"), (z, d, None, u, 0.0, 0, 1.0, 0.0, 0.1, "paper")]:
        torch.library.opcheck(torch.ops.rapid.spec_sample.default, args)
