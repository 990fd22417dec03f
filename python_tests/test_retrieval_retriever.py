"""ChunkRetriever on the real SmolLM2 tokenizer and Bible text (hashing embedder: fast, no model):
selection rule (score >= threshold, greedy by score within the budget, document order), exact and
HNSW paths agree, the on-disk cache returns identical results and rebuilds corrupt entries, and bad
input gets a clear error."""
import json

import numpy as np
import pytest

from rapid_engine import assets
from rapid_engine.models.tokenizer import Tokenizer
from rapid_engine.retrieval import ChunkRetriever, DocumentIndex, HashingEmbedder

QUERY = "Let there be light in the firmament of the heaven to divide the day from the night"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(str(assets.smollm2_path()))


@pytest.fixture(scope="module")
def document():
    return assets.bible_text()[:60_000]  # Genesis 1-13, about 15K tokens


def make(tokenizer, **kw):
    kw.setdefault("chunk_tokens", 128)
    return ChunkRetriever(tokenizer, HashingEmbedder(), **kw)


def test_selection_rule(tokenizer, document):
    r = make(tokenizer)
    index = r.index(document)
    assert index.n_tokens == len(tokenizer.encode(document)) and index.default_budget == 4096
    scores = r.chunk_scores(index, QUERY)
    assert np.isfinite(scores).all()  # the exact path scores every chunk
    for budget, top_k, threshold in [(1000, None, 0.0), (128, None, 0.0), (4096, 3, 0.0), (4096, None, 0.25)]:
        got = r.retrieve(index, QUERY, budget_tokens=budget, top_k=top_k, threshold=threshold)
        # the rule, restated: best first, skip what does not fit, stop at top_k or below threshold
        want, left = [], budget
        for i in np.argsort(-scores, kind="stable"):
            if scores[i] < threshold or len(want) == (top_k or len(scores)):
                break
            if index.chunks[i].n_tokens <= left:
                want.append(i)
                left -= index.chunks[i].n_tokens
        assert [c.start for c in got] == sorted(index.chunks[i].start for i in want)
        assert all(c.score >= threshold for c in got) and sum(c.n_tokens for c in got) <= budget
        assert all(a.end <= b.start for a, b in zip(got, got[1:])), "not in document order"
        for c in got:
            assert document[c.start:c.end] == c.text
            assert c.score == pytest.approx(scores[[x.start for x in index.chunks].index(c.start)])
    best = r.retrieve(index, QUERY, top_k=1, threshold=0.0)[0]
    assert "Let there be lights in the firmament" in best.text
    assert index.chunks[0].score is None, "retrieval must not write scores into the index's chunks"
    ctx = r.build_context(index, QUERY, budget_tokens=1000, threshold=0.0)
    assert ctx == "\n\n".join(c.text for c in r.retrieve(index, QUERY, budget_tokens=1000, threshold=0.0))
    assert r.retrieve(document, QUERY, budget_tokens=1000, threshold=0.0) == \
        r.retrieve(index, QUERY, budget_tokens=1000, threshold=0.0)
    assert r.retrieve(index, QUERY, threshold=1.0) == [] and r.build_context(index, QUERY, threshold=1.0) == ""


def test_hnsw_path_agrees_with_exact(tokenizer, document):
    exact, graph = make(tokenizer), make(tokenizer, exact_below=0)
    ie, ig = exact.index(document), graph.index(document)
    assert ie.vectors.exact and not ig.vectors.exact
    for q in [QUERY, "Abram went down into Egypt to sojourn there", "the flood of waters upon the earth"]:
        a = exact.retrieve(ie, q, budget_tokens=2048, threshold=0.0)
        b = graph.retrieve(ig, q, budget_tokens=2048, threshold=0.0)
        assert [c.start for c in a] == [c.start for c in b]
        np.testing.assert_allclose([c.score for c in a], [c.score for c in b], atol=1e-5)


