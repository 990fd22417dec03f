"""One round of (retrieval-augmented) speculative decoding: draft -> verify -> accept -> roll back.

State between rounds (batch size 1):
- the target's KV cache holds every token *before* `last_token`, the last emitted one, which is not fed yet;
- the drafter's cache holds a prefix, and `DraftState.pending` the emitted tokens it has not seen (ending with
  `last_token`). Feeding them lazily lets rounds with gamma = 0 skip the drafter entirely.

A round with `gamma` drafts:
1. the drafter forwards `pending` (its first draft comes from the last position), then each draft but the last,
   one token at a time, sampling draft i from q_i (greedy: argmax, with q_i its temperature-1 softmax, because
   RAPID's shift needs the real distribution, not a one-hot);
2. the target runs ONE forward over [last_token, d_1 .. d_gamma]: its logits at those gamma + 1 positions are the
   distributions for d_1 .. d_gamma and for the bonus token;
3. `ops.spec_sample` accepts k drafts and emits one more token t (recovered at the first rejection, else bonus);
4. the target's cache keeps [last_token, d_1 .. d_k]; the drafter's keeps what it fed of d_1 .. d_k and queues
   the rest plus t; t is the new `last_token` for both.
With gamma = 0 this is plain decoding: one target token per forward, sampled by spec_sample(gamma=0).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from rapid_engine import ops


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eta: float = 0.0          # RAPID's knowledge-transfer strength; 0 = plain speculative sampling
    residual: str = "exact"
    tail_alpha: float = 0.1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class DraftState:
    """The drafter's side: its model, its KV cache and the emitted tokens it has not been fed yet."""
    model: object
    cache: object
    pending: list[int] = field(default_factory=list)


@dataclass
class RoundResult:
    tokens: list[int]            # emitted this round: accepted drafts, then the recovered or bonus token
    drafted: int
    accepted: int
    draft_s: float = 0.0         # all drafter forwards of the round
    verify_s: float = 0.0        # the target forward + spec_sample
    draft_step_s: list[float] = field(default_factory=list)  # drafter forwards over 1-2 tokens (decode steps)
    catchup_tokens: int = 0      # tokens the round's first drafter forward fed when that was a catch-up (> 2)
    catchup_s: float = 0.0       # that forward's seconds


def draft_distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The drafter's proposal q over the vocabulary, float32 [V]: what its draft is drawn from.

    Greedy: softmax at temperature 1 (the draft itself is the argmax). Sampling: softmax(logits / T) restricted to
    top-k, then to the smallest top-p nucleus. Any q gives exact speculative sampling; matching the target's
    filters only raises acceptance.
    """
    if params.greedy:
        return torch.softmax(logits.float(), dim=-1)
    z = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < z.numel():
        kth = torch.topk(z, params.top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    probs = torch.softmax(z, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_p, dim=0) - sorted_p
        kept = sorted_p * (mass_before < params.top_p)  # tokens after the nucleus already reached top_p drop out
        probs = torch.zeros_like(probs).scatter_(0, order, kept)  # device-side: no nonzero(), no host sync
        probs /= probs.sum()
    return probs


def _fit_vocab(probs: torch.Tensor, vocab: int) -> torch.Tensor:
    """A drafter whose embedding table is padded differently: align q to the target's vocabulary size."""
    if probs.shape[-1] == vocab:
        return probs
    if probs.shape[-1] > vocab:
        probs = probs[..., :vocab]
        return probs / probs.sum(-1, keepdim=True)
    return torch.nn.functional.pad(probs, (0, vocab - probs.shape[-1]))


