"""GPU-side kernels (Triton, and CUDA when built) against the float64 reference.

Without a GPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1, set by conftest) on
small shapes; with one, the same tests run on CUDA tensors for the Triton and CUDA backends.
Tolerance (FlashAttention's rule): error vs the float64 oracle <= 2x the error of the torch path at
q's precision, plus a tiny absolute floor.
"""
import math
import os

import pytest
import torch

from rapid_engine import _ext
from rapid_engine.ops import reference as ref

pytestmark = pytest.mark.skipif(not _ext.HAS_TRITON, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KV_BACKENDS = ["triton"] + (["cuda"] if DEVICE == "cuda" and _ext.HAS_CUDA_KERNELS else [])
# "cuda-direct" / "cuda-quarters": the CUDA op with its direct tensor-core kernel or the staged kernel's
# 4-warps-per-row-tile variant (RAPID_CUDA_VERIFY_KERNEL, read on every call) instead of the default.
CUDA_VARIANTS = {"cuda-direct": "direct", "cuda-quarters": "quarters"}
BACKENDS = KV_BACKENDS + (list(CUDA_VARIANTS) if "cuda" in KV_BACKENDS else [])
KV_DTYPES = ["fp32", "bf16", "fp16", "int8", "int4", "fp8"]
Q_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _quantize(x, kv_dtype, backend):
    if backend == "triton":
        from rapid_engine.triton.kv_quant import quantize_kv_triton
        return quantize_kv_triton(x, kv_dtype)
    return torch.ops.rapid.quantize_kv(x, kv_dtype)


def _append(data, scale, zero, x, start, kv_dtype, backend):
    if backend == "triton":
        from rapid_engine.triton.kv_quant import kv_append_triton
        return kv_append_triton(data, scale, zero, x, start, kv_dtype)
    return torch.ops.rapid.kv_append(data, scale, zero, x, start, kv_dtype)


def _attend(backend, *args, split_size=None):
    if backend == "triton":
        from rapid_engine.triton.verify_attention import verify_attention_triton
        return verify_attention_triton(*args, split_size=split_size)
    if backend in CUDA_VARIANTS:
        os.environ["RAPID_CUDA_VERIFY_KERNEL"] = CUDA_VARIANTS[backend]
        try:
            return torch.ops.rapid.verify_attention(*args)
        finally:
            os.environ.pop("RAPID_CUDA_VERIFY_KERNEL", None)
    return torch.ops.rapid.verify_attention(*args)


def _bits(t):
    """Raw bytes of a tensor, so fp8/bf16 compare bit for bit (and -0.0 != 0.0)."""
    return t.contiguous().view(torch.uint8) if t.numel() else t


def _odd_values(shape, dtype, gen):
    """Random rows with varied magnitudes, plus an all-zero row and a signed zero."""
    x = torch.randn(shape, generator=gen) * torch.rand(*shape[:-1], 1, generator=gen) * 4
    x[0, 0, 0] = 0.0
    x[-1, -1, -1, 1] = -0.0
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("backend", KV_BACKENDS)
@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
@pytest.mark.parametrize("D", [16, 80, 128])
@pytest.mark.parametrize("x_dtype", Q_DTYPES)
def test_quantize_bitwise_equal_to_reference(backend, kv_dtype, D, x_dtype):
    gen = torch.Generator().manual_seed(D)
    x = _odd_values((2, 3, 21, D), x_dtype, gen)
    want = ref.quantize_kv(x, kv_dtype)
    got = _quantize(x, kv_dtype, backend)
    for name, w, g in zip(("data", "scale", "zero"), want, got):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
        assert torch.equal(_bits(g), _bits(w)), f"{name} differs in {(_bits(g) != _bits(w)).sum()} bytes"


@pytest.mark.parametrize("backend", KV_BACKENDS)
@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_kv_append_writes_exactly_its_slots(backend, kv_dtype):
    """Quantize-on-write into slots [start, start+T) of a cache: equal to quantize_kv bit for bit,
    other slots untouched; x may be a strided view (e.g. a slice of a fused QKV projection)."""
    gen = torch.Generator().manual_seed(7)
    B, H, S, D, T, start = 2, 3, 40, 96, 7, 29
    cache = list(ref.quantize_kv(_odd_values((B, H, S, D), torch.float32, gen), kv_dtype))
    before = [c.clone() for c in cache]
    wide = _odd_values((B, T, H, 2 * D), torch.bfloat16, gen)
    x = wide[..., D:].transpose(1, 2)  # [B, H, T, D], non-contiguous
    _append(*cache, x, start, kv_dtype, backend)
    want = ref.quantize_kv(x, kv_dtype)
    for c, b, w in zip(cache, before, want):
        if not c.numel():
            continue
        assert torch.equal(_bits(c[:, :, start:start + T]), _bits(w))
        assert torch.equal(_bits(c[:, :, :start]), _bits(b[:, :, :start]))
        assert torch.equal(_bits(c[:, :, start + T:]), _bits(b[:, :, start + T:]))


def _case(B, nq, q_heads, kv_heads, S, D, kv_dtype, q_dtype, seqlens=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nq, q_heads, D, generator=gen).to(q_dtype)
    k = torch.randn(B, kv_heads, S, D, generator=gen)
    v = torch.randn(B, kv_heads, S, D, generator=gen)
    if seqlens is None:
        seqlens = torch.randint(nq, S + 1, (B,), generator=gen)
        seqlens[0] = S
    kq, vq = ref.quantize_kv(k, kv_dtype), ref.quantize_kv(v, kv_dtype)
    opt = lambda t: t.to(DEVICE) if t.numel() else None  # noqa: E731
    return (q.to(DEVICE), kq[0].to(DEVICE), vq[0].to(DEVICE), opt(kq[1]), opt(kq[2]), opt(vq[1]), opt(vq[2]),
            seqlens.to(torch.int32).to(DEVICE), kv_dtype, 1.0 / math.sqrt(D))


def _check_against_oracle(backend, args, split_size=None):
    out = _attend(backend, *args, split_size=split_size)
    q = args[0]
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    oracle = ref.verify_attention(*args, compute_dtype=torch.float64)
    same_precision = ref.verify_attention(*args)
    err = (out.double() - oracle).abs().max().item()
    base = (same_precision.double() - oracle).abs().max().item()
    assert torch.isfinite(out).all()
    assert err <= 2 * base + FLOOR[q.dtype], f"error {err:.3g} vs torch path at q precision {base:.3g}"
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
@pytest.mark.parametrize("q_dtype", Q_DTYPES)
def test_every_format_and_query_dtype(backend, kv_dtype, q_dtype):
    # split_size 64 over S=97: two splits, and rows whose last split is partly causal-masked
    _check_against_oracle(backend, _case(2, 3, 8, 2, 97, 64, kv_dtype, q_dtype), split_size=64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B, nq, q_heads, kv_heads, S, D, kv_dtype", [
    (1, 1, 1, 1, 1, 64, "bf16"),       # S = 1: a single key
    (2, 1, 8, 8, 97, 80, "int4"),      # group 1, D 80 (int4 groups of 16)
    (2, 5, 14, 2, 97, 96, "int8"),     # group 7
    (1, 16, 8, 1, 150, 128, "fp8"),    # group 8, 16 queries -> 128 rows, two row tiles
    (2, 7, 4, 2, 1025, 64, "int4"),    # odd S, many splits
    (1, 80, 2, 1, 160, 64, "bf16"),    # prefill chunk (n_query > 64): one split, causal tile skipping
])
def test_odd_shapes(backend, B, nq, q_heads, kv_heads, S, D, kv_dtype):
    _check_against_oracle(backend, _case(B, nq, q_heads, kv_heads, S, D, kv_dtype, torch.float32, seed=S),
                          split_size=128)


