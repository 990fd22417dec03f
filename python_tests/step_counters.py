"""CPU proxies of a GPU step's cost: the bytes every op reads and writes, and the host reads (syncs) it makes.

ByteCounter (a TorchDispatchMode) sees every aten and torch.ops.rapid op a step runs. Per op: reads = the bytes
of its tensor inputs, writes = the bytes of its outputs, each tensor counted by the memory it spans (an expanded
view is not its numel). Views cost nothing. Ops whose arguments are larger than what they touch are counted by
what they touch: embedding (the looked-up rows), rapid.kv_append (the T written slots, not the whole cache) and
rapid.verify_attention (each KV part up to max(seqlens), not max_len).

HostSyncCounter counts aten._local_scalar_dense (item(), int(t), bool(t): a device-to-host sync on a GPU) at the
dispatcher, and at the torch-function level every Tensor method that hands data to the host (tolist, item,
numpy, __int__ / __float__ / __bool__ / __index__): tolist() on a CPU tensor never reaches the dispatcher, on a
GPU it is a sync all the same; and under torch.inference_mode (Model's methods) item() on an inference tensor
is not seen at the dispatcher, only at the torch-function level.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of memory a tensor spans (an expanded or broadcast view counts its distinct elements once)."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
    return min(t.numel(), span) * t.element_size()


def _tensors(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _kv_append_bytes(args):
    data, scale, zero, x = args[:4]  # data/scale/zero [B, H, S_max, ...]; x [B, H, T, D]
    t, s_max = x.shape[2], data.shape[2]
    written = sum(tensor_bytes(p) * t // s_max for p in (data, scale, zero) if p is not None and p.numel())
    return tensor_bytes(x), written


def _verify_attention_bytes(args, out):
    q, k, v, k_scale, k_zero, v_scale, v_zero, seqlens = args[:8]
    s_max = k.shape[2]
    used = min(int(seqlens.max()), s_max)  # the keys a query can see; the rest of max_len is never read
    kv = sum(tensor_bytes(p) * used // s_max for p in (k, v, k_scale, k_zero, v_scale, v_zero)
             if p is not None and p.numel())
    return tensor_bytes(q) + tensor_bytes(seqlens) + kv, tensor_bytes(out)


class ByteCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = self.writes = 0
        self.by_op = Counter()  # op name -> bytes read + written

    @property
    def total(self) -> int:
        return self.reads + self.writes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        if func.is_view or name in ("aten.detach", "aten.alias", "aten.lift_fresh"):
            return out
        if name == "aten.embedding":
            weight, ids = args[0], args[1]
            r, w = tensor_bytes(ids) + ids.numel() * weight.shape[1] * weight.element_size(), tensor_bytes(out)
        elif name == "rapid.kv_append":
            r, w = _kv_append_bytes(args)
        elif name == "rapid.verify_attention":
            r, w = _verify_attention_bytes(args, out)
        else:
            r = sum(tensor_bytes(t) for t in _tensors((args, kwargs)))
            w = sum(tensor_bytes(t) for t in _tensors(out))
        self.reads += r
        self.writes += w
        self.by_op[name] += r + w
        return out


_HOST_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.numpy, torch.Tensor.__int__,
               torch.Tensor.__float__, torch.Tensor.__bool__, torch.Tensor.__index__}


class _HostReads(TorchFunctionMode):
    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            self.sink.host_reads += 1
        return func(*args, **(kwargs or {}))


class _ScalarDense(TorchDispatchMode):
    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.sink.local_scalar_dense += 1
        return func(*args, **(kwargs or {}))


class HostSyncCounter:
    """with HostSyncCounter() as c: ...; c.syncs = host reads seen (the larger of the two levels' counts)."""

    def __init__(self):
        self.host_reads = self.local_scalar_dense = 0

    @property
    def syncs(self) -> int:
        return max(self.host_reads, self.local_scalar_dense)

    def __enter__(self):
        self._modes = [_HostReads(self), _ScalarDense(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)
        return False