def sample_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids drawn from probs [..., V] (rows need not be normalized) with uniforms u [...] in [0, 1), on the
    device: the first id whose float64 cumulative mass exceeds u * total. An id of zero mass is never returned
    (a rounding overshoot lands on the last id with mass). No host sync, and CUDA-graph-ready (u is an input)."""
    cdf = torch.cumsum(probs.double(), dim=-1)  # [..., V]
    total = cdf[..., -1:].contiguous()
    x = u.double().unsqueeze(-1) * total
    pick = torch.searchsorted(cdf, x, right=True)
    last_with_mass = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(pick, last_with_mass).squeeze(-1)


def draft(drafter: DraftState, gamma: int, params: SamplingParams, vocab: int, generator=None,
          clock=time.perf_counter, timer=None):
    """Propose `gamma` tokens. Returns (tokens int64 [1, gamma] on the drafter's device, probs float32
    [1, gamma, V] or None, step intervals, (tokens, interval) of a first forward that caught up on more than 2
    pending tokens, else (0, None)). Intervals are `timer` marks, read once the round has synced.

    Tokens stay on the device (argmax, or inverse-CDF sampling with uniforms drawn up front): no host sync per
    draft. Leaves the drafter's cache holding pending + d_1 .. d_{gamma-1} (the last draft is never fed here).
    """
    from rapid_engine.device_clock import StepTimer

    device = drafter.cache.device
    timer = timer or StepTimer(device, clock)
    tokens, probs, steps, catchup = [], [], [], (0, None)
    if gamma and not all(0 <= t < vocab for t in drafter.pending):  # host ints: checked here at no device cost
        raise ValueError(f"draft: pending token ids must be in [0, {vocab}), got {drafter.pending}")
    feed = torch.tensor([drafter.pending], dtype=torch.long, device=device)  # [1, n] the one host-to-device copy
    uniforms = None
    if not params.greedy and gamma:
        gdev = generator.device if generator is not None else device
        uniforms = torch.rand(gamma, dtype=torch.float64, device=gdev, generator=generator).to(device)
    for g in range(gamma):
        t0 = timer.mark()
        logits = drafter.model.forward(feed, drafter.cache, ids_checked=True)[0, -1]  # [V_drafter]
        q = _fit_vocab(draft_distribution(logits, params), vocab)
        token = torch.argmax(logits[:vocab]) if params.greedy else sample_inverse_cdf(q, uniforms[g])  # 0-dim
        interval = (t0, timer.mark())
        if feed.shape[1] <= 2:  # a decode step; longer catch-ups after plain rounds are not draft costs
            steps.append(interval)
        else:
            catchup = (feed.shape[1], interval)
        tokens.append(token)
        probs.append(q)
        feed = token.view(1, 1)
    drafter.pending = []
    keep_probs = not (params.greedy and params.eta == 0.0)  # greedy without shift never reads q
    return (torch.stack(tokens)[None] if tokens else torch.empty(1, 0, dtype=torch.long, device=device),
            torch.stack(probs)[None] if keep_probs else None,
            steps, catchup)


def speculative_round(target, target_cache, last_token: int, drafter: DraftState | None, gamma: int,
                      params: SamplingParams, *, generator=None, backend: str = "auto",
                      clock=time.perf_counter) -> RoundResult:
    """One draft -> verify -> accept round; both caches end as if the rejected drafts were never seen."""
    if gamma > 0 and drafter is None:
        raise ValueError(f"gamma={gamma} needs a drafter")
    if not 0 <= int(last_token) < target.config.vocab_size:  # a host int: the value check costs no device read
        raise ValueError(f"last_token must be a token id in [0, {target.config.vocab_size}), got {last_token}")
    from rapid_engine.device_clock import StepTimer

    vocab = target.config.vocab_size
    device = target_cache.device
    timer = StepTimer(device, clock)
    t_start = timer.mark()
    if gamma > 0:
        drafter_len0 = drafter.cache.length + len(drafter.pending)
        draft_tokens, draft_probs, steps, catchup = draft(drafter, gamma, params, vocab, generator, clock, timer)
        draft_tokens = draft_tokens.to(device)
    else:
        draft_tokens = torch.empty(1, 0, dtype=torch.long, device=device)
        draft_probs, steps, catchup = None, [], (0, None)
    t_drafted = timer.mark()

    last = torch.tensor([[last_token]], dtype=torch.long, device=device)  # checked when it entered (host int)
    verify_ids = torch.cat([last, draft_tokens], dim=1)  # [1, gamma + 1]
    target_len0 = target_cache.length
    logits = target.forward(verify_ids, target_cache, ids_checked=True)  # [1, gamma + 1, V]
    tokens, num_accepted = ops.spec_sample(
        logits, draft_tokens.to(logits.device),
        None if draft_probs is None else draft_probs.to(logits.device),
        temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, eta=params.eta,
        tail_alpha=params.tail_alpha, residual=params.residual, generator=generator, backend=backend)
    t_sampled = timer.mark()
    # The round's one device-to-host read: the accepted count and the tokens, in one transfer.
    host = torch.cat([num_accepted[:1].to(torch.long), tokens[0]]).tolist()
    accepted = host[0]
    emitted = host[1: accepted + 2]
    seconds = timer.seconds  # every mark is complete now

    # Roll back: the target keeps last_token and the accepted drafts; the emitted token is fed next round.
    target_cache.truncate(target_len0 + 1 + accepted)
    if gamma > 0:
        fed = min(accepted, gamma - 1)  # drafts the drafter already holds in its cache and are still valid
        drafter.cache.truncate(drafter_len0 + fed)
        drafter.pending = emitted[fed:accepted] + [emitted[-1]]  # the accepted drafts are emitted[:accepted]
    elif drafter is not None:
        drafter.pending.append(emitted[-1])
    catchup_s = seconds(*catchup[1]) if catchup[1] is not None else 0.0
    return RoundResult(emitted, gamma, accepted, seconds(t_start, t_drafted), seconds(t_drafted, t_sampled),
                       [seconds(a, b) for a, b in steps], catchup[0], catchup_s)
