"""Plain (non-speculative) decoding: one token per step, sampled with `ops.spec_sample` at gamma = 0.

spec_sample with no drafts draws the "bonus" token from softmax(top-p(top-k(logits / T))), and is greedy
(argmax, ties to the lower id) at temperature 0, so plain and speculative decoding share one sampler.
"""
from __future__ import annotations

from typing import Iterator

import torch

from rapid_engine import ops


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """ValueError naming the parameter when a sampling setting is out of range."""
    if not isinstance(temperature, (int, float)) or not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")


def sample_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits float [B, V] -> next token ids int64 [B]."""
    if logits.dim() != 2:
        raise ValueError(f"sample_next: logits must be [B, V], got {list(logits.shape)}")
    no_drafts = torch.empty((logits.shape[0], 0), dtype=torch.int64, device=logits.device)
    tokens, _ = ops.spec_sample(logits[:, None, :], no_drafts, temperature=float(temperature), top_k=int(top_k),
                                top_p=float(top_p), generator=generator)
    return tokens[:, 0]


def generate_ids(model, prompt_ids: list, *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, kv_dtype: str = "fp32",
                 stop_ids=None) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids after `prompt_ids` (batch 1), stopping after any of `stop_ids`
    (default: the tokenizer's EOS ids; the stop token itself is yielded)."""
    check_sampling(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    if stop_ids is None:
        stop_ids = model.tokenizer.eos_token_ids if model.tokenizer is not None else model.config.eos_token_ids
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(int(seed))
    ids = torch.tensor([prompt_ids], dtype=torch.int64)
    vocab = model.config.vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"prompt token ids must be in [0, {vocab})")
    # Checked here, before the first next(): a bad argument fails at the call, not mid-stream.
    return _decode(model, ids, max_new_tokens, temperature, top_k, top_p, generator, kv_dtype, set(stop_ids))


def _decode(model, ids, max_new_tokens, temperature, top_k, top_p, generator, kv_dtype, stop_ids):
    if max_new_tokens == 0:
        return
    cache = model.new_cache(ids.shape[1] + max_new_tokens, kv_dtype=kv_dtype)
    logits = model.prefill(ids, cache)  # [1, V]
    for step in range(max_new_tokens):
        token = int(sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)[0])
        yield token
        if token in stop_ids or step + 1 == max_new_tokens:
            return
        # token was drawn over the vocabulary: no value check (two host reads per step on a GPU)
        logits = model.forward(torch.tensor([[token]], dtype=torch.int64), cache, ids_checked=True)[:, 0]
