"""RapidEngine: questions about long documents with retrieval-augmented speculative decoding (RAPID).

The only stateful orchestrator. Per `generate` call it builds the prompts, retrieves the drafter's context, checks
that the KV caches fit in memory before allocating anything, prefills (the target's document prefix through the
on-disk document cache), then runs `speculative.speculative_round` until EOS, a stop string or max_new_tokens.

Modes (the paper's baselines): "lc" the target alone on the whole document, token by token; "rag" the target alone
on the retrieved chunks; "sd" the RAG drafter speculates and the target verifies (eta = 0, plain speculative
sampling: exactly the target's distribution); "rapid" the same with RAPID's knowledge-transfer term eta.

eta=None picks the paper's self-speculation setting: 10 when sampling, 1 when greedy. The paper's LongBench v2
runs sample at T = 0.1 with eta = 10, i.e. a shift of eta * T = 1 in logit units; at T = 0 the shift is applied
to raw logits, so 1 is the same strength.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rapid_engine.cost_model import SpeculationCostModel
from rapid_engine.doc_cache import DocumentCache, document_key
from rapid_engine.generation import GenerationResult, GenerationStream, TextTracker
from rapid_engine.prompting import build_prompt
from rapid_engine.resources import available_memory, check_tokenizers_match
from rapid_engine.speculative import DraftState, SamplingParams, speculative_round

MODES = ("lc", "rag", "sd", "rapid")
AUTO_GAMMA_MAX = 8  # longest draft gamma="auto" considers
MEMORY_HEADROOM = 0.9  # refuse caches needing more than this fraction of the free memory


def _model_fingerprint(model) -> str:
    """Identity of a model's weights for cache keys: config, dtype and a sample of the weights themselves."""
    h = hashlib.sha256(repr(sorted(asdict(model.config).items())).encode() + str(model.dtype).encode())
    for t in (model.embed[:16], model.lm_head[-16:], model.layers[0].wqkv[:16], model.layers[-1].w_down[-16:]):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


