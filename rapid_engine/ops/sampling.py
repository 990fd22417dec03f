"""`spec_sample`: speculative acceptance + resampling with RAPID's retrieval-augmented target.

Backends: "torch" (reference.spec_sample, float64), "cpu" (C++ kernel), "cuda" (CUDA kernel), "triton".
The registered op torch.ops.rapid.spec_sample takes its random numbers as an input tensor (`uniforms`), so it
is a pure function (opcheck, CUDA graphs); this wrapper draws them from `generator`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from rapid_engine import _ext
from rapid_engine.ops import _registry, reference

RESIDUALS = ("exact", "paper")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# |sum(q_i) - 1| allowed per draft row: half types round each entry to 2^-9 .. 2^-12 relative.
PROB_SUM_TOL = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _fake_spec_sample(target_logits, draft_tokens, draft_probs, uniforms, temperature, top_k, top_p, eta,
                      tail_alpha, residual):
    B, G1, _ = target_logits.shape
    return (target_logits.new_empty((B, G1), dtype=torch.long), target_logits.new_empty((B,), dtype=torch.int32))


_registry.define("spec_sample", reference.spec_sample)
_registry.register_fake("spec_sample", _fake_spec_sample)


def check_spec_args(target_logits, draft_tokens, draft_probs, temperature, top_k, top_p, eta, tail_alpha,
                    residual) -> None:
    """Shape, dtype, device and scalar checks (no data read). ValueError naming the argument."""
    if not isinstance(target_logits, torch.Tensor) or target_logits.dim() != 3:
        raise ValueError(f"spec_sample: target_logits must be a [B, gamma+1, V] tensor, got "
                         f"{getattr(target_logits, 'shape', type(target_logits))}")
    B, G1, V = target_logits.shape
    if target_logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"spec_sample: target_logits must be float32/bfloat16/float16, got {target_logits.dtype}")
    if G1 < 1 or V < 1 or V >= 2**31:
        raise ValueError(f"spec_sample: target_logits [B, gamma+1, V] needs gamma+1 >= 1 and 1 <= V < 2^31, "
                         f"got {tuple(target_logits.shape)}")
    dev = target_logits.device
    if not isinstance(draft_tokens, torch.Tensor) or draft_tokens.dtype != torch.int64 or \
            tuple(draft_tokens.shape) != (B, G1 - 1):
        raise ValueError(f"spec_sample: draft_tokens must be int64 [B, gamma] = {[B, G1 - 1]}, got "
                         f"{getattr(draft_tokens, 'dtype', None)} {tuple(getattr(draft_tokens, 'shape', ()))}")
    if draft_tokens.device != dev:
        raise ValueError(f"spec_sample: draft_tokens is on {draft_tokens.device}, target_logits on {dev}")
    if draft_probs is not None:
        if not isinstance(draft_probs, torch.Tensor) or tuple(draft_probs.shape) != (B, G1 - 1, V) or \
                draft_probs.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"spec_sample: draft_probs must be float32/bfloat16/float16 [B, gamma, V] = "
                             f"{[B, G1 - 1, V]}, got {getattr(draft_probs, 'dtype', None)} "
                             f"{tuple(getattr(draft_probs, 'shape', ()))}")
        if draft_probs.device != dev:
            raise ValueError(f"spec_sample: draft_probs is on {draft_probs.device}, target_logits on {dev}")
    check_sampling_params(temperature, top_k, top_p, who="spec_sample: ")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta)):
        raise ValueError(f"spec_sample: eta must be a finite number, got {eta!r}")
    if not (isinstance(tail_alpha, (int, float)) and 0.0 <= tail_alpha <= 1.0):
        raise ValueError(f"spec_sample: tail_alpha must be in [0, 1] (0 = off), got {tail_alpha!r}")
    if residual not in RESIDUALS:
        raise ValueError(f"spec_sample: residual must be one of {RESIDUALS}, got {residual!r}")


def check_sampling_params(temperature, top_k, top_p, *, who: str = "") -> None:
    """ValueError naming the setting when temperature / top_k / top_p is out of range (`who` prefixes the message);
    every layer that takes sampling settings (this op, plain decoding, the engine, the CLI) checks with this."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"{who}temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"{who}top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"{who}top_p must be in (0, 1] (1 = off), got {top_p!r}")


def check_draft_ids(draft_tokens: torch.Tensor, V: int) -> None:
    """Draft ids in [0, V) (two host syncs on a GPU; the C++ and CUDA launchers check them without)."""
    if draft_tokens.numel() and (int(draft_tokens.min()) < 0 or int(draft_tokens.max()) >= V):
        raise ValueError(f"spec_sample: draft_tokens must be token ids in [0, {V}), got values in "
                         f"[{int(draft_tokens.min())}, {int(draft_tokens.max())}]")


