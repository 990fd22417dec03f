"""RapidEngine end to end on a tiny random-weight Llama (byte vocabulary): modes, exactness, rollback, sampling
distribution, streaming, the document cache and every refusal. Real models: test_engine_real.py."""
import os

import pytest
import torch

from rapid_engine.engine import RapidEngine
from rapid_engine.models.loader import load_model
from rapid_engine.retrieval.embedders import HashingEmbedder
from rapid_engine.speculative import DraftState, SamplingParams, speculative_round

from engine_fixtures import tiny_llama_dir

CONTEXT = " ".join(f"Paragraph {i}: the keeper of gate {i} is named {chr(65 + i % 26)}{i * 7 % 13}." for i in range(40))
QUESTION = "Who keeps gate 17?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # A larger init range gives peaked next-token distributions, so greedy decoding has clear winners.
    return load_model(tiny_llama_dir(tmp_path_factory.mktemp("tiny"), init_range=0.3))


@pytest.fixture
def engine(tiny, tmp_path):
    return RapidEngine(tiny, kv_dtype="fp32", embedder=HashingEmbedder(), cache_dir=tmp_path)


def gen(engine, mode, **kw):
    kw.setdefault("max_new_tokens", 24)
    kw.setdefault("retrieval_tokens", 256)
    kw.setdefault("chunk_tokens", 64)
    return engine.generate(CONTEXT, QUESTION, mode=mode, **kw)


def test_stats_and_stream(engine):
    # A fixed gamma: with "auto", rapid's greedy tokens may differ between runs at near-ties (see generate's doc).
    res = gen(engine, "rapid", seed=0, gamma=4)
    for key in ("drafted", "accepted", "acceptance_rate", "mean_accepted", "accepted_hist", "prefill_s", "decode_s",
                "decode_tokens_per_s", "retrieval_s", "gamma"):
        assert key in res.stats, key
    assert len(res.token_ids) == res.stats["generated_tokens"] > 0
    assert sum(res.stats["accepted_hist"]) * res.stats["mean_accepted"] == pytest.approx(res.stats["accepted"])
    assert res.text == engine.target.tokenizer.decode(res.token_ids)
    stream = gen(engine, "rapid", seed=0, gamma=4, stream=True)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == res.text and stream.result.token_ids == res.token_ids


@pytest.mark.parametrize("gamma", [1, 4, 8, "auto"])
def test_greedy_speculation_emits_exactly_lc(engine, gamma):
    lc = gen(engine, "lc")
    sd = gen(engine, "sd", gamma=gamma)
    rapid0 = gen(engine, "rapid", gamma=gamma, eta=0.0)
    assert sd.token_ids == lc.token_ids and rapid0.token_ids == lc.token_ids
    if gamma != "auto":
        assert sd.stats["drafted"] > 0


def test_rag_is_lc_on_the_retrieved_context(engine):
    retrieved = engine.retriever(64).build_context(CONTEXT, QUESTION, budget_tokens=256)  # the embedder's threshold
    assert 0 < len(retrieved) < len(CONTEXT)
    rag = gen(engine, "rag")
    lc = engine.generate(retrieved, QUESTION, mode="lc", max_new_tokens=24)
    assert rag.token_ids == lc.token_ids and rag.stats["prompt_tokens"] == lc.stats["prompt_tokens"]


def test_retrieval_threshold_defaults_to_the_embedders_own(engine):
    # The hashing embedder's default (0.2) applies unless the caller sets one; at 32-token chunks and a 1024-token
    # budget this context retrieves more at 0.2 than at 0.3, so the two settings are told apart.
    assert HashingEmbedder.default_threshold == 0.2
    retriever = engine.retriever(32)
    at = {th: retriever.build_context(CONTEXT, QUESTION, budget_tokens=1024, threshold=th) for th in (0.2, 0.3)}
    assert len(at[0.2]) > len(at[0.3]) > 0
    for threshold, expected in ((None, at[0.2]), (0.3, at[0.3])):
        kw = {} if threshold is None else {"threshold": threshold}
        rag = engine.generate(CONTEXT, QUESTION, mode="rag", max_new_tokens=1, retrieval_tokens=1024, chunk_tokens=32,
                              **kw)
        lc = engine.generate(expected, QUESTION, mode="lc", max_new_tokens=1)
        assert rag.stats["prompt_tokens"] == lc.stats["prompt_tokens"], threshold


def test_document_cache_skips_the_prefill_and_changes_nothing(engine, tmp_path):
    first = gen(engine, "lc")
    second = gen(engine, "lc")
    assert not first.stats["doc_cache_hit"] and second.stats["doc_cache_hit"]
    assert second.token_ids == first.token_ids
    other = engine.generate(CONTEXT, "Who keeps gate 3?", mode="lc", max_new_tokens=4)
    assert other.stats["doc_cache_hit"]  # same document, new question: the prefix is reused