class RapidEngine:
    def __init__(self, target, drafter=None, *, kv_dtype: str = "bf16", drafter_kv_dtype: str | None = None,
                 embedder="auto", cache_dir=None, max_context: int | None = None, doc_cache_bytes: int = 8 << 30):
        self.target = target
        self.drafter = target if drafter is None else drafter
        if self.drafter is not target:
            check_tokenizers_match(target.tokenizer, self.drafter.tokenizer)
        self.kv_dtype, self.drafter_kv_dtype = kv_dtype, drafter_kv_dtype or kv_dtype
        self.max_context = int(max_context or target.config.max_position_embeddings)
        if cache_dir is None:
            from rapid_engine.assets import cache_dir as default_cache_dir
            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir)
        self.doc_cache = DocumentCache(self.cache_dir / "documents", doc_cache_bytes) if doc_cache_bytes else None
        self._embedder, self._retrievers = embedder, {}
        self._fingerprint = _model_fingerprint(target)
        self._drafter_fingerprint = self._fingerprint if self.drafter is target else _model_fingerprint(self.drafter)

    @classmethod
    def from_pretrained(cls, target, drafter=None, *, device="cpu", dtype=None, kv_dtype: str = "bf16",
                        drafter_kv_dtype: str | None = None, embedder="auto", cache_dir=None, rope_scaling=None,
                        **kwargs) -> "RapidEngine":
        """`target`/`drafter`: model folders or loaded Models. drafter=None: self-speculation (same weights)."""
        from rapid_engine.models import load_model

        def load(m):
            return load_model(str(m), dtype=dtype, device=device, rope_scaling=rope_scaling) \
                if isinstance(m, (str, Path)) else m
        tgt = load(target)
        drf = None if drafter is None else load(drafter)
        return cls(tgt, drf, kv_dtype=kv_dtype, drafter_kv_dtype=drafter_kv_dtype, embedder=embedder,
                   cache_dir=cache_dir, **kwargs)

    def retriever(self, chunk_tokens: int = 512):
        """The ChunkRetriever over the target's tokenizer (one per chunk size; embedder loaded once)."""
        if chunk_tokens not in self._retrievers:
            from rapid_engine.retrieval import ChunkRetriever
            from rapid_engine.retrieval.embedders import resolve_embedder
            if isinstance(self._embedder, str):
                self._embedder = resolve_embedder(self._embedder)
            self._retrievers[chunk_tokens] = ChunkRetriever(
                self.target.tokenizer, self._embedder, chunk_tokens=chunk_tokens,
                cache_dir=self.cache_dir / "retrieval")
        return self._retrievers[chunk_tokens]

    # ------------------------------------------------------------------ generate
    def generate(self, context: str, question: str, *, mode: str = "rapid", max_new_tokens: int = 256,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, gamma="auto", eta=None,
                 residual: str = "exact", retrieval_tokens: int | None = None, chunk_tokens: int = 512,
                 threshold: float | None = None, stop=None, strict: bool = False, seed: int | None = None,
                 stream: bool = False, progress: bool | None = False, ignore_eos: bool = False):
        """Answer `question` about `context`. Returns a GenerationResult, or with stream=True a GenerationStream
        of text pieces whose `result` is set once exhausted. Everything that can be refused (arguments, prompt
        size, memory) is checked here, before any cache is allocated or written.

        seed: with an integer gamma (or greedy decoding) the same seed gives the same tokens. With gamma="auto"
        and sampling, the draft lengths follow measured step times and with them the use of the random stream:
        the seed then fixes the distribution the tokens follow, not the tokens themselves. Likewise rapid's greedy
        tokens (eta > 0) with gamma="auto": the drafter's q enters the decision, and its catch-up forwards have
        timing-dependent widths, so a near-tie in the shifted logits can break either way between runs.
        ignore_eos: keep generating past EOS up to max_new_tokens (benchmarks; as vLLM's option)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if gamma != "auto" and (not isinstance(gamma, int) or not 0 <= gamma <= 64):
            raise ValueError(f"gamma must be 'auto' or an int in [0, 64], got {gamma!r}")
        if mode == "sd" and eta not in (None, 0, 0.0):
            raise ValueError(f"mode='sd' is plain speculative decoding (eta=0); got eta={eta}: use mode='rapid'")
        if temperature is None or temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if eta is None:
            eta = 0.0 if mode != "rapid" else (1.0 if temperature == 0 else 10.0)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if residual not in ("exact", "paper"):
            raise ValueError(f"residual must be 'exact' or 'paper', got {residual!r}")
        if not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        params = SamplingParams(float(temperature), int(top_k), float(top_p), float(eta), residual)
        speculative = mode in ("sd", "rapid")
        gamma_max = 0 if not speculative else (AUTO_GAMMA_MAX if gamma == "auto" else gamma)
        reserve = max_new_tokens + gamma_max + 1  # generated tokens + the widest verification overshoot

        stats = {"mode": mode, "eta": params.eta, "retrieval_s": 0.0}
        target_prompt = drafter_prompt = None
        if mode != "rag":
            target_prompt = build_prompt(self.target.tokenizer, context, question, capacity=self.max_context,
                                         reserve=reserve, strict=strict)
        if mode != "lc":
            t0 = time.perf_counter()
            retrieved = self._retrieve(context, question, retrieval_tokens, chunk_tokens, threshold)
            stats["retrieval_s"] = time.perf_counter() - t0
            drafter_model = self.target if mode == "rag" else self.drafter
            drafter_prompt = build_prompt(drafter_model.tokenizer, retrieved, question, strict=strict,
                                          capacity=int(drafter_model.config.max_position_embeddings),
                                          reserve=reserve, who="drafter")
        if mode == "rag":
            target_prompt, drafter_prompt = drafter_prompt, None
        plan = [(self.target, len(target_prompt.ids) + reserve, self.kv_dtype)]
        if speculative:
            plan.append((self.drafter, len(drafter_prompt.ids) + reserve, self.drafter_kv_dtype))
        self._check_memory(plan)
        stats.update(prompt_tokens=len(target_prompt.ids), truncated_tokens=target_prompt.truncated_tokens,
                     drafter_prompt_tokens=len(drafter_prompt.ids) if drafter_prompt else 0)

        eos_ids = [] if ignore_eos else self.target.tokenizer.eos_token_ids
        pieces = self._run(target_prompt, drafter_prompt, plan, params, gamma, gamma_max, max_new_tokens, stop,
                           eos_ids, seed, stats, progress)
        out = GenerationStream(pieces)
        if stream:
            return out
        for _ in out:
            pass
        return out.result

    def _retrieve(self, context, question, budget, chunk_tokens, threshold) -> str:
        retriever = self.retriever(chunk_tokens)
        index = retriever.index(context)
        text = retriever.build_context(index, question, budget_tokens=budget, threshold=threshold)
        if not text.strip():  # nothing scored above the threshold: the drafter still gets the best chunk
            text = retriever.build_context(index, question, budget_tokens=budget, top_k=1, threshold=-1.0)
        return text

    def _check_memory(self, plan) -> None:
        from rapid_engine.kv_cache import KVCache
        need = 0
        for model, max_len, kv_dtype in plan:
            c = model.config
            need += KVCache.bytes_needed(c.num_layers, 1, c.num_kv_heads, max_len, c.head_dim, kv_dtype)
        free = available_memory(self.target.device)
        if need > MEMORY_HEADROOM * free:
            raise MemoryError(f"KV caches need {need / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is free on "
                              f"{self.target.device}; use a smaller kv_dtype (int8/int4), a shorter context or "
                              f"fewer max_new_tokens")

    def _prefill_cached(self, model, kv_dtype, prompt, max_len, progress):
        """A cache of `model` holding prompt[:-1]. The context part of the prompt (the document for the target,
        the retrieved chunks for the drafter and `rag`) comes from the document cache when it was seen before;
        the question part is always prefilled on top, so a hit and a miss build the same cache.
        Returns (cache, hit, (tokens, seconds) of that question-part prefill)."""
        prefix = prompt.prefix_ids
        fingerprint = self._fingerprint if model is self.target else self._drafter_fingerprint
        key = document_key(fingerprint, kv_dtype, prefix) if self.doc_cache and len(prefix) > 1 else None
        hit = self.doc_cache.load(key) if key else None
        if hit is not None and hit[1].get("length") == len(prefix):
            from rapid_engine.kv_cache import KVCache
            cache = KVCache.from_tensors(hit[0], len(prefix), max_len=max_len, device=model.device,
                                         kv_dtype=kv_dtype)
        else:
            hit = None
            cache = model.new_cache(max_len, kv_dtype=kv_dtype)
            model.prefill(_ids(prefix, model), cache, progress=progress)
            if key:
                self.doc_cache.store(key, cache.tensors(), {"length": len(prefix), "kv_dtype": kv_dtype})
        rest = prompt.tail_ids[:-1]
        t0 = time.perf_counter()
        if rest:
            model.prefill(_ids(rest, model), cache, progress=False)
        return cache, hit is not None, (len(rest), time.perf_counter() - t0)

    def _run(self, target_prompt, drafter_prompt, plan, params, gamma, gamma_max, max_new_tokens, stop, eos_ids,
             seed, stats, progress):
        t0 = time.perf_counter()
        target_cache, stats["doc_cache_hit"], _ = self._prefill_cached(self.target, self.kv_dtype, target_prompt,
                                                                    plan[0][1], progress)
        draft_state = None
        if drafter_prompt is not None:
            d_cache, stats["drafter_cache_hit"], drafter_tail = self._prefill_cached(self.drafter, self.drafter_kv_dtype,
                                                                       drafter_prompt, plan[1][1], progress)
            draft_state = DraftState(self.drafter, d_cache, [drafter_prompt.ids[-1]])
        stats["prefill_s"] = time.perf_counter() - t0

        tok = self.target.tokenizer
        tracker = TextTracker(tok, eos_ids=eos_ids, stop=stop, max_new_tokens=max_new_tokens)
        gen = torch.Generator(device=self.target.device)
        gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        cost = SpeculationCostModel(gamma_max=gamma_max)
        if draft_state is not None and drafter_tail[0] > 1:  # a short prefill is what a drafter catch-up is
            cost.record_catchup(*drafter_tail)
        hist, gammas, drafted, accepted = [0] * (gamma_max + 1), [], 0, 0
        last_token = target_prompt.ids[-1]
        decode_s = 0.0  # time inside the loop: a streamed generation's consumer time (at `yield`) is not decoding
        t0 = time.perf_counter()
        while tracker.finish_reason is None:
            g = (cost.choose(pending=len(draft_state.pending)) if gamma == "auto" else gamma) \
                if draft_state is not None else 0
            g = min(g, max_new_tokens - len(tracker.ids) - 1)  # drafts past the budget would be thrown away
            r = speculative_round(self.target, target_cache, last_token, draft_state, g, params, generator=gen)
            cost.record_verify(g + 1, r.verify_s)
            for s in r.draft_step_s:
                cost.record_draft_step(s)
            if r.catchup_tokens:  # the part of that forward beyond one draft step, per extra token fed
                cost.record_catchup(r.catchup_tokens - 1, max(r.catchup_s - (cost.t_draft.value or 0.0), 0.0))
            cost.record_round(g, r.accepted, r.draft_s + r.verify_s)
            gammas.append(g)
            if g > 0:
                drafted, accepted = drafted + g, accepted + r.accepted
                hist[r.accepted] += 1
            tracker.add(r.tokens)
            last_token = r.tokens[-1]
            piece = tracker.ready_text()
            if piece:
                decode_s += time.perf_counter() - t0
                yield piece
                t0 = time.perf_counter()
        decode_s += time.perf_counter() - t0
        piece = tracker.ready_text()
        if piece:
            yield piece
        spec_rounds = sum(hist)
        stats.update(
            drafted=drafted, accepted=accepted, acceptance_rate=accepted / drafted if drafted else 0.0,
            mean_accepted=accepted / spec_rounds if spec_rounds else 0.0, accepted_hist=hist, rounds=len(gammas),
            gamma=sum(gammas) / len(gammas), decode_s=decode_s, generated_tokens=len(tracker.ids),
            decode_tokens_per_s=len(tracker.ids) / decode_s if decode_s > 0 else 0.0,
            predicted_speedup=cost.predicted_speedup(), alpha=cost.alpha, draft_step_s=cost.t_draft.value,
            verify_s={n: e.value for n, e in sorted(cost.t_verify.items())})
        return GenerationResult(tracker.text, list(tracker.ids), stats, tracker.finish_reason)


def _ids(ids: list[int], model) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long, device=model.device)

