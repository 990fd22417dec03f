"""KVCache: per-layer K/V storage in any KV format, quantize-on-write, rollback by length.

Layout per layer and per K/V: data [B, H, max_len, D] (int4: [B, H, max_len, D/2]) with scales and
zero points in separate tensors (formats: rapid_engine/ops/reference.py). All layers live in one
tensor per part ([L, B, H, max_len, ...]) so saving and loading is a handful of tensors.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from rapid_engine import _ext
from rapid_engine.ops import reference
from rapid_engine.ops.kv_quant import QuantizedKV, kv_append

_PARTS = ("data", "scale", "zero")


def _kv_dtype_of(data: torch.Tensor) -> str:
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16),
                     ("int8", torch.int8), ("fp8", torch.float8_e4m3fn), ("int4", torch.uint8)):
        if data.dtype == dt:
            return name
    raise ValueError(f"KVCache.from_tensors: no KV format stores data as {data.dtype}")


class KVCache:
    """The target (or drafter) model's KV cache.

    Per decode/verify/prefill step the model does, for every layer i:
        cache.write(i, k_new, v_new, cache.length)          # k_new, v_new [B, H, n, D] float
        out = ops.verify_attention(q, *cache.layer(i), cache.seqlens(n))
    and after the last layer advances `cache.length += n`. Rejected draft tokens are rolled back
    with `cache.truncate(length)` (their slots are simply overwritten by later writes).
    `length` is shared by every row of the batch.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 kv_dtype: str = "fp32", device: Union[str, torch.device] = "cpu", *, backend: str = "auto"):
        reference.check_kv_dtype(kv_dtype, "KVCache")
        for name, val in (("num_layers", num_layers), ("batch_size", batch_size), ("num_kv_heads", num_kv_heads),
                          ("max_len", max_len), ("head_dim", head_dim)):
            if int(val) <= 0:
                raise ValueError(f"KVCache: {name} must be positive, got {val}")
        if kv_dtype == "int4":
            reference.int4_group_size(head_dim)
        self.num_layers, self.batch_size, self.num_kv_heads = num_layers, batch_size, num_kv_heads
        self.max_len, self.head_dim, self.kv_dtype = max_len, head_dim, kv_dtype
        self.device = torch.device(device)
        self.backend = _ext.resolve_backend(backend, self.device, "KVCache")  # resolved once, not per write
        self.length = 0
        self._store: Dict[str, torch.Tensor] = {}
        shapes = reference.kv_storage_shape((batch_size, num_kv_heads, max_len, head_dim), kv_dtype)
        dtypes = reference.kv_storage_dtypes(kv_dtype)
        for kv in ("k", "v"):
            for part, shape, dt in zip(_PARTS, shapes, dtypes):
                if shape is not None:
                    self._store[f"{kv}_{part}"] = torch.zeros((num_layers, *shape), dtype=dt, device=self.device)

    # ---- sizes ----
    @staticmethod
    def bytes_needed(num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                     kv_dtype: str) -> int:
        """Bytes a KVCache of these sizes allocates (so callers can refuse before allocating)."""
        reference.check_kv_dtype(kv_dtype, "KVCache.bytes_needed")
        shapes = reference.kv_storage_shape((batch_size, num_kv_heads, max_len, head_dim), kv_dtype)
        total = 0
        for shape, dt in zip(shapes, reference.kv_storage_dtypes(kv_dtype)):
            if shape is not None:
                n = 1
                for s in shape:
                    n *= s
                total += n * torch.empty((), dtype=dt).element_size()
        return 2 * num_layers * total

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._store.values())

    # ---- access ----
    def _check_layer(self, i: int) -> None:
        if not 0 <= i < self.num_layers:
            raise IndexError(f"KVCache: layer {i} out of range [0, {self.num_layers})")

    def _qkv(self, kv: str, i: int) -> QuantizedKV:
        get = lambda part: self._store[f"{kv}_{part}"][i] if f"{kv}_{part}" in self._store else None  # noqa: E731
        return QuantizedKV(get("data"), get("scale"), get("zero"), self.kv_dtype)

    def layer(self, i: int) -> Tuple[Union[torch.Tensor, QuantizedKV], Union[torch.Tensor, QuantizedKV]]:
        """(k, v) of layer i over the full max_len: plain [B, H, max_len, D] tensors or QuantizedKV."""
        self._check_layer(i)
        k, v = self._qkv("k", i), self._qkv("v", i)
        if self.kv_dtype in reference.PLAIN_DTYPES:
            return k.data, v.data
        return k, v

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Quantize k, v [B, H, T, D] into slots [start, start+T) of layer i (one fused op each).
        start may not exceed `length` (no holes); start + T may not exceed max_len."""
        self._check_layer(i)
        start = int(start)
        if not 0 <= start <= self.length:
            raise ValueError(f"KVCache.write: start must be in [0, length={self.length}], got {start}")
        for name, x in (("k", k), ("v", v)):
            want = (self.batch_size, self.num_kv_heads, x.shape[2] if x.dim() == 4 else -1, self.head_dim)
            if x.dim() != 4 or tuple(x.shape) != want:
                raise ValueError(f"KVCache.write: {name} must be [B={self.batch_size}, H={self.num_kv_heads}, T, "
                                 f"D={self.head_dim}], got {tuple(x.shape)}")
        if start + k.shape[2] > self.max_len:
            raise ValueError(f"KVCache.write: {k.shape[2]} tokens at {start} overflow max_len={self.max_len}")
        kv_append(self._qkv("k", i), k, start, backend=self.backend)
        kv_append(self._qkv("v", i), v, start, backend=self.backend)

    def truncate(self, length: int) -> None:
        """Roll back to `length` valid tokens (0 <= length <= self.length)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"KVCache.truncate: length must be in [0, {self.length}], got {length}")
        self.length = int(length)

    def seqlens(self, n_new: int) -> torch.Tensor:
        """int32 [B] = length + n_new on the cache's device (verify_attention's seqlens)."""
        return torch.full((self.batch_size,), self.length + int(n_new), dtype=torch.int32, device=self.device)

    # ---- save / load ----
    def tensors(self) -> Dict[str, torch.Tensor]:
        """The first `length` tokens of every part ("k_data", "k_scale", ...), contiguous (safetensors-ready)."""
        return {name: t[:, :, :, : self.length].contiguous() for name, t in self._store.items()}

    @classmethod
    def from_tensors(cls, d: Dict[str, torch.Tensor], length: int, max_len: Optional[int] = None,
                     device: Union[str, torch.device, None] = None, kv_dtype: Optional[str] = None,
                     *, backend: str = "auto") -> "KVCache":
        """Rebuild a cache from `tensors()`; max_len defaults to the stored token count."""
        if "k_data" not in d or "v_data" not in d:
            raise ValueError("KVCache.from_tensors: needs at least 'k_data' and 'v_data'")
        found = _kv_dtype_of(d["k_data"])
        if kv_dtype is not None and kv_dtype != found:
            raise ValueError(f"KVCache.from_tensors: tensors hold {found!r}, caller expected {kv_dtype!r}")
        L, B, H, stored, Dd = d["k_data"].shape
        D = Dd * 2 if found == "int4" else Dd
        max_len = stored if max_len is None else max_len
        if not 0 <= length <= min(stored, max_len):
            raise ValueError(f"KVCache.from_tensors: length {length} exceeds the {stored} stored tokens or max_len")
        device = d["k_data"].device if device is None else device
        cache = cls(L, B, H, max_len, D, found, device, backend=backend)
        if set(d) != set(cache._store):
            raise ValueError(f"KVCache.from_tensors: expected parts {sorted(cache._store)}, got {sorted(d)}")
        for name, t in cache._store.items():
            src = d[name]
            if src.dtype != t.dtype or tuple(src.shape[:3]) != tuple(t.shape[:3]) or src.shape[4:] != t.shape[4:]:
                raise ValueError(f"KVCache.from_tensors: {name} is {src.dtype} {tuple(src.shape)}, "
                                 f"expected {t.dtype} {tuple(t.shape[:3])} x tokens x {tuple(t.shape[4:])}")
            t[:, :, :, :length].copy_(src[:, :, :, :length])
        cache.length = int(length)
        return cache

    def __repr__(self) -> str:
        return (f"KVCache(layers={self.num_layers}, B={self.batch_size}, H={self.num_kv_heads}, "
                f"max_len={self.max_len}, D={self.head_dim}, {self.kv_dtype}, {self.device}, length={self.length})")
