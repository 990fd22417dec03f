"""torch.ops.rapid.* registration glue shared by every op module.

The C++ extension owns the schemas (csrc/torch_bindings.cpp). Without it, the same schemas are
defined here and backed by the pure-torch reference, so torch.ops.rapid.* exist on every install.
Fake (meta) impls are always registered here, so torch.compile and opcheck work.
"""
from __future__ import annotations

import torch

from rapid_engine import _ext

# Must equal csrc/torch_bindings.cpp (python_tests/test_registration.py checks it).
SCHEMAS = {
    "quantize_kv": "quantize_kv(Tensor x, str kv_dtype) -> (Tensor data, Tensor scale, Tensor zero)",
    "dequantize_kv": "dequantize_kv(Tensor data, Tensor? scale, Tensor? zero, str kv_dtype, int head_dim) -> Tensor",
    "kv_append": "kv_append(Tensor(a!) data, Tensor(b!) scale, Tensor(c!) zero, Tensor x, int start, str kv_dtype) -> ()",
    "verify_attention": (
        "verify_attention(Tensor q, Tensor k, Tensor v, Tensor? k_scale, Tensor? k_zero, Tensor? v_scale, "
        "Tensor? v_zero, Tensor seqlens, str kv_dtype, float sm_scale) -> Tensor"
    ),
    "spec_sample": (
        "spec_sample(Tensor target_logits, Tensor draft_tokens, Tensor? draft_probs, Tensor uniforms, "
        "float temperature, int top_k, float top_p, float eta, float tail_alpha, str residual) -> (Tensor, Tensor)"
    ),
    "linear": "linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
}

_lib = None  # torch.library.Library("rapid", "DEF") when the extension is absent
_fake_done: set = set()


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.rapid, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def define(name: str, reference_impl) -> None:
    """Make torch.ops.rapid.<name> exist: C++ if built, else a Python-defined op running `reference_impl`
    (same signature as the schema) for every device."""
    global _lib
    if _ext.HAS_EXT or _has_op(name):
        return
    if _lib is None:
        _lib = torch.library.Library("rapid", "DEF")
    _lib.define(SCHEMAS[name])
    _lib.impl(name, reference_impl, "CompositeExplicitAutograd")


def register_fake(name: str, fake_impl) -> None:
    """Register the meta/fake impl once (shape/dtype propagation for torch.compile, opcheck)."""
    if name in _fake_done:
        return
    torch.library.register_fake(f"rapid::{name}")(fake_impl)
    _fake_done.add(name)