@pytest.mark.parametrize("exact_below", [2000, 0], ids=["exact", "hnsw"])
def test_cache_hit_is_identical(tokenizer, document, tmp_path, exact_below):
    cold = make(tokenizer, cache_dir=tmp_path, exact_below=exact_below).index(document)
    assert cold.source == "built" and set(cold.seconds) == {"chunk", "embed", "graph"}
    entry = tmp_path / cold.key
    names = sorted(p.name for p in entry.iterdir())
    assert names == sorted(["manifest.json", "chunks.npy", "vectors.npy", "window_chunk.npy"]
                           + ([] if exact_below else ["graph.hnsw"]))
    for p in entry.glob("*.npy"):
        np.load(p, allow_pickle=False)  # plain arrays: loading them can never run code
    json.loads((entry / "manifest.json").read_text())
    r2 = make(tokenizer, cache_dir=tmp_path, exact_below=exact_below)  # a fresh process, as far as caching goes
    warm = r2.index(document)
    assert warm.source == "disk" and warm.key == cold.key and set(warm.seconds) == {"load"}
    assert warm.chunks == cold.chunks and warm.n_tokens == cold.n_tokens
    np.testing.assert_array_equal(warm.vectors.vectors, cold.vectors.vectors)
    for q in [QUERY, "the generations of Noah"]:
        assert r2.retrieve(warm, q, threshold=0.0) == r2.retrieve(cold, q, threshold=0.0)
    assert r2.index(document).source == "memory"
    assert make(tokenizer, cache_dir=tmp_path, chunk_tokens=96).index(document).key != cold.key


@pytest.mark.parametrize("damage", ["truncate-vectors", "flip-byte-graph", "flip-byte-chunks", "drop-manifest",
                                    "garbage-manifest", "missing-file", "edited-manifest"])
def test_corrupt_cache_entry_is_rebuilt(tokenizer, document, tmp_path, damage):
    doc = document[:20_000]
    cold = make(tokenizer, cache_dir=tmp_path, exact_below=0).index(doc)
    entry = tmp_path / cold.key
    if damage == "truncate-vectors":
        data = (entry / "vectors.npy").read_bytes()
        (entry / "vectors.npy").write_bytes(data[: len(data) // 2])
    elif damage.startswith("flip-byte"):
        path = entry / ("graph.hnsw" if damage.endswith("graph") else "chunks.npy")
        data = bytearray(path.read_bytes())
        data[len(data) - 9] ^= 0x5A
        path.write_bytes(bytes(data))
    elif damage == "drop-manifest":
        (entry / "manifest.json").unlink()
    elif damage == "garbage-manifest":
        (entry / "manifest.json").write_text("{not json")
    elif damage == "missing-file":
        (entry / "window_chunk.npy").unlink()
    else:
        manifest = json.loads((entry / "manifest.json").read_text())
        manifest["params"]["chunk_tokens"] = 999  # a manifest edited by hand: its own checksum breaks
        (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = make(tokenizer, cache_dir=tmp_path, exact_below=0).index(doc)
    assert rebuilt.source == "built" and rebuilt.chunks == cold.chunks
    assert make(tokenizer, cache_dir=tmp_path, exact_below=0).index(doc).source == "disk"  # repaired on disk
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


class ShiftingEmbedder(HashingEmbedder):
    """An embedder whose output dimension changes after its first call (a misbehaving plugin)."""
    def __init__(self):
        super().__init__(dim=64)
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = super().encode(texts)
        return out if self.calls == 1 else np.pad(out, ((0, 0), (0, 8)))


def test_bad_input(tokenizer, document):
    r = make(tokenizer)
    index = r.index(document[:20_000])
    for bad in ["", "   \n "]:
        with pytest.raises(ValueError, match="document is empty"):
            r.index(bad)
        with pytest.raises(ValueError, match="query must be a non-empty str"):
            r.retrieve(index, bad)
    with pytest.raises(ValueError, match="document must be a str"):
        r.index(None)
    fresh = make(tokenizer)
    with pytest.raises(ValueError, match="query must be a non-empty str"):
        fresh.retrieve(document, " ")
    assert not fresh._memory, "a bad query must be refused before the document is indexed"
    with pytest.raises(ValueError, match=r"budget_tokens=100 is smaller than one chunk \(chunk_tokens=128\)"):
        r.retrieve(index, QUERY, budget_tokens=100)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        r.retrieve(index, QUERY, top_k=0)
    with pytest.raises(ValueError, match="threshold must be a cosine similarity"):
        r.retrieve(index, QUERY, threshold=2.0)
    with pytest.raises(ValueError, match="built with embedder"):
        ChunkRetriever(tokenizer, HashingEmbedder(dim=512), chunk_tokens=128).retrieve(index, QUERY)
    shifting = ChunkRetriever(tokenizer, ShiftingEmbedder(), chunk_tokens=128, batch_size=8)
    with pytest.raises(ValueError, match="dimension 72.*uses dimension 64"):
        shifting.index(document[:20_000])
    with pytest.raises(ValueError, match="chunk_tokens must be an integer >= 16"):
        make(tokenizer, chunk_tokens=4)
    with pytest.raises(ValueError, match="ef_search must be an integer >= 2"):
        make(tokenizer, ef_search=0)
    assert isinstance(index, DocumentIndex)
