"""KVCache: quantize-on-write equals quantize_kv bit for bit, rollback, sizes, save/load, the model's call pattern."""
import pytest
import torch

from conftest import available_backends
from rapid_engine import _ext, ops
from rapid_engine.kv_cache import KVCache

BACKENDS = [b for b in available_backends("cpu") if b != "triton"] + (
    ["triton"] if "triton" in available_backends("cpu") else [])


def _bytes(t):
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", list(ops.KV_DTYPES))
def test_write_equals_quantize(backend, kv_dtype):
    L, B, H, S, D = 2, 2, 3, 40, 64
    g = torch.Generator().manual_seed(1)
    k = torch.randn(L, B, H, S, D, generator=g)
    v = torch.randn(L, B, H, S, D, generator=g)
    cache = KVCache(L, B, H, 48, D, kv_dtype, backend=backend)
    for start, stop in ((0, 25), (25, 26), (26, 40)):  # prefill, a decode token, a verify block
        for i in range(L):
            cache.write(i, k[i, :, :, start:stop], v[i, :, :, start:stop], cache.length)
        cache.length = stop
    for i in range(L):
        for got, x in zip(cache.layer(i), (k[i], v[i])):
            want = ops.quantize_kv(x, kv_dtype, backend="torch")
            got = got if isinstance(got, ops.QuantizedKV) else ops.QuantizedKV(got, None, None, kv_dtype)
            assert got.shape == torch.Size((B, H, 48, D))
            assert torch.equal(_bytes(got.data[:, :, :S]), _bytes(want.data))
            for a, b in ((got.scale, want.scale), (got.zero, want.zero)):
                assert (a is None) == (b is None)
                if a is not None:
                    assert torch.equal(_bytes(a[:, :, :S]), _bytes(b))


def test_model_call_pattern_and_rollback(monkeypatch):
    """write -> verify_attention over layer(i) with seqlens(n) -> advance; truncate rejects drafts."""
    B, H, D, qh = 1, 2, 64, 4
    cache = KVCache(1, B, H, 64, D, "int8")
    g = torch.Generator().manual_seed(2)
    ks, vs = torch.randn(B, H, 64, D, generator=g), torch.randn(B, H, 64, D, generator=g)
    cache.write(0, ks[:, :, :10], vs[:, :, :10], 0)
    cache.length += 10
    q = torch.randn(B, 4, qh, D, generator=g)
    cache.write(0, ks[:, :, 10:14], vs[:, :, 10:14], cache.length)  # 4 drafted tokens
    out = ops.verify_attention(q, *cache.layer(0), cache.seqlens(4))
    assert torch.equal(cache.seqlens(4), torch.tensor([14], dtype=torch.int32))
    kq, vq = ops.quantize_kv(ks[:, :, :14], "int8"), ops.quantize_kv(vs[:, :, :14], "int8")
    # the default CPU path (bf16 tiles on AMX machines) reads the cache as it reads a fresh quantization, bit for bit
    assert torch.equal(out, ops.verify_attention(q, kq, vq, cache.seqlens(4)))
    if _ext.HAS_EXT:  # the exact-fp32 path against the torch fp32 path
        monkeypatch.setenv("RAPID_CPU_ISA", "avx512" if _ext.cpu_isa() in ("amx", "avx512bf16") else _ext.cpu_isa())
        out = ops.verify_attention(q, *cache.layer(0), cache.seqlens(4))
    assert torch.allclose(out, ops.verify_attention(q, kq, vq, cache.seqlens(4), backend="torch"), atol=1e-5)
    cache.length += 4
    cache.truncate(12)  # two drafts rejected
    assert cache.length == 12
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(13)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(-1)
    with pytest.raises(ValueError, match="start must be in"):
        cache.write(0, ks[:, :, :1], vs[:, :, :1], 13)  # would leave a hole
    with pytest.raises(ValueError, match="overflow max_len"):
        cache.write(0, ks[:, :, :60], vs[:, :, :60], 12)
    with pytest.raises(ValueError, match=r"k must be \[B=1, H=2, T, D=64\]"):
        cache.write(0, ks[:, :1, :1], vs[:, :1, :1], 12)
    with pytest.raises(IndexError, match="layer 1"):
        cache.layer(1)


@pytest.mark.parametrize("kv_dtype", list(ops.KV_DTYPES))
def test_sizes_and_save_load(kv_dtype, tmp_path):
    from safetensors.torch import load_file, save_file
    args = (3, 2, 2, 32, 96)
    need = KVCache.bytes_needed(*args, kv_dtype)
    cache = KVCache(*args, kv_dtype)
    assert cache.nbytes() == need
    per_elem = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1 + 4 / 96, "fp8": 1 + 4 / 96, "int4": 0.5 + 4 / 32}[kv_dtype]
    assert need == round(2 * 3 * 2 * 2 * 32 * 96 * per_elem)
    x = torch.randn(2, 2, 20, 96)
    for i in range(3):
        cache.write(i, x * (i + 1), -x, 0)
    cache.length = 20
    save_file(cache.tensors(), str(tmp_path / "kv.safetensors"))
    back = KVCache.from_tensors(load_file(str(tmp_path / "kv.safetensors")), 20, max_len=50, kv_dtype=kv_dtype)
    assert (back.length, back.max_len, back.head_dim, back.kv_dtype) == (20, 50, 96, kv_dtype)
    for i in range(3):
        for a, b in zip(cache.layer(i), back.layer(i)):
            a = a if isinstance(a, torch.Tensor) else a.data
            b = b if isinstance(b, torch.Tensor) else b.data
            assert torch.equal(_bytes(a[:, :, :20]), _bytes(b[:, :, :20]))
    with pytest.raises(ValueError, match="caller expected"):
        KVCache.from_tensors(cache.tensors(), 20, kv_dtype="int4" if kv_dtype != "int4" else "int8")


def test_constructor_errors():
    with pytest.raises(ValueError, match="kv_dtype"):
        KVCache(1, 1, 1, 8, 64, "int2")
    with pytest.raises(ValueError, match="max_len must be positive"):
        KVCache(1, 1, 1, 0, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        KVCache(1, 1, 1, 8, 40, "int4")
    with pytest.raises(ValueError, match="kv_dtype"):
        KVCache.bytes_needed(1, 1, 1, 8, 64, "q4")