# bf16 / fp16 queries take the CUDA tensor-core kernel (head_dim 64 / 128); on a GPU prove it on real
# model shapes, long caches with many splits, causal edges inside a warp's key step and prefill chunks.
@pytest.mark.skipif(DEVICE != "cuda", reason="GPU shapes (the interpreter covers Triton on small ones)")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, nq, q_heads, kv_heads, S, D, kv_dtype", [
    (1, 1, 32, 8, 4133, 128, "int4"),    # Llama heads, decode, 4 rows of 16 in the m tile
    (1, 11, 32, 8, 2000, 128, "int8"),   # 44 rows: three m tiles
    (2, 4, 9, 3, 777, 64, "bf16"),       # SmolLM2 heads, group 3
    (1, 16, 8, 1, 300, 128, "fp16"),     # group 8, 128 rows
    (3, 2, 14, 2, 513, 64, "int4"),      # group 7, different seqlens per sequence
    (1, 5, 4, 4, 1025, 128, "fp8"),      # group 1
    (1, 80, 4, 2, 200, 128, "bf16"),     # prefill chunk: one split, causal skipping
])
def test_gpu_model_shapes(backend, q_dtype, B, nq, q_heads, kv_heads, S, D, kv_dtype):
    _check_against_oracle(backend, _case(B, nq, q_heads, kv_heads, S, D, kv_dtype, q_dtype, seed=S))


