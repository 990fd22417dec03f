"""KV quantization: kernels bit-exact with the torch reference, error bounds per format, append == quantize."""
import pytest
import torch

from conftest import available_backends
from rapid_engine import ops
from rapid_engine.ops import reference as ref

BACKENDS = [b for b in available_backends("cpu") if b != "torch"]
FORMATS = list(ops.KV_DTYPES)


def _bits(t):
    """Compare float8 (no torch.equal on some versions) and everything else as raw bytes."""
    return None if t is None else t.contiguous().view(torch.uint8)


def _same(a: ops.QuantizedKV, b: ops.QuantizedKV) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(_bits(x), _bits(y)))
               for x, y in ((a.data, b.data), (a.scale, b.scale), (a.zero, b.zero)))


def _inputs(D, T=37, dtype=torch.float32, seed=0):
    """Rows spanning 1e-6 .. 1e3 in magnitude, one all-zero row, one constant row, one with a single spike."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, T, D, generator=g) * torch.logspace(-6, 3, T)[None, None, :, None]
    x[0, 0, 0] = 0
    x[0, 1, 1] = 0.375
    x[1, 2, 2] = 0
    x[1, 2, 2, D // 2] = -5.0
    return x.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [16, 64, 80, 96, 128])
@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_quantize_bit_exact(backend, D, kv_dtype):
    for xdt in (torch.float32, torch.bfloat16, torch.float16):
        x = _inputs(D, dtype=xdt)
        want = ops.quantize_kv(x, kv_dtype, backend="torch")
        got = ops.quantize_kv(x, kv_dtype, backend=backend)
        assert _same(want, got), (kv_dtype, D, xdt)
        assert torch.equal(ops.dequantize_kv(want, backend="torch"), ops.dequantize_kv(got, backend=backend))


def test_fp8_and_half_conversions_cover_every_code():
    """Every representable e4m3 / fp16 value, plus the ties between neighbours, round like torch."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    codes = codes[torch.isfinite(codes) & (codes.abs() <= 448)]
    mids = (codes[None, :-1] + codes[None, 1:]) / 2  # ties -> round to even
    x = torch.cat([codes[None], mids], dim=1)
    x = x[..., : (x.shape[-1] // 16) * 16].reshape(1, 1, -1, 16)
    for be in BACKENDS:
        for f in ("fp8", "fp16", "bf16"):
            assert _same(ops.quantize_kv(x, f, backend="torch"), ops.quantize_kv(x, f, backend=be)), (be, f)


@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_error_bounds(kv_dtype):
    D = 96
    x = _inputs(D)
    q = ops.quantize_kv(x, kv_dtype)
    err = (ops.dequantize_kv(q) - x).abs()
    if kv_dtype == "fp32":
        assert torch.equal(ops.dequantize_kv(q), x)
    elif kv_dtype in ("bf16", "fp16"):
        rel = 2.0 ** -8 if kv_dtype == "bf16" else 2.0 ** -11
        tiny = 0.0 if kv_dtype == "bf16" else 2.0 ** -25  # fp16 subnormal half-step
        assert (err <= x.abs() * rel + tiny).all()
    elif kv_dtype == "int8":
        # at most half a quantization step per element (+ one fp32 rounding of x / scale)
        assert (err <= q.scale[..., None] * (0.5 + 1e-5)).all()
    elif kv_dtype == "fp8":
        # e4m3: 3 mantissa bits -> 2^-4 relative; subnormal step 2^-9 (in units of scale)
        bound = torch.maximum(x.abs() * 2.0 ** -4, q.scale[..., None] * 2.0 ** -10) * (1 + 1e-5)
        assert (err <= bound).all()
    else:
        g = ref.int4_group_size(D)
        s = q.scale.float().repeat_interleave(g, dim=-1)
        xmin = x.reshape(*x.shape[:-1], D // g, g).amin(-1).abs().repeat_interleave(g, dim=-1)
        # half a step, plus the fp16 rounding of scale (x15 at the top code) and of zero; tiny groups
        # round scale/zero to fp16 subnormals (absolute half-step 2^-25)
        assert (err <= s * (0.5 + 16 * 2.0 ** -11) + xmin * 2.0 ** -11 + 17 * 2.0 ** -25).all()
    if kv_dtype in ("int8", "fp8", "int4"):
        assert (q.scale[0, 0, 0] == 0).all() and (q.data[0, 0, 0] == 0).all()  # all-zero row: scale 0, data 0


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_append_equals_quantize(backend, kv_dtype):
    B, H, S, D = 2, 3, 50, 64
    x = _inputs(D, T=S)
    full = ops.quantize_kv(x, kv_dtype, backend="torch")
    dshape, sshape, zshape = ref.kv_storage_shape((B, H, S, D), kv_dtype)
    ddt, sdt, zdt = ref.kv_storage_dtypes(kv_dtype)
    dst = ops.QuantizedKV(torch.zeros(dshape, dtype=ddt), None if sshape is None else torch.zeros(sshape, dtype=sdt),
                          None if zshape is None else torch.zeros(zshape, dtype=zdt), kv_dtype)
    for start, stop in ((0, 17), (17, 18), (18, 50)):  # prefill chunk, one decode token, the rest
        ops.kv_append(dst, x[:, :, start:stop], start, backend=backend)
    assert _same(full, dst)


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_bad_input(backend):
    x = torch.randn(1, 2, 3, 40)
    with pytest.raises(ValueError, match="kv_dtype"):
        ops.quantize_kv(x, "int3", backend=backend)
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.quantize_kv(x, "int4", backend=backend)
    with pytest.raises(ValueError, match=r"\[B, H, T, D\]"):
        ops.quantize_kv(x[0], "int8", backend=backend)
    dst = ops.quantize_kv(torch.randn(1, 2, 8, 64), "int8", backend=backend)
    with pytest.raises(ValueError, match="do not fit"):
        ops.kv_append(dst, torch.randn(1, 2, 3, 64), 6, backend=backend)
    with pytest.raises(ValueError, match="does not match"):
        ops.kv_append(dst, torch.randn(1, 3, 3, 64), 0, backend=backend)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the compiled extension")
def test_cpu_launcher_checks():
    """The C++ launchers check on their own (callers of torch.ops.rapid skip the Python checks)."""
    dst = ops.quantize_kv(torch.randn(1, 2, 8, 64), "int8", backend="cpu")
    with pytest.raises(RuntimeError, match="do not fit"):
        torch.ops.rapid.kv_append(dst.data, dst.scale, torch.empty(0), torch.randn(1, 2, 3, 64), 7, "int8")
    with pytest.raises(RuntimeError, match="scale must be Float"):
        torch.ops.rapid.kv_append(dst.data, dst.scale[:, :, :4], torch.empty(0), torch.randn(1, 2, 3, 64), 0, "int8")
    with pytest.raises(RuntimeError, match="kv_dtype must be one of"):
        torch.ops.rapid.quantize_kv(torch.randn(1, 1, 1, 16), "int2")
    with pytest.raises(RuntimeError, match="int4 needs D % 16"):
        torch.ops.rapid.quantize_kv(torch.randn(1, 1, 1, 40), "int4")
