"""ops.linear (batch-invariant small-M linear) against the float64 reference, on every CPU path."""
import pytest
import torch
import torch.nn.functional as F

from conftest import _cpu_flags, available_backends, cpu_isa_params, cpu_isas
from rapid_engine.ops.linear import linear, linear_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 97, 33), (7, 13, 1025), (16, 576, 64), (33, 9, 17)]  # (M, N, K)
BACKENDS = [b for b in available_backends("cpu") if b in ("torch", "cpu")]


def _inputs(m, n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype),
            torch.randn(n, generator=g).to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_float64_reference(backend, dtype, m, n, k):
    """Error vs float64 at most twice that of torch's own same-precision F.linear (+ a tiny floor)."""
    x, w, b = _inputs(m, n, k, dtype)
    for bias in (b, None):
        got = linear(x, w, bias, backend=backend)
        assert got.dtype == dtype and got.shape == (m, n)
        exact = linear_reference(x.double(), w.double(), None if bias is None else bias.double())
        torch_err = (F.linear(x, w, bias).double() - exact).abs().max().item()
        err = (got.double() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-6 * exact.abs().max().item()


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled extension")
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_are_invariant_to_batch_and_isa_path_is_accurate(force_isa, isa, dtype):
    """Row m of the output has the same bits whatever M is and whichever rows share the call."""
    force_isa(isa)
    x, w, b = _inputs(16, 131, 67, dtype, seed=1)
    singles = torch.cat([linear(x[i:i + 1], w, b, backend="cpu") for i in range(16)])
    for m in range(2, 17):
        assert torch.equal(linear(x[:m], w, b, backend="cpu"), singles[:m]), f"{isa} {dtype} M={m}"
    assert torch.equal(linear(x.flip(0), w, b, backend="cpu"), singles.flip(0))
    rel = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    exact = x.double() @ w.double().T + b.double()
    assert (singles.double() - exact).abs().max().item() <= rel * exact.abs().max().item()


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled extension")
def test_strided_rows_and_leading_dims():
    x, w, b = _inputs(6, 40, 24, torch.float32, seed=2)
    wide = torch.randn(6, 50)
    wide[:, 3:27] = x
    view = wide[:, 3:27]  # rows 50 apart, unit stride along K
    assert torch.equal(linear(view, w, b, backend="cpu"), linear(x, w, b, backend="cpu"))
    assert torch.equal(linear(x.view(2, 3, 24), w, b, backend="cpu"), linear(x, w, b, backend="cpu").view(2, 3, 40))


def test_bad_input_names_the_argument():
    x, w, b = _inputs(2, 8, 4, torch.float32)
    with pytest.raises(ValueError, match=r"weight must be \[N, 4\]"):
        linear(x, torch.randn(8, 5))
    with pytest.raises(ValueError, match="weight must be .*float32"):
        linear(x, w.double())
    with pytest.raises(ValueError, match=r"bias must be \[8\]"):
        linear(x, w, torch.randn(7))
    with pytest.raises(ValueError, match="x must be float32/bfloat16/float16"):
        linear(x.long(), w)
    if "cpu" in BACKENDS:  # the launcher checks too (direct torch.ops calls bypass the Python checks)
        with pytest.raises(RuntimeError, match="weight must be"):
            torch.ops.rapid.linear(x, torch.randn(8, 5), None)
        with pytest.raises(RuntimeError, match="bias must be"):
            torch.ops.rapid.linear(x, w, torch.randn(7))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled extension")
def test_opcheck():
    x, w, b = _inputs(3, 8, 16, torch.float32)
    torch.library.opcheck(torch.ops.rapid.linear.default, (x, w, b), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled extension")
@pytest.mark.parametrize("isa", cpu_isa_params())
@pytest.mark.parametrize("n,k", [(97, 1025), (130, 64), (48, 1536), (3, 31), (7, 45), (10, 577)])
def test_bf16_every_path_is_batch_invariant_up_to_33_rows(force_isa, isa, n, k):
    """bf16 on each path (AMX tiles, vdpbf16ps, FMA): M = 1 .. 33 rows give row m the bits of M = 1, and the
    error vs float64 is at most twice torch's bf16 F.linear's (fp32 accumulation of exact bf16 products)."""
    force_isa(isa)
    x, w, b = _inputs(33, n, k, torch.bfloat16, seed=3)
    singles = torch.cat([linear(x[i:i + 1], w, b, backend="cpu") for i in range(33)])
    for m in range(2, 34):  # every row-group split of the vdpbf16ps path (groups of <= 6 rows)
        assert torch.equal(linear(x[:m], w, b, backend="cpu"), singles[:m]), f"{isa} M={m} n={n} k={k}"
    assert torch.equal(linear(x[7:18], w, b, backend="cpu"), singles[7:18])
    wide = torch.zeros(33, k + 5, dtype=torch.bfloat16)  # rows ldx > K apart, NaN past each row's end
    wide[:, k:] = float("nan")
    wide[:, :k] = x
    assert torch.equal(linear(wide[:11, :k], w, b, backend="cpu"), singles[:11])
    exact = x.double() @ w.double().T + b.double()
    torch_err = (F.linear(x, w, b).double() - exact).abs().max().item()
    err = (singles.double() - exact).abs().max().item()
    assert err <= 2 * torch_err + 1e-6 * exact.abs().max().item(), f"{isa}: {err} vs torch {torch_err}"


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled extension")
def test_best_path_is_the_default():
    """A CPU with AMX runs amx, one with AVX512-BF16 avx512bf16, unless RAPID_CPU_ISA says otherwise."""
    import os
    from rapid_engine import _ext
    if os.environ.get("RAPID_CPU_ISA", "auto") not in ("", "auto"):
        pytest.skip("RAPID_CPU_ISA is set for this run")
    flags = _cpu_flags()
    want = "amx" if {"amx_tile", "amx_bf16", "amx_int8", "avx512_bf16"} <= flags else \
        "avx512bf16" if {"avx512f", "avx512_bf16", "avx512_vnni"} <= flags else None
    if want is None:
        pytest.skip("CPU lacks avx512_bf16")
    got = _ext.cpu_isa()
    assert got == want or (want == "amx" and got == "avx512bf16"), got  # amx only if the OS grants the tile state
