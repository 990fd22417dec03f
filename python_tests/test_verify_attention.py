"""verify_attention: every backend and CPU path against the float64 reference over the dequantized cache.

Tolerance (FlashAttention's rule): kernel error vs the fp64 oracle <= 2 x the error of the torch path
computing in q's dtype + a tiny floor (1e-5 for fp32 q; one rounding of the output for bf16/fp16 q).
On the bf16-tile path (amx; bf16 / int8 / fp8 / int4 KV, D % 32 == 0) the same-precision torch path is the
one computing what those tiles compute: q, K, V and P rounded to bf16, fp32 sums (ref_tiles).
"""
import math

import pytest
import torch

from conftest import available_backends, cpu_isas
from rapid_engine import _ext, ops
from rapid_engine.ops import reference as ref

FORMATS = list(ops.KV_DTYPES)
QDTYPES = [torch.float32, torch.bfloat16, torch.float16]
HAS_CPU = _ext.HAS_EXT
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="needs the compiled extension")


def make_case(B, nq, qh, kvh, S, D, kv_dtype, qdtype=torch.float32, seqlens=None, seed=0, q_noncontig=False):
    g = torch.Generator().manual_seed(seed)
    shape = (B, qh, nq, D) if q_noncontig else (B, nq, qh, D)
    q = torch.randn(shape, generator=g).to(qdtype)
    if q_noncontig:
        q = q.transpose(1, 2)  # [B, nq, qh, D] with head and query strides swapped
    k = ops.quantize_kv(torch.randn(B, kvh, S, D, generator=g), kv_dtype, backend="torch")
    v = ops.quantize_kv(torch.randn(B, kvh, S, D, generator=g), kv_dtype, backend="torch")
    sl = torch.tensor(seqlens if seqlens is not None else [S] * B, dtype=torch.int32)
    return q, k, v, sl


def ref_out(q, k, v, sl, dtype=None, sm_scale=None):
    D = q.shape[-1]
    return ref.verify_attention(q, k.data, v.data, k.scale, k.zero, v.scale, v.zero, sl, k.kv_dtype,
                                sm_scale if sm_scale is not None else 1 / math.sqrt(D), compute_dtype=dtype)


TILE_FORMATS = ("bf16", "int8", "fp8", "int4")


def on_tiles(backend, kv_dtype, D):
    """Whether this call runs the bf16-tile core (mirrors attn::bf16_core: the path, the format and D)."""
    return (backend == "cpu" and HAS_CPU and _ext.cpu_isa() == "amx" and kv_dtype in TILE_FORMATS
            and D % 32 == 0 and D <= 256)


def ref_tiles(q, k, v, sl, sm_scale=None):
    """The torch path computing what the bf16 tiles compute: q and the K/V values the tiles read rounded to
    bf16 (int8 / fp8 codes are exact there; their per-token scales multiply the scores and P in fp32), fp32
    sums, the softmax numerators P rounded to bf16 before P.V and summed as rounded (scaled formats: P times
    the V scale rounded once more), as the kernel does."""
    B, nq, qh, D = q.shape
    sm = sm_scale if sm_scale is not None else 1 / math.sqrt(D)
    fmt = k.kv_dtype

    def tile_values(t):  # ([B, kvh, S, D] fp32 holding bf16 values, per-token scale [B, kvh, S] or None)
        if fmt in ("int8", "fp8"):
            codes = ref.dequantize_kv(t.data, torch.ones_like(t.scale), None, fmt, D)
            return codes.bfloat16().float(), t.scale.float()
        return ref.dequantize_kv(t.data, t.scale, t.zero, fmt, D).bfloat16().float(), None

    group = qh // k.data.shape[1]
    kc, ks = tile_values(k)
    vc, vs = tile_values(v)
    kc, vc = kc.repeat_interleave(group, 1), vc.repeat_interleave(group, 1)  # [B, qh, S, D]
    qf = q.bfloat16().float().transpose(1, 2)  # [B, qh, nq, D]
    s = torch.matmul(qf, kc.transpose(-1, -2)) * sm  # [B, qh, nq, S]
    if ks is not None:
        s = s * ks.repeat_interleave(group, 1)[:, :, None, :]
    visible = torch.arange(k.data.shape[2])[None, None, :] <= ref.causal_limits(sl, nq)[:, :, None]
    s = s.masked_fill(~visible[:, None], -math.inf)
    p = torch.exp(s - s.amax(-1, keepdim=True)).bfloat16().float()
    w = p if vs is None else (p * vs.repeat_interleave(group, 1)[:, :, None, :]).bfloat16().float()
    out = torch.matmul(w, vc) / p.sum(-1, keepdim=True)
    return out.transpose(1, 2).to(q.dtype).contiguous()


