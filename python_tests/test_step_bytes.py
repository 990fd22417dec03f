"""The bytes one decode / verify step moves stay within 1.15x of what it must move: weights + KV + activations.

A CPU proxy of the GPU step's memory roofline (step_counters.ByteCounter counts every op's reads and writes):
an O(S) copy hidden in the step (a .contiguous() or dequantization of the cache per layer, a float() of the KV)
adds at least one KV read and write and fails the bound; test_counter_catches_a_hidden_kv_copy shows it does.
Real model: SmolLM2-135M-Instruct in bf16 with 8000 tokens of KV (KV = 11-68% of the weights' bytes by format).
"""
from __future__ import annotations

import pytest
import torch

from rapid_engine import assets
from rapid_engine.kv_cache import KVCache
from rapid_engine.models import load_model
from rapid_engine.ops import QuantizedKV
from step_counters import ByteCounter, tensor_bytes

S = 8000
BOUND = 1.15


@pytest.fixture(scope="module")
def smollm2():
    model = load_model(str(assets.smollm2_path()), dtype=torch.bfloat16)
    model.rope.cos_sin(0, S + 16)  # the RoPE table is built once, outside every count
    return model


def filled_cache(model, kv_dtype, length=S):
    """A cache holding `length` tokens of random KV (a step's bytes do not depend on the values)."""
    cache = model.new_cache(length + 16, kv_dtype=kv_dtype)
    for t in cache._store.values():  # constant values: finite scores, and cheap to fill
        t.fill_(0.05 if t.is_floating_point() else 3)
    cache.length = length
    return cache


def weight_bytes(model) -> int:
    layer = sum(tensor_bytes(x) for L in model.layers for x in (L.attn_norm, L.wqkv, L.bqkv, L.wo, L.bo, L.mlp_norm,
                                                                   L.w_gate_up, L.b_gate_up, L.w_down, L.b_down)
                if x is not None)
    return layer + tensor_bytes(model.final_norm) + tensor_bytes(model.lm_head)


def activation_bytes(model, t: int) -> int:
    """An allowance for the step's own tensors: per token and layer, 32 passes over a hidden-size row, 8 over an
    intermediate-size row and 8 over the q/k/v row (norms, RoPE, residuals, SiLU; each a read and a write in
    fp32), plus 4 over the logits row. It does not grow with S."""
    c = model.config
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    per_layer = 32 * c.hidden_size + 8 * c.intermediate_size + 8 * qkv
    return 4 * t * (c.num_layers * per_layer + 4 * c.vocab_size)


def kv_bytes(model, kv_dtype: str, length: int, t: int) -> int:
    """The step reads the KV of length + t tokens and writes that of its t new ones."""
    c = model.config
    per_token = KVCache.bytes_needed(c.num_layers, 1, c.num_kv_heads, 1, c.head_dim, kv_dtype)
    return per_token * (length + 2 * t)


def counted_step(model, cache, t: int) -> ByteCounter:
    ids = torch.arange(1, t + 1)[None]
    with ByteCounter() as counter:
        model.forward(ids, cache, ids_checked=True)
    cache.truncate(S)
    return counter


@pytest.mark.parametrize("t", [1, 11], ids=["decode", "verify11"])
@pytest.mark.parametrize("kv_dtype", ["bf16", "int8", "int4", "fp8"])
def test_step_bytes_near_weights_plus_kv(smollm2, kv_dtype, t):
    cache = filled_cache(smollm2, kv_dtype)
    counter = counted_step(smollm2, cache, t)
    floor = weight_bytes(smollm2) + kv_bytes(smollm2, kv_dtype, S, t)
    allowed = BOUND * (floor + activation_bytes(smollm2, t))
    top = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in counter.by_op.most_common(5))
    assert counter.total <= allowed, f"step moved {counter.total / 1e6:.1f} MB > {allowed / 1e6:.1f} MB ({top})"
    # Nothing the step must read went uncounted (the weights once, the whole KV once).
    assert counter.total >= floor, f"step moved {counter.total / 1e6:.1f} MB < its floor {floor / 1e6:.1f} MB"


def test_counter_catches_a_hidden_kv_copy(smollm2, monkeypatch):
    """The same step with one deliberate O(S) copy (each layer's KV cloned before attention) fails the bound."""
    kv_dtype, t = "int4", 1  # the format with the least KV per token: the hardest case for the bound
    cache = filled_cache(smollm2, kv_dtype)
    clean = counted_step(smollm2, cache, t).total
    original = KVCache.layer

    def layer_with_copy(self, i):
        k, v = original(self, i)
        return tuple(QuantizedKV(*(None if p is None else p.clone() for p in (kv.data, kv.scale, kv.zero)),
                                 kv.kv_dtype) for kv in (k, v))

    monkeypatch.setattr(KVCache, "layer", layer_with_copy)
    copied = counted_step(smollm2, cache, t).total
    allowed = BOUND * (weight_bytes(smollm2) + kv_bytes(smollm2, kv_dtype, S, t) + activation_bytes(smollm2, t))
    assert clean <= allowed < copied, (clean, allowed, copied)


def test_counter_counts_ops_by_what_they_touch():
    x, w = torch.randn(3, 64), torch.randn(128, 64)
    with ByteCounter() as c:
        torch.nn.functional.linear(x, w)  # reads x and w, writes [3, 128]
    assert c.total == 4 * (3 * 64 + 128 * 64 + 3 * 128)
    row = torch.randn(1, 256)
    with ByteCounter() as c:
        wide = row.expand(1000, 256)  # a view: free
        (wide * 2.0).sum()  # the expanded operand spans one row; its [1000, 256] product is real
    assert c.by_op["aten.expand"] == 0
    assert c.by_op["aten.mul"] == 4 * (256 + 1000 * 256)
    assert c.by_op["aten.sum"] == 4 * (1000 * 256 + 1)
