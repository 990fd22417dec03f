"""Retrieval speed and quality; every figure is a ratio or a rate measured side by side in one run.

    pytest bench/bench_retrieval.py -s      search latency at 1K / 10K vectors (HNSW vs exact matmul, with
                                            recall@10), cache hit vs cold on a 32K-token Bible stretch (hashing)
    python bench/bench_retrieval.py         indexing throughput on a 128K-token Bible stretch with MiniLM and
                                            with the hashing embedder, cache hit vs cold, planted-fact hit rate
                                            (script, minutes on a 2-core CPU: not part of any test run)

pytest writes bench/results/bench_retrieval.json (via conftest); the script writes bench/results/retrieval_index.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import roofline as rl  # noqa: E402


def _unit(n, dim, seed):
    v = np.random.default_rng(seed).standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _tokenizer():
    from rapid_engine import assets
    from rapid_engine.models.tokenizer import Tokenizer
    return Tokenizer.from_dir(str(assets.smollm2_path()))


# ---- pytest-benchmark part ----------------------------------------------------------------------

def _search_figures(n, dim=384, n_queries=64):
    from rapid_engine.retrieval import VectorIndex
    vectors, queries = _unit(n, dim, 0), _unit(n_queries, dim, 1)
    hnsw, exact = VectorIndex(vectors, exact_below=0), VectorIndex(vectors, exact_below=n + 1)
    state = {"i": 0}

    def one(index):
        def call():
            state["i"] = (state["i"] + 1) % n_queries
            return index.search(queries[state["i"]], 10)
        return call
    t = rl.time_interleaved({"hnsw": one(hnsw), "exact": one(exact)}, warmup=5, reps=200)
    truth = exact.search(queries, 10)[1]
    got = hnsw.search(queries, 10)[1]
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
    return {"vectors": n, "dim": dim, "hnsw_ms": t["hnsw"] * 1e3, "exact_ms": t["exact"] * 1e3,
            "exact_over_hnsw": t["exact"] / t["hnsw"], "hnsw_recall_at_10_ef128": recall}


def test_search_latency_1k(report):
    f = _search_figures(1000)
    print(f"\n1K vectors: HNSW {f['hnsw_ms']:.3f} ms, exact {f['exact_ms']:.3f} ms (exact/HNSW {f['exact_over_hnsw']:.2f}), "
          f"recall@10 {f['hnsw_recall_at_10_ef128']:.3f}")
    report(**f)


def test_search_latency_10k(report):
    f = _search_figures(10_000)
    print(f"\n10K vectors: HNSW {f['hnsw_ms']:.3f} ms, exact {f['exact_ms']:.3f} ms (exact/HNSW {f['exact_over_hnsw']:.2f}), "
          f"recall@10 {f['hnsw_recall_at_10_ef128']:.3f}")
    report(**f)


def _cache_figures(tokenizer, document, embedder, question):
    """Cold (chunk + embed + index + query) vs a second question answered from the disk cache by a fresh
    retriever vs one answered from the retriever's memory."""
    from rapid_engine.retrieval import ChunkRetriever
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cold = ChunkRetriever(tokenizer, embedder, cache_dir=cache)
        cold.retrieve(document, question)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = ChunkRetriever(tokenizer, embedder, cache_dir=cache)
        assert warm.index(document).source == "disk"
        warm.retrieve(document, question + " again")
        t_disk = time.perf_counter() - t0
        t_mem = rl.time_call(lambda: warm.retrieve(document, question), warmup=1, reps=5)
    return {"cold_s": t_cold, "disk_hit_s": t_disk, "memory_hit_s": t_mem,
            "cold_over_disk_hit": t_cold / t_disk, "cold_over_memory_hit": t_cold / t_mem}


def test_cache_hit_vs_cold_hashing(report):
    from rapid_engine import assets
    from rapid_engine.retrieval import HashingEmbedder
    tok = _tokenizer()
    document = assets.long_text(32_768, tok.tokenizer)
    f = _cache_figures(tok, document, HashingEmbedder(), "Who did Abram go down into Egypt with?")
    print(f"\n32K tokens, hashing: cold {f['cold_s']:.2f} s, second question from disk {f['disk_hit_s']:.3f} s "
          f"({f['cold_over_disk_hit']:.0f}x), from memory {f['memory_hit_s'] * 1e3:.1f} ms ({f['cold_over_memory_hit']:.0f}x)")
    report(tokens=32_768, embedder="hashing", **f)


# ---- script part: indexing a 128K-token document -----------------------------------------------

def _planted_hit_rate(tokenizer, embedder, n_tokens=32_768):
    from rapid_engine import assets
    from rapid_engine.retrieval import ChunkRetriever
    from rapid_engine.retrieval.needles import hits, plant
    doc = plant(assets.long_text(n_tokens, tokenizer.tokenizer), seed=0)
    r = ChunkRetriever(tokenizer, embedder)
    index = r.index(doc.text)
    t0 = time.perf_counter()
    found = [hits(r.retrieve(index, q), span) for q, span in zip(doc.questions, doc.spans)]
    return float(np.mean(found)), (time.perf_counter() - t0) / len(found)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=131_072)
    ap.add_argument("--embedders", default="hashing,minilm")
    args = ap.parse_args(argv)
    from rapid_engine import assets
    from rapid_engine.retrieval import ChunkRetriever, resolve_embedder
    tok = _tokenizer()
    document = assets.long_text(args.tokens, tok.tokenizer)
    rows = []
    for name in args.embedders.split(","):
        embedder = resolve_embedder(name)
        r = ChunkRetriever(tok, embedder, progress=True)
        t0 = time.perf_counter()
        index = r.index(document)
        t_index = time.perf_counter() - t0
        texts, _ = r._windows(index.chunks)
        cache = _cache_figures(tok, document, embedder, "Who did Abram go down into Egypt with?")
        hit_rate, query_s = _planted_hit_rate(tok, embedder)
        row = {"embedder": embedder.name, "tokens": args.tokens, "chunks": len(index.chunks),
               "windows": len(texts), "graph": not index.vectors.exact, "index_s": t_index,
               "tokens_per_s": args.tokens / t_index, "seconds": index.seconds,
               "embed_tokens_per_s": args.tokens / index.seconds["embed"], "query_ms": query_s * 1e3,
               "planted_facts_hit_rate_32k": hit_rate, **cache}
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    if len(rows) == 2:
        rows.append({"throughput_ratio": f"{rows[0]['embedder']} / {rows[1]['embedder']}",
                     "value": rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]})
    out = BENCH_DIR / "results" / "retrieval_index.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"bench": "retrieval_index", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "machine": rl.machine_info(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