def test_drafter_prefix_is_cached_and_changes_nothing(engine):
    first = gen(engine, "sd", gamma=4)
    second = gen(engine, "sd", gamma=4)
    assert not first.stats["drafter_cache_hit"] and second.stats["drafter_cache_hit"]
    assert second.token_ids == first.token_ids
    assert second.stats["accepted_hist"] == first.stats["accepted_hist"]  # the drafter proposed the same drafts
    rag1, rag2 = gen(engine, "rag"), gen(engine, "rag")  # rag's target reads the same retrieved prefix
    assert rag2.stats["doc_cache_hit"] and rag2.token_ids == rag1.token_ids


def test_rapid_shift_moves_the_target_towards_the_drafter(engine):
    sd = gen(engine, "sd", gamma=4)
    strong = gen(engine, "rapid", gamma=4, eta=50.0)
    # The shift eta * (q - p) moves the target's argmax towards the drafter's choices: more drafts pass.
    assert strong.stats["acceptance_rate"] > sd.stats["acceptance_rate"]


def _state(model, ids, max_len=512):
    cache = model.new_cache(max_len, kv_dtype="fp32")
    model.prefill(torch.tensor([ids[:-1]]), cache)
    return cache


def test_rollback_leaves_caches_as_if_rejections_never_happened(tiny):
    tok = tiny.tokenizer
    target_ids = tok.encode(CONTEXT[:400] + " Question: who?")
    draft_ids = tok.encode(CONTEXT[200:300] + " Question: who?")
    t_cache, d_cache = _state(tiny, target_ids), _state(tiny, draft_ids)
    before_t = {k: v.clone() for k, v in t_cache.tensors().items()}
    before_d = {k: v.clone() for k, v in d_cache.tensors().items()}
    drafter = DraftState(tiny, d_cache, [draft_ids[-1]])
    params = SamplingParams(temperature=1.0)
    gen_ = torch.Generator().manual_seed(3)
    rounds = [speculative_round(tiny, t_cache, target_ids[-1], drafter, 6, params, generator=gen_)]
    while rounds[-1].accepted == 6:  # want a round with a rejection
        rounds.append(speculative_round(tiny, t_cache, rounds[-1].tokens[-1], drafter, 6, params, generator=gen_))
    emitted = [t for r in rounds for t in r.tokens]
    # Caches hold exactly the prompt and the emitted tokens but the last (it is fed next round).
    assert t_cache.length == len(target_ids) + len(emitted) - 1
    assert d_cache.length + len(drafter.pending) == len(draft_ids) + len(emitted)
    assert drafter.pending[-1] == emitted[-1]
    for name, t in before_t.items():  # the prefix is untouched
        assert torch.equal(t_cache.tensors()[name][..., : t.shape[3], :], t)
    for name, t in before_d.items():
        assert torch.equal(d_cache.tensors()[name][..., : t.shape[3], :], t)
    # A cache that only ever saw the accepted tokens, fed one at a time, holds bit-identical K/V (the model is
    # batch-invariant for small widths) and so gives bit-identical next logits.
    fresh = _state(tiny, target_ids)
    for t in [target_ids[-1]] + emitted[:-1]:
        tiny.forward(torch.tensor([[t]]), fresh)
    assert fresh.length == t_cache.length
    for name, t in fresh.tensors().items():
        assert torch.equal(t_cache.tensors()[name], t), name
    nxt = torch.tensor([[emitted[-1]]])
    assert torch.equal(tiny.forward(nxt, t_cache), tiny.forward(nxt, fresh))
    # The drafter, once fed its queue (all but the last emitted token), likewise.
    if len(drafter.pending) > 1:
        tiny.forward(torch.tensor([drafter.pending[:-1]]), d_cache)
    fresh_d = _state(tiny, draft_ids)
    for t in [draft_ids[-1]] + emitted[:-1]:
        tiny.forward(torch.tensor([[t]]), fresh_d)
    assert fresh_d.length == d_cache.length
    for name, t in fresh_d.tensors().items():
        assert torch.equal(d_cache.tensors()[name], t), name