def check_close(out, q, k, v, sl, sm_scale=None, what="", backend=None):
    oracle = ref_out(q, k, v, sl, torch.float64, sm_scale)
    if on_tiles(backend, k.kv_dtype, q.shape[-1]):
        same_prec = ref_tiles(q, k, v, sl, sm_scale)
    else:
        same_prec = ref_out(q, k, v, sl, None, sm_scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    err = (out.double() - oracle).abs().max().item()
    base = (same_prec.double() - oracle).abs().max().item()
    floor = 1e-5 if q.dtype == torch.float32 else torch.finfo(q.dtype).eps * oracle.abs().max().item()
    assert err <= 2 * base + floor, f"{what}: err {err:.3g} > 2 x torch-path err {base:.3g} + {floor:.1g}"


def run(backend, q, k, v, sl, **kw):
    return ops.verify_attention(q, k, v, sl, backend=backend, **kw)


def kernel_paths():
    """(backend, isa) pairs: each CPU path, and the Triton interpreter if present."""
    out = [("cpu", isa) for isa in cpu_isas()]
    if "triton" in available_backends("cpu"):
        out.append(("triton", None))
    return out


PATHS = kernel_paths()
PATH_IDS = [f"{b}-{i}" if i else b for b, i in PATHS]


@pytest.fixture
def path(request, force_isa):
    backend, isa = request.param
    if isa:
        force_isa(isa)
    return backend


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS, indirect=True)
@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("qdtype", QDTYPES, ids=str)
def test_formats_and_dtypes(path, kv_dtype, qdtype):
    # S=97: one partial tile; two batch rows with different seqlens; group 4; D=80 (not a power of 2)
    q, k, v, sl = make_case(2, 4, 8, 2, 97, 80, kv_dtype, qdtype, seqlens=[97, 30])
    check_close(run(path, q, k, v, sl), q, k, v, sl, what=f"{path} {kv_dtype} {qdtype}", backend=path)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS, indirect=True)
@pytest.mark.parametrize("S,D,group,nq", [(1, 64, 1, 1), (97, 96, 7, 3), (1025, 128, 8, 16), (1025, 64, 2, 11),
                                          (600, 48, 3, 1)])
