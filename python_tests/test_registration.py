"""torch.ops.rapid.*: schemas agree with Python's mirror, opcheck passes, torch.compile(fullgraph) traces."""
import math
import warnings

import pytest
import torch

from rapid_engine import ops
from rapid_engine.ops import _registry

KV_OPS = ("quantize_kv", "dequantize_kv", "kv_append", "verify_attention")


@pytest.mark.parametrize("name", sorted(_registry.SCHEMAS))
def test_schema_matches_python_mirror(name):
    op = getattr(torch.ops.rapid, name).default
    want = torch._C.parse_schema("rapid::" + _registry.SCHEMAS[name])
    assert str(op._schema) == str(want)


def _kv(kv_dtype, S=40, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ops.quantize_kv(torch.randn(1, 2, S, D, generator=g), kv_dtype)


@pytest.mark.parametrize("kv_dtype", list(ops.KV_DTYPES))
def test_opcheck_kv_ops(kv_dtype):
    if kv_dtype == "fp8":
        # torch's schema checker multiplies tensors, which float8 does not support ("mul_cpu_reduced_float");
        # the other five formats run test_schema through the same launchers.
        utils = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
        check = lambda op, args: torch.library.opcheck(op, args, test_utils=utils)  # noqa: E731
    else:
        check = torch.library.opcheck
    x = torch.randn(1, 2, 5, 64)
    check(torch.ops.rapid.quantize_kv.default, (x, kv_dtype))
    k = _kv(kv_dtype)
    check(torch.ops.rapid.dequantize_kv.default, (k.data, k.scale, k.zero, kv_dtype, 64))
    scale = k.scale if k.scale is not None else torch.empty(0)
    zero = k.zero if k.zero is not None else torch.empty(0)
    check(torch.ops.rapid.kv_append.default, (k.data, scale, zero, x, 3, kv_dtype))
    q = torch.randn(1, 3, 4, 64)
    v = _kv(kv_dtype, seed=1)
    args = (q, k.data, v.data, k.scale, k.zero, v.scale, v.zero, torch.tensor([37], dtype=torch.int32), kv_dtype,
            1 / math.sqrt(64))
    check(torch.ops.rapid.verify_attention.default, args)


@pytest.mark.parametrize("kv_dtype", ["bf16", "int4"])
def test_torch_compile_fullgraph(kv_dtype):
    """A decode step as the model writes it: append the new K/V, then attend, traced as one graph."""
    from rapid_engine.kv_cache import KVCache
    cache = KVCache(1, 1, 2, 64, 64, kv_dtype)
    cache.write(0, torch.randn(1, 2, 20, 64), torch.randn(1, 2, 20, 64), 0)
    cache.length = 20
    k_store, v_store = cache.layer(0)
    k_store = ops.kv_quant.as_quantized(k_store)
    v_store = ops.kv_quant.as_quantized(v_store)

    def step(q, k_new, v_new, seqlens):
        ops.kv_append(k_store, k_new, 20)
        ops.kv_append(v_store, v_new, 20)
        return ops.verify_attention(q, k_store, v_store, seqlens)

    q, kn, vn = torch.randn(1, 3, 4, 64), torch.randn(1, 2, 3, 64), torch.randn(1, 2, 3, 64)
    sl = torch.tensor([23], dtype=torch.int32)
    eager = step(q, kn, vn, sl)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(q, kn, vn, sl)
    assert torch.equal(eager, compiled)


def test_torch_compile_dynamic_shapes_verify_attention():
    """The Python wrapper under torch.compile with symbolic sequence lengths: its argument checks must trace
    (no cache keyed on symbolic shapes, no dynamo warning about one) and match eager at two lengths."""
    def step(q, k, v, seqlens):
        return ops.verify_attention(q, k, v, seqlens)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=True)
    for S in (20, 37):
        q = torch.randn(1, 3, 4, 64)
        k = ops.quantize_kv(torch.randn(1, 2, S, 64), "int4")
        v = ops.quantize_kv(torch.randn(1, 2, S, 64), "int4")
        sl = torch.tensor([S], dtype=torch.int32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = compiled(q, k, v, sl)
        assert not [w for w in caught if "lru_cache" in str(w.message)]
        assert torch.equal(out, step(q, k, v, sl))
