"""Greedy speculation on the real models emits exactly the target's own tokens (fp32, CPU).

SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct, a few thousand tokens of the King James Bible with a
planted fact, MiniLM retrieval. With temperature 0 and eta 0, `sd` and `rapid` must reproduce `lc` token for
token for gamma 1, 4, 8 and auto; the only accepted excuse is a genuine tie of lc's top two logits at the first
difference, which the test then demonstrates from the target's own logits.
"""
import pytest
import torch

from rapid_engine import assets
from rapid_engine.engine import RapidEngine
from rapid_engine.models.loader import load_model
from rapid_engine.prompting import build_prompt
from rapid_engine.retrieval.needles import FACTS

TIE = 1e-4  # |top1 - top2| below this (in logits) counts as a tie that fp32 rounding may break either way
GAMMAS = [1, 4, 8, "auto"]


def _document(tokenizer, n_tokens, fact):
    text = assets.bible_text()[: n_tokens * 8]
    body = tokenizer.decode(tokenizer.encode(text)[:n_tokens])
    mid = body.find("\n", len(body) // 2)
    return f"{body[:mid]}\n{fact}\n{body[mid:]}"


def _check_same_or_tie(engine, document, question, lc, other, label):
    if other.token_ids == lc.token_ids:
        return
    j = next(i for i, (a, b) in enumerate(zip(lc.token_ids, other.token_ids)) if a != b)
    p = build_prompt(  # no truncation at these lengths: the same ids generate() used
        engine.target.tokenizer, document, question, capacity=engine.max_context, reserve=64)
    logits = engine.target.logits(torch.tensor([p.ids + lc.token_ids[:j]]))[0, -1]
    top2 = torch.topk(logits, 2).values
    gap = float(top2[0] - top2[1])
    print(f"{label}: first difference at token {j}, lc's top-2 logit gap there = {gap:.2e}")
    assert gap < TIE, f"{label} differs from lc at token {j} where lc's top-2 gap is {gap:.3g} (not a tie)"


@pytest.fixture(scope="module", params=["smollm2", "qwen-coder"])
def case(request, tmp_path_factory):
    if request.param == "smollm2":
        model, n_tokens, fact_i = load_model(assets.smollm2_path()), 3000, 0
    else:
        model, n_tokens, fact_i = load_model(assets.qwen_coder_path()), 2000, 7
    fact, question = FACTS[fact_i]
    engine = RapidEngine(model, kv_dtype="fp32", cache_dir=tmp_path_factory.mktemp("cache"))
    document = _document(model.tokenizer, n_tokens, fact)
    kw = dict(max_new_tokens=20, retrieval_tokens=768, chunk_tokens=256)
    lc = engine.generate(document, question, mode="lc", **kw)
    return engine, document, question, kw, lc


@pytest.mark.slow
def test_greedy_sd_and_rapid_eta0_reproduce_lc(case):
    engine, document, question, kw, lc = case
    assert len(lc.token_ids) > 0
    for gamma in GAMMAS:
        sd = engine.generate(document, question, mode="sd", gamma=gamma, **kw)
        assert sd.stats["doc_cache_hit"]  # the long prefill ran once, for lc
        _check_same_or_tie(engine, document, question, lc, sd, f"sd gamma={gamma}")
        if gamma != "auto":
            assert sd.stats["drafted"] > 0
    rapid = engine.generate(document, question, mode="rapid", gamma=4, eta=0.0, **kw)
    _check_same_or_tie(engine, document, question, lc, rapid, "rapid eta=0 gamma=4")