@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16", "int8", "int4"])
def test_shapes(path, S, D, group, nq, kv_dtype):
    if path == "triton" and S > 600:
        pytest.skip("Triton interpreter: small shapes only (covered by the shapes above)")
    kvh = 2
    q, k, v, sl = make_case(2, nq, kvh * group, kvh, S, D, kv_dtype, seqlens=[S, max(nq, S // 3)], seed=S)
    check_close(run(path, q, k, v, sl), q, k, v, sl, what=f"{path} S={S} D={D} G={group} nq={nq}", backend=path)


@needs_cpu
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("kv_dtype", ["bf16", "int8", "int4", "fp8"])
def test_long_cache(isa, kv_dtype, force_isa):
    """S = 32769: 65 splits, the last holding one key."""
    force_isa(isa)
    if isa == "scalar" and kv_dtype != "int8":
        pytest.skip("scalar path: one long case (int8) keeps the suite fast; short cases cover every format")
    q, k, v, sl = make_case(1, 4, 4, 1, 32769, 128, kv_dtype, seqlens=[32769])
    check_close(run("cpu", q, k, v, sl), q, k, v, sl, what=f"{isa} {kv_dtype} S=32769", backend="cpu")


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS, indirect=True)
def test_noncontiguous_q_and_sm_scale(path):
    q, k, v, sl = make_case(2, 5, 6, 3, 300, 64, "int8", torch.bfloat16, seqlens=[300, 77], q_noncontig=True)
    assert not q.is_contiguous()
    check_close(run(path, q, k, v, sl, sm_scale=0.3), q, k, v, sl, sm_scale=0.3, what=f"{path} noncontig q",
                backend=path)


@needs_cpu
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("kv_dtype", ["fp32", "int4"])
def test_prefill_chunk(isa, kv_dtype, force_isa):
    """A prefill chunk of 200 queries (800 rows) on top of 1100 cached tokens."""
    force_isa(isa)
    q, k, v, sl = make_case(1, 200, 8, 2, 1400, 64, kv_dtype, seqlens=[1300])
    check_close(run("cpu", q, k, v, sl), q, k, v, sl, what=f"{isa} prefill", backend="cpu")


@needs_cpu
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("D", [64, 80, 128])
def test_batch_invariance_bitwise(isa, kv_dtype, D, force_isa, monkeypatch):
    """Row i of an n_query=k call equals the n_query=1 call at that position, bit for bit (fp32), on
    either schedule (split-parallel, or row blocks when the partials would not fit). On AVX-512 the
    n_query=1 call (4 rows) runs the direct core and the n_query=7 call (28 rows) the tile-major core for
    D = 64 and 128; D = 80 covers the direct core's odd tail (and the generic core for int4)."""
    force_isa(isa)
    L, n = 1500, 7
    q, k, v, _ = make_case(2, n, 8, 2, 1600, D, kv_dtype, seed=D)
    many = run("cpu", q, k, v, torch.tensor([L + n, L + n - 2], dtype=torch.int32))
    monkeypatch.setenv("RAPID_VERIFY_MAX_PARTIAL_MB", "0")  # force the row-block schedule
    many_rowblock = run("cpu", q, k, v, torch.tensor([L + n, L + n - 2], dtype=torch.int32))
    monkeypatch.delenv("RAPID_VERIFY_MAX_PARTIAL_MB")
    assert torch.equal(many, many_rowblock)
    for i in range(n):
        one = run("cpu", q[:, i:i + 1].contiguous(), k, v, torch.tensor([L + i + 1, L + i - 1], dtype=torch.int32))
        # batch 0: query i sits at L + i; batch 1 (seqlen 2 shorter) at L - 2 + i
        assert torch.equal(one[0, 0], many[0, i]), f"row {i}"
        assert torch.equal(one[1, 0], many[1, i]), f"row {i} of batch 1"


@needs_cpu
@pytest.mark.parametrize("isa", cpu_isas())
def test_int4_strided_scales(isa, force_isa):
    """int4 scale/zero views with a token stride wider than D/32 (only the last dim contiguous)."""
    force_isa(isa)
    q, k, v, sl = make_case(1, 3, 8, 2, 700, 128, "int4", seqlens=[650])

    def widen(t):  # same values, token stride 2 x D/32
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., :t.shape[-1]] = t
        return wide[..., :t.shape[-1]]
    k2, v2 = (ops.QuantizedKV(t.data, widen(t.scale), widen(t.zero), "int4") for t in (k, v))
    assert k2.scale.stride(2) == 2 * k.scale.stride(2)
    out = run("cpu", q, k2, v2, sl)
    check_close(out, q, k, v, sl, what=f"{isa} int4 strided scales", backend="cpu")
    assert torch.equal(out, run("cpu", q, k, v, sl))


def amx_skip_reason():
    """Why the amx path is not here, naming the missing lscpu flag ("" when it is)."""
    if HAS_CPU and "amx" in cpu_isas():
        return ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    missing = [f for f in ("amx_tile", "amx_bf16") if f not in flags]
    return f"CPU lacks {', '.join(missing)}" if missing else "the OS refused the AMX tile state (or no extension)"


needs_amx = pytest.mark.skipif(bool(amx_skip_reason()), reason=f"amx path: {amx_skip_reason()}")


@needs_amx
@pytest.mark.parametrize("S,D,group,nq,seqlens", [(1, 64, 1, 1, [1, 1]), (7, 128, 2, 3, [7, 3]),
                                                  (97, 96, 7, 2, [97, 40]), (1025, 128, 8, 11, [1025, 600]),
                                                  (1025, 64, 7, 4, [1000, 1025]), (600, 256, 1, 16, [600, 17])])
@pytest.mark.parametrize("kv_dtype", TILE_FORMATS)
@pytest.mark.parametrize("qdtype", QDTYPES, ids=str)
def test_tile_shapes(S, D, group, nq, seqlens, kv_dtype, qdtype, force_isa):
    """The bf16-tile core over odd key counts (one key, partial key tiles and blocks, 1025 = two splits + 1),
    group sizes 1 .. 8, D = 64 .. 256 (96: three d chunks) and every query dtype."""
    force_isa("amx")
    assert on_tiles("cpu", kv_dtype, D)
    q, k, v, sl = make_case(2, nq, 2 * group, 2, S, D, kv_dtype, qdtype, seqlens=seqlens, seed=S + D)
    check_close(run("cpu", q, k, v, sl), q, k, v, sl, what=f"amx S={S} D={D} G={group} nq={nq}", backend="cpu")


@needs_amx
def test_tile_model_is_the_kernels_arithmetic(force_isa):
    """The tile path really rounds (its error is far above the fp32 torch path's, so the fp32 tolerance could
    not hold and ref_tiles is the right comparison), and ref_tiles does not model more rounding than the
    kernel does (their errors against fp64 are of the same size), so the 2x rule above stays tight."""
    q, k, v, sl = make_case(1, 4, 8, 2, 3000, 128, "bf16", seed=3)
    force_isa("amx")
    out = run("cpu", q, k, v, sl)
    force_isa("avx512")
    assert not torch.equal(out, run("cpu", q, k, v, sl))
    oracle = ref_out(q, k, v, sl, torch.float64)
    err = (out.double() - oracle).abs().max().item()
    model = (ref_tiles(q, k, v, sl).double() - oracle).abs().max().item()
    fp32 = (ref_out(q, k, v, sl).double() - oracle).abs().max().item()
    assert fp32 < 0.1 * err, f"fp32 path {fp32:.3g} vs tile kernel {err:.3g}"
    assert 0.25 * model <= err <= 2 * model, f"tile kernel {err:.3g} vs ref_tiles {model:.3g}"


@needs_cpu
def test_isa_env_switch(force_isa):
    force_isa("scalar")
    assert _ext.cpu_isa() == "scalar"
    force_isa("bogus")
    with pytest.raises((ValueError, RuntimeError), match="RAPID_CPU_ISA"):
        _ext.cpu_isa()


BAD_BACKENDS = ["torch"] + (["cpu"] if HAS_CPU else [])


@pytest.mark.parametrize("backend", BAD_BACKENDS)
def test_bad_input(backend):
    q, k, v, sl = make_case(1, 2, 4, 2, 16, 64, "int8")

    def bad(match, q=q, k=k, v=v, sl=sl, exc=ValueError):
        with pytest.raises(exc, match=match):
            run(backend, q, k, v, sl)

    bad("multiple of kv_heads", q=torch.randn(1, 2, 3, 64))
    bad("float32, bfloat16 or float16", q=q.double())
    # seqlens values are checked where they are read (the launcher: TORCH_CHECK -> RuntimeError), so the
    # Python wrapper never syncs a device to look at them
    value_exc = ValueError if backend == "torch" else RuntimeError
    bad(r"seqlens.* must lie in \[n_query=2, S_max=16\]", sl=torch.tensor([17], dtype=torch.int32), exc=value_exc)
    bad(r"seqlens.* must lie in \[n_query=2", sl=torch.tensor([1], dtype=torch.int32), exc=value_exc)
    bad("seqlens must be int32", sl=torch.tensor([16]))
    bad("k.scale must be", k=ops.QuantizedKV(k.data, k.scale[:, :, :8], None, "int8"))
    bad("share a KV format", v=ops.quantize_kv(torch.randn(1, 2, 16, 64), "fp8"))
    bad("last dimension must be contiguous", q=torch.randn(1, 2, 64, 4).transpose(2, 3))
    kt = torch.randn(1, 2, 64, 16).transpose(2, 3)  # [1, 2, 16, 64] with D strided
    bad("last dimension must be contiguous", k=kt, v=kt)
    bad("is on meta", k=ops.QuantizedKV(k.data.to("meta"), k.scale.to("meta"), None, "int8"))


@needs_cpu
def test_cpu_launcher_checks():
    """torch.ops.rapid.verify_attention checks on its own (no Python wrapper in front)."""
    q, k, v, sl = make_case(1, 2, 4, 2, 16, 64, "int4")
    op = torch.ops.rapid.verify_attention
    with pytest.raises(RuntimeError, match=r"seqlens\[0\] = 40 must lie in"):
        op(q, k.data, v.data, k.scale, k.zero, v.scale, v.zero, torch.tensor([40], dtype=torch.int32), "int4", 0.1)
    with pytest.raises(RuntimeError, match="k_zero must be Half"):
        op(q, k.data, v.data, k.scale, None, v.scale, v.zero, sl, "int4", 0.1)
    with pytest.raises(RuntimeError, match="k_scale must be Half"):
        op(q, k.data, v.data, k.scale[:, :, :3], k.zero, v.scale, v.zero, sl, "int4", 0.1)
    with pytest.raises(RuntimeError, match="k must be Byte"):
        op(q, k.data.to(torch.int8), v.data, k.scale, k.zero, v.scale, v.zero, sl, "int4", 0.1)
    with pytest.raises(RuntimeError, match="multiple of kv_heads"):
        op(torch.randn(1, 2, 3, 64), k.data, v.data, k.scale, k.zero, v.scale, v.zero, sl, "int4", 0.1)