@pytest.mark.parametrize("backend", BACKENDS)
def test_automatic_split_choice(backend):
    _check_against_oracle(backend, _case(2, 4, 4, 2, 1025, 64, "int8", torch.bfloat16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_q_and_strided_cache(backend):
    """q as a slice of a fused QKV output; k/v as a prefix view of a longer cache."""
    args = list(_case(2, 4, 8, 2, 200, 64, "int8", torch.float16))
    q = args[0]
    fused = torch.randn(2, 4, 3 * 8, 64, device=DEVICE).to(q.dtype)
    fused[:, :, 8:16] = q
    args[0] = fused[:, :, 8:16]
    assert not args[0].is_contiguous()
    for i in (1, 2, 3, 5):  # k, v, k_scale, v_scale: view the first 150 slots of a 200-slot cache
        args[i] = args[i][:, :, :150]
    args[7] = torch.tensor([150, 100], dtype=torch.int32, device=DEVICE)
    _check_against_oracle(backend, tuple(args), split_size=64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q_dtype", [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else []))
def test_query_rows_do_not_depend_on_n_query(backend, q_dtype):
    """Fixed split boundaries: query i of an n_query=4 call equals a 1-query call at its position, bit for bit."""
    args = list(_case(2, 4, 8, 2, 300, 64, "int8", q_dtype))
    seqlens = args[7]
    full = _attend(backend, *args, split_size=128)
    for i in range(4):
        one = list(args)
        one[0], one[7] = args[0][:, i:i + 1], seqlens - 3 + i
        assert torch.equal(_attend(backend, *one, split_size=128), full[:, i:i + 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_a_clear_error(backend):
    err = ValueError if backend == "triton" else RuntimeError
    good = _case(1, 2, 4, 2, 32, 64, "int8", torch.float32)

    def call(i, value, match):
        args = list(good)
        args[i] = value
        with pytest.raises(err, match=match):
            _attend(backend, *args)

    call(0, torch.randn(1, 2, 3, 64, device=DEVICE), "multiple of kv_heads")
    call(0, torch.randn(1, 2, 4, 128, device=DEVICE)[..., ::2], "contiguous")
    call(0, torch.randn(1, 2, 4, 64, device=DEVICE).double(), "q must be")
    call(7, torch.tensor([33], dtype=torch.int32, device=DEVICE), "seqlens")
    call(7, torch.tensor([1], dtype=torch.int32, device=DEVICE), "seqlens")
    call(7, torch.tensor([20], dtype=torch.int64, device=DEVICE), "seqlens")
    call(3, good[3][:, :, :16], "k_scale")
    call(3, None, "k_scale")
    call(1, good[1].float(), "k must be")
    call(8, "int3", "kv_dtype")


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_seqlens_is_a_clear_error(backend):
    """The kernels index seqlens[b] directly: a strided view is refused, not misread."""
    args = list(_case(2, 1, 4, 2, 32, 64, "int8", torch.float32))
    args[7] = torch.tensor([32, 0, 30, 0], dtype=torch.int32, device=DEVICE)[::2]
    with pytest.raises(ValueError if backend == "triton" else RuntimeError, match="seqlens must be contiguous"):
        _attend(backend, *args)


def test_public_api_dispatches_to_triton():
    """rapid_engine.ops.verify_attention(backend='triton') runs this module's kernel."""
    from rapid_engine.ops.attention import verify_attention
    from rapid_engine.ops.kv_quant import QuantizedKV
    args = _case(2, 3, 4, 2, 70, 64, "int4", torch.float32)
    q, kd, vd, ks, kz, vs, vz, seqlens, kv_dtype, _ = args
    out = verify_attention(q, QuantizedKV(kd, ks, kz, kv_dtype), QuantizedKV(vd, vs, vz, kv_dtype), seqlens,
                           backend="triton")
    assert torch.equal(out, _attend("triton", *args))