def check_spec_data(target_logits: torch.Tensor, draft_probs: Optional[torch.Tensor]) -> None:
    """Full passes over the data (the C++ and CUDA kernels do these inside their first pass instead)."""
    if torch.isnan(target_logits).any() or torch.isposinf(target_logits).any():
        raise ValueError("spec_sample: target_logits contains NaN or +inf (-inf is the only allowed mask value)")
    if torch.isneginf(target_logits).all(dim=-1).any():
        raise ValueError("spec_sample: target_logits has a row that is -inf everywhere (nothing can be sampled)")
    if draft_probs is not None and draft_probs.numel():
        if not torch.isfinite(draft_probs).all() or (draft_probs < 0).any():
            raise ValueError("spec_sample: draft_probs must be finite and >= 0")
        err = (draft_probs.float().sum(-1) - 1).abs().max()
        if err > PROB_SUM_TOL[draft_probs.dtype]:
            raise ValueError(f"spec_sample: draft_probs rows must sum to 1 (within {PROB_SUM_TOL[draft_probs.dtype]}),"
                             f" worst row is off by {float(err):.3g}")


def draw_uniforms(B: int, gamma: int, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """float64 [B, gamma+1] in [0, 1) from `generator` (drawn on the generator's device, then moved)."""
    gdev = generator.device if generator is not None else torch.device(device)
    return torch.rand((B, gamma + 1), dtype=torch.float64, device=gdev, generator=generator).to(device)


def spec_sample(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: Optional[torch.Tensor] = None,
                *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eta: float = 0.0,
                tail_alpha: float = 0.1, residual: str = "exact", generator: Optional[torch.Generator] = None,
                backend: str = "auto"):
    """Accept a prefix of the drafts and draw one more token. Returns (tokens int64 [B, gamma+1],
    num_accepted int32 [B]): tokens = accepted drafts, then the recovered or bonus token, then -1.

    target_logits [B, gamma+1, V] fp32/bf16/fp16: raw target logits z_i at the verified positions.
    draft_tokens [B, gamma] int64: drafts x_i. draft_probs [B, gamma, V]: q_i, the drafter's distributions
    (None = one-hot at x_i). At drafted position i (temperature T > 0):
      p_i    = softmax(filter(z_i / T)); filter = top-k, then top-p on the top-k-renormalized mass (keep the
               smallest best-ranked set whose mass reaches top_p; ranking by logit, ties by lower token id).
      s_i    = z_i/T + eta * (q_i - p_i) on the filtered support (-inf outside).
      phat_i = softmax(s'_i), s'_i(x) = z_i(x)/T where softmax(s_i)(x) < tail_alpha * max softmax(s_i),
               else s_i(x) (tail protection; tail_alpha = 0 disables it; eta = 0 gives phat_i = p_i).
      accept x_i with probability min(1, phat_i(x_i) / q_i(x_i)) (q_i(x_i) = 0 rejects); stop at the first
      rejection and draw the recovered token from norm(max(phat_i - q_i, 0)) (residual="exact": emitted tokens
      follow phat_i exactly) or norm(max(p_i - phat_i, p_i - q_i, 0)) (residual="paper", Algorithm 1 of the
      paper); a residual of zero mass falls back to phat_i. All accepted: the bonus token is drawn from p_gamma.
    temperature = 0 is greedy: position i's token is argmax(z_i + eta * (q_i - softmax(z_i))) (no filters),
    drafts are accepted while equal to it, the bonus is argmax(z_gamma); ties go to the lower token id.
    Random numbers: uniforms = float64 [B, gamma+1] from `generator`; uniforms[:, i] is draft i's accept test
    (accept iff u_i q_i(x_i) < phat_i(x_i)), uniforms[:, gamma] the final draw by inverse CDF in token-id order.
    Same generator state -> same result on a given backend (backends agree up to float rounding).
    """
    check_spec_args(target_logits, draft_tokens, draft_probs, temperature, top_k, top_p, eta, tail_alpha, residual)
    be = _ext.resolve_backend(backend, target_logits.device, "spec_sample")
    if be in ("torch", "triton"):  # the C++/CUDA launchers check ids and data inside their first pass
        check_draft_ids(draft_tokens, target_logits.shape[-1])
        check_spec_data(target_logits, draft_probs)
    B, G1, _ = target_logits.shape
    uniforms = draw_uniforms(B, G1 - 1, target_logits.device, generator)
    args = (target_logits, draft_tokens, draft_probs, uniforms, float(temperature), int(top_k), float(top_p),
            float(eta), float(tail_alpha), residual)
    if be == "torch":
        return reference.spec_sample(*args)
    if be == "triton":
        from rapid_engine.triton.spec_sample import spec_sample_triton
        return spec_sample_triton(*args)
    return torch.ops.rapid.spec_sample(*args)
