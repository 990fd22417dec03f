"""The decoder for LlamaForCausalLM and Qwen2ForCausalLM (they differ only in biases and RoPE defaults).

Weights are held pre-fused per layer ([q; k; v] and [gate; up] stacked along the output dim) so a
decode step is four matrix products per layer. Attention reads and writes the KV cache only through
`rapid_engine.ops` (verify_attention) and `KVCache.write`, so faster kernels plug in unchanged.

Batch invariance: a step over n <= SMALL_M rows uses `ops.linear`, a fixed-order kernel whose rows
do not depend on each other; so verifying n draft tokens at once gives logits bit-identical to
feeding them one at a time (the exactness of greedy speculative decoding rests on this). Bigger
chunks (prefill) use torch's GEMM.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from rapid_engine import _ext, ops
from rapid_engine.models.config import ModelConfig
from rapid_engine.models.rope import RotaryEmbedding
from rapid_engine.ops.linear import linear_fn

SMALL_M = 32  # rows (batch * new tokens) up to which the batch-invariant linear is used
PROGRESS_MIN_TOKENS = 4096  # prefill shows a progress bar from this prompt length on (progress=None)


class _Layer:
    __slots__ = ("attn_norm", "wqkv", "bqkv", "wo", "bo", "mlp_norm", "w_gate_up", "b_gate_up", "w_down", "b_down")


class Model:
    """A loaded decoder. Use `rapid_engine.load_model(path)` to build one."""

    def __init__(self, cfg: ModelConfig, embed, layers, final_norm, lm_head, *, tokenizer=None,
                 dtype=torch.float32, device="cpu", attn_backend="auto"):
        self.config, self.tokenizer = cfg, tokenizer
        self.dtype, self.device = dtype, torch.device(device)
        self.embed, self.layers, self.final_norm, self.lm_head = embed, layers, final_norm, lm_head
        self.rope = RotaryEmbedding(cfg, self.device, dtype)
        # Resolved once here: the hot loop never branches on device or backend.
        if attn_backend == "auto" and self.device.type == "cuda":  # the faster kernel on this card, measured
            from rapid_engine.gpu_backends import verify_attention_backend
            attn_backend = verify_attention_backend(self.device)
        self.attn_backend = _ext.resolve_backend(attn_backend, self.device, "verify_attention")
        # The kernels treat every query row alone; the torch reference batches them through one
        # matmul (shape-dependent rounding), so on that backend small steps go row by row.
        self._attend = _attend_rowwise if self.attn_backend == "torch" else _attend_batched
        self._small_linear = linear_fn(self.device)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_weights(cls, cfg: ModelConfig, weights, *, tokenizer=None, dtype=torch.float32, device="cpu",
                     attn_backend="auto") -> "Model":
        """Read every tensor once from `weights` (a SafetensorsFolder) into fused buffers."""
        hidden, inter, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        q_out, kv_out = cfg.num_heads * d, cfg.num_kv_heads * d

        def read(name, shape):  # the tensor safetensors hands out is already a private copy: keep it
            return weights.get(name, shape).to(device=device, dtype=dtype)

        def fused(names_rows, width):  # stack tensors along dim 0 into one buffer, no temporary concat
            rows = sum(r for _, r in names_rows)
            out = torch.empty((rows, width) if width else (rows,), dtype=dtype, device=device)
            at = 0
            for name, r in names_rows:
                weights.copy_into(out[at:at + r], name)
                at += r
            return out

        embed = read("model.embed_tokens.weight", (cfg.vocab_size, hidden))
        layers = []
        for i in range(cfg.num_layers):
            p, L = f"model.layers.{i}.", _Layer()
            qkv = [(p + f"self_attn.{x}_proj.weight", r) for x, r in (("q", q_out), ("k", kv_out), ("v", kv_out))]
            L.wqkv = fused(qkv, hidden)  # [q_out + 2 kv_out, hidden]
            L.bqkv = fused([(n.replace(".weight", ".bias"), r) for n, r in qkv], 0) if cfg.qkv_bias else None
            L.wo = read(p + "self_attn.o_proj.weight", (hidden, q_out))
            L.bo = read(p + "self_attn.o_proj.bias", (hidden,)) if cfg.o_bias else None
            gate_up = [(p + "mlp.gate_proj.weight", inter), (p + "mlp.up_proj.weight", inter)]
            L.w_gate_up = fused(gate_up, hidden)  # [2 inter, hidden]
            L.b_gate_up = fused([(n.replace(".weight", ".bias"), r) for n, r in gate_up], 0) if cfg.mlp_bias else None
            L.w_down = read(p + "mlp.down_proj.weight", (hidden, inter))
            L.b_down = read(p + "mlp.down_proj.bias", (hidden,)) if cfg.mlp_bias else None
            L.attn_norm = read(p + "input_layernorm.weight", (hidden,))
            L.mlp_norm = read(p + "post_attention_layernorm.weight", (hidden,))
            layers.append(L)
        final_norm = read("model.norm.weight", (hidden,))
        lm_head = embed if cfg.tie_word_embeddings else read("lm_head.weight", (cfg.vocab_size, hidden))
        return cls(cfg, embed, layers, final_norm, lm_head, tokenizer=tokenizer, dtype=dtype, device=device,
                   attn_backend=attn_backend)

    # ---- public API ---------------------------------------------------------------------------
    def new_cache(self, max_len: int, batch_size: int = 1, kv_dtype: str = "fp32"):
        """An empty KV cache for every layer, room for `max_len` tokens per row."""
        from rapid_engine.kv_cache import KVCache

        cfg = self.config
        return KVCache(cfg.num_layers, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim, kv_dtype=kv_dtype,
                       device=self.device)

    def kv_bytes_per_token(self, kv_dtype: str = "fp32") -> int:
        """KV cache bytes one token takes over all layers (data + scales), for memory planning."""
        from rapid_engine.kv_cache import KVCache

        cfg = self.config
        return KVCache.bytes_needed(cfg.num_layers, 1, cfg.num_kv_heads, 1, cfg.head_dim, kv_dtype)

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Stateless full forward: LongTensor [B, T] -> float32 logits [B, T, vocab]."""
        ids = self._check_ids(input_ids, "input_ids")
        cache = self.new_cache(ids.shape[1], batch_size=ids.shape[0])
        return self._lm_logits(self._hidden(ids, cache))

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache, chunk_size: int = 512, progress=None) -> torch.Tensor:
        """Append the prompt `ids` [B, T] to `cache` in chunks; -> float32 logits of the last position [B, V].

        Memory stays bounded by `chunk_size` however long the prompt. progress: None shows a bar for
        prompts of PROGRESS_MIN_TOKENS or more, True/False forces it on/off."""
        ids = self._check_ids(ids, "ids")
        self._check_room(ids, cache)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"prefill: chunk_size must be a positive int, got {chunk_size!r}")
        total = ids.shape[1]
        bar = None
        if progress or (progress is None and total >= PROGRESS_MIN_TOKENS):
            from tqdm import tqdm

            bar = tqdm(total=total, desc="prefill", unit="tok", file=sys.stderr, leave=False)
        for s in range(0, total, chunk_size):
            hidden = self._hidden(ids[:, s:s + chunk_size], cache)
            if bar is not None:
                bar.update(hidden.shape[1])
        if bar is not None:
            bar.close()
        return self._lm_logits(hidden[:, -1:])[:, 0]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache, *, ids_checked: bool = False) -> torch.Tensor:
        """Run n new tokens ids [B, n] at positions cache.length.. ; appends; -> float32 logits [B, n, V].

        ids_checked=True: the caller vouches that every id is in [0, vocab) (the engine's own tokens: checked
        where they entered, or drawn over the vocabulary on the device), so the value check and its two
        device-to-host reads are skipped inside a speculative round."""
        ids = self._check_ids(ids, "ids", values=not ids_checked)
        self._check_room(ids, cache)
        return self._lm_logits(self._hidden(ids, cache))

    __call__ = forward

    # ---- internals ----------------------------------------------------------------------------
    def _check_ids(self, ids, name: str, values: bool = True) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an integer tensor [batch, tokens], got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {list(getattr(ids, 'shape', []))}")
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"{name} must hold at least one token per row, got shape {list(ids.shape)}")
        if not values:
            return ids.to(self.device, torch.int64)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"{name}: token ids must be in [0, {self.config.vocab_size}), got {lo if lo < 0 else hi}")
        return ids.to(self.device, torch.int64)

    def _check_room(self, ids, cache):
        b, n = ids.shape
        if cache.batch_size != b:
            raise ValueError(f"ids has batch {b} but the cache was made for batch_size={cache.batch_size}")
        if cache.length + n > cache.max_len:
            raise ValueError(f"{n} new tokens do not fit the cache: it holds {cache.length} of max_len={cache.max_len}")

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        """x [..., K] @ w[N, K].T (+ b): batch-invariant kernel for small row counts, torch GEMM otherwise."""
        if x.numel() // x.shape[-1] <= SMALL_M:
            return self._small_linear(x, w, b)
        return F.linear(x, w, b)

    def _rmsnorm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return weight * xf.to(x.dtype)

    def _hidden(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Run the layers over ids [B, T] at positions cache.length..; advance the cache; -> final hidden."""
        cfg = self.config
        b, t = ids.shape
        nq, nkv, d, inter = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
        start = cache.length
        cos, sin = _rope_tables(self.rope, cache, start, t)  # [T, D/2]
        seqlens = cache.seqlens(t)  # int32 [B]
        x = F.embedding(ids, self.embed)  # [B, T, hidden]
        for i, L in enumerate(self.layers):
            qkv = self._linear(self._rmsnorm(x, L.attn_norm), L.wqkv, L.bqkv).view(b, t, nq + 2 * nkv, d)
            qk = self.rope.apply(qkv[:, :, :nq + nkv], cos, sin)  # [B, T, nq + nkv, D]
            k_new = qk[:, :, nq:].transpose(1, 2)  # [B, nkv, T, D]
            v_new = qkv[:, :, nq + nkv:].transpose(1, 2)  # [B, nkv, T, D]
            cache.write(i, k_new, v_new, start)
            k, v = cache.layer(i)
            attn = self._attend(qk[:, :, :nq].contiguous(), k, v, seqlens, self.attn_backend)  # [B, T, nq, D]
            x = x + self._linear(attn.reshape(b, t, nq * d), L.wo, L.bo)
            gate, up = self._linear(self._rmsnorm(x, L.mlp_norm), L.w_gate_up, L.b_gate_up).split(inter, dim=-1)
            x = x + self._linear(F.silu(gate) * up, L.w_down, L.b_down)
        cache.length = start + t
        return self._rmsnorm(x, self.final_norm)

    def _lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._linear(hidden, self.lm_head, None).float()

    def __repr__(self):
        c = self.config
        return (f"Model({c.architecture}, layers={c.num_layers}, hidden={c.hidden_size}, heads={c.num_heads}/"
                f"{c.num_kv_heads}, vocab={c.vocab_size}, dtype={self.dtype}, device={self.device}, "
                f"attn_backend={self.attn_backend!r})")


def _rope_tables(rope, cache, start: int, t: int):
    """cos/sin [T, D/2] at positions start..; a cache that carries its positions as a device tensor (the CUDA
    graph runner's, rapid_engine/cuda_graphs.py) gathers them, so a captured step serves every position."""
    positions = getattr(cache, "positions", None)  # int64 [T] on the device, or None
    if positions is None:
        return rope.cos_sin(start, t)
    cos, sin = rope.cos_sin(0, cache.max_len)  # the whole table (built once; views afterwards)
    return cos.index_select(0, positions), sin.index_select(0, positions)


def _attend_batched(q, k, v, seqlens, backend):
    return ops.verify_attention(q, k, v, seqlens, backend=backend)


def _attend_rowwise(q, k, v, seqlens, backend):
    """q [B, n, heads, D]: for B * n <= SMALL_M, one verify_attention per (row, token), the exact shapes of
    single-token decoding, so results do not depend on n or B. Larger blocks (prefill) go in one call."""
    b, n = q.shape[:2]
    if b * n == 1 or b * n > SMALL_M:
        return ops.verify_attention(q, k, v, seqlens, backend=backend)
    rows = []
    for r in range(b):
        kr, vr = _batch_row(k, r), _batch_row(v, r)
        rows.append(torch.cat([ops.verify_attention(q[r:r + 1, i:i + 1], kr, vr, seqlens[r:r + 1] - (n - 1 - i),
                                                    backend=backend) for i in range(n)], dim=1))
    return torch.cat(rows, dim=0)


def _batch_row(kv, r: int):
    if isinstance(kv, torch.Tensor):
        return kv[r:r + 1]
    return ops.QuantizedKV(*(None if t is None else t[r:r + 1] for t in (kv.data, kv.scale, kv.zero)), kv.kv_dtype)
