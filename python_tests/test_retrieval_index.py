"""VectorIndex: exact search below 2,000 vectors equals brute force in float64; the HNSW graph reaches
recall@10 >= 0.95 on 20,000 random unit vectors of dimension 384; save/load keeps results identical."""
import numpy as np
import pytest

from rapid_engine.retrieval import VectorIndex


def unit_vectors(n, dim, seed):
    v = np.random.default_rng(seed).standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors, queries, k):
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T  # [q, n]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], scores


@pytest.mark.parametrize("n,k", [(1, 1), (7, 10), (97, 5), (1999, 10)])
def test_exact_search_is_brute_force(n, k):
    vectors, queries = unit_vectors(n, 48, 0), unit_vectors(13, 48, 1)
    index = VectorIndex(vectors)
    assert index.exact and index.hnsw is None and len(index) == n
    scores, ids = index.search(queries, k)
    want_ids, want_scores = brute_force(vectors, queries, min(k, n))
    assert ids.shape == scores.shape == (13, min(k, n))
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(want_scores, want_ids, 1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0), "results must be best first"
    s1, i1 = index.search(queries[0], k)  # a single query [dim] works too
    np.testing.assert_array_equal(i1[0], ids[0])


@pytest.mark.slow
def test_hnsw_recall_20k_random_384d():
    """Random unit vectors in 384-d are the hardest case for a graph index (no low-dimensional
    structure to exploit): at the default M=32, ef_construction=200, recall@10 needs a search beam of
    512 here; real sentence embeddings need far less (see bench/bench_retrieval.py)."""
    vectors, queries = unit_vectors(20_000, 384, 2), unit_vectors(200, 384, 3)
    index = VectorIndex(vectors, ef_search=512)
    assert not index.exact
    _, ids = index.search(queries, 10)
    want, _ = brute_force(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
    assert recall >= 0.95, f"HNSW recall@10 = {recall:.3f}"
    # data points themselves must find themselves (the graph is connected and the beam sees them)
    _, self_ids = index.search(vectors[:200], 1)
    assert np.mean(self_ids[:, 0] == np.arange(200)) >= 0.99


def test_hnsw_save_load_identical(tmp_path):
    vectors, queries = unit_vectors(3000, 32, 4), unit_vectors(20, 32, 5)
    index = VectorIndex(vectors, M=16, ef_construction=100)
    assert not index.exact
    assert index.save_graph(tmp_path / "g.hnsw")
    loaded = VectorIndex.load(vectors, tmp_path / "g.hnsw", M=16, ef_construction=100)
    a, b = index.search(queries, 10), loaded.search(queries, 10)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="graph file missing"):
        VectorIndex.load(vectors, None)
    with pytest.raises(ValueError, match="graph file unexpected"):
        VectorIndex.load(vectors[:10], tmp_path / "g.hnsw")
    assert not VectorIndex(vectors[:10]).save_graph(tmp_path / "none.hnsw")


def test_bad_input():
    vectors = unit_vectors(10, 8, 6)
    index = VectorIndex(vectors)
    with pytest.raises(ValueError, match="queries have dimension 9, expected 8"):
        index.search(np.ones((1, 9), np.float32), 3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(vectors[:1], 0)
    with pytest.raises(ValueError, match="NaN or inf"):
        VectorIndex(np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"2-D array \[n, dim\]"):
        VectorIndex(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="M must be an integer >= 2"):
        VectorIndex(vectors, M=1)
