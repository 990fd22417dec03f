"""Public functional ops. Each takes backend="auto"|"torch"|"cpu"|"cuda"|"triton".

The same ops are registered as torch.ops.rapid.* (schemas in csrc/torch_bindings.cpp);
rapid_engine.ops.reference holds the pure-torch specification of each.
"""
from rapid_engine.ops.kv_quant import KV_DTYPES, QuantizedKV, dequantize_kv, kv_append, quantize_kv
from rapid_engine.ops.attention import verify_attention
from rapid_engine.ops.sampling import spec_sample
from rapid_engine.ops.linear import linear

__all__ = ["KV_DTYPES", "QuantizedKV", "dequantize_kv", "kv_append", "linear", "quantize_kv", "spec_sample",
           "verify_attention"]