def test_sampled_speculation_first_token_follows_lc_distribution(tiny):
    """sd with sampling emits, as its first token, a sample of the target's own distribution (chi-square)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    tok = tiny.tokenizer
    target_ids = tok.encode(CONTEXT[:300] + " Q?")
    draft_ids = tok.encode(CONTEXT[200:300] + " Q?")  # the same ending, less before it: a close, imperfect drafter
    params = SamplingParams(temperature=1.0, top_k=8)
    z = tiny.logits(torch.tensor([target_ids]))[0, -1].double()
    top = torch.topk(z, 8)
    p = torch.zeros_like(z)
    p[top.indices] = torch.softmax(top.values, 0)  # lc's exact first-token distribution (top-8, T = 1)
    t_cache, d_cache = _state(tiny, target_ids), _state(tiny, draft_ids)
    t_len, d_len = t_cache.length, d_cache.length
    gen_ = torch.Generator().manual_seed(1234)
    n, counts, accepted = 3000, torch.zeros_like(z), 0
    for _ in range(n):
        drafter = DraftState(tiny, d_cache, [draft_ids[-1]])
        r = speculative_round(tiny, t_cache, target_ids[-1], drafter, 2, params, generator=gen_)
        counts[r.tokens[0]] += 1
        accepted += r.accepted
        t_cache.truncate(t_len)
        d_cache.truncate(d_len)
    assert counts[p == 0].sum() == 0  # never a token outside the top-k
    support = p > 0
    chi2, pval = scipy_stats.chisquare(counts[support].numpy(), (p[support] * n).numpy())
    assert pval > 1e-3, (chi2, pval)
    assert 0 < accepted < 2 * n  # the drafter is neither useless nor identical: both branches ran


def test_sd_and_lc_sample_the_same_distribution_end_to_end(engine):
    """Through generate(): first tokens of sd and lc with sampling agree (two-sample chi-square)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    n = 300
    firsts = {m: [gen(engine, m, max_new_tokens=1, temperature=1.0, top_k=4, seed=s, gamma=3).token_ids[0]
                  for s in range(n)] for m in ("lc", "sd")}
    vocab = sorted(set(firsts["lc"]) | set(firsts["sd"]))
    table = [[firsts[m].count(v) for v in vocab] for m in ("lc", "sd")]
    assert len(vocab) <= 4
    _, pval, _, _ = scipy_stats.chi2_contingency(table)
    assert pval > 1e-3, table


def test_stop_strings_and_eos(engine):
    full = gen(engine, "lc", max_new_tokens=24)
    stop = full.text[5:8]
    cut = gen(engine, "sd", gamma=4, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]
    assert full.finish_reason in ("length", "eos")


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("context,question", [("", QUESTION), (CONTEXT, ""), ("  \n", QUESTION)])
def test_empty_context_or_question(engine, context, question):
    with pytest.raises(ValueError, match="context|question"):
        engine.generate(context, question)


@pytest.mark.parametrize("kw,match", [({"mode": "fast"}, "mode"), ({"gamma": -1}, "gamma"),
                                      ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
                                      ({"mode": "sd", "eta": 2.0}, "eta"), ({"top_p": 0.0}, "top_p"),
                                      ({"residual": "x"}, "residual")])
def test_bad_arguments(engine, kw, match):
    with pytest.raises(ValueError, match=match):
        engine.generate(CONTEXT, QUESTION, **kw)


def test_drafter_with_another_tokenizer_is_refused(tiny, tmp_path):
    other = load_model(tiny_llama_dir(tmp_path / "other", extra_tokens=("<extra>",)))
    with pytest.raises(ValueError, match="tokenizer differs"):
        RapidEngine(tiny, other, cache_dir=tmp_path)


def test_context_that_cannot_fit_even_truncated(engine, tmp_path):
    small = RapidEngine(engine.target, kv_dtype="fp32", embedder=HashingEmbedder(), cache_dir=tmp_path,
                        max_context=300)
    with pytest.raises(ValueError, match="cannot fit"):
        small.generate(CONTEXT, QUESTION, mode="lc", max_new_tokens=200)
    with pytest.raises(ValueError, match="strict=True"):
        small.generate(CONTEXT, QUESTION, mode="lc", max_new_tokens=8, strict=True)
    with pytest.warns(UserWarning, match="middle truncation"):
        res = small.generate(CONTEXT, QUESTION, mode="lc", max_new_tokens=8)
    assert res.stats["truncated_tokens"] > 0 and res.stats["prompt_tokens"] + 8 + 1 <= 300


def test_kv_cache_beyond_free_memory_is_refused_before_allocating(tmp_path):
    big = load_model(tiny_llama_dir(tmp_path / "big", max_positions=1 << 30, hidden=256, heads=4, kv_heads=4))
    eng = RapidEngine(big, kv_dtype="fp32", embedder=HashingEmbedder(), cache_dir=tmp_path / "cache")
    with pytest.raises(MemoryError, match="GiB"):
        eng.generate(CONTEXT, QUESTION, mode="lc", max_new_tokens=1 << 28)
    docs = tmp_path / "cache" / "documents"
    assert not docs.exists() or not os.listdir(docs)  # nothing was written
