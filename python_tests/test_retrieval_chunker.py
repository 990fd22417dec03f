"""Chunker: spans tile the document (gaps are whitespace only), every chunk fits its token budget when
encoded on its own, breaks prefer paragraphs then sentences, overlap is bounded, errors are clear.
Runs on the real SmolLM2 tokenizer and the real Bible text (rapid_engine.assets)."""
import re

import pytest

from rapid_engine import assets
from rapid_engine.models.tokenizer import Tokenizer
from rapid_engine.retrieval import Chunk, Chunker


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(str(assets.smollm2_path()))


class EncodeOnly:
    """The minimal tokenizer the chunker accepts: encode() only, no offsets (the fallback estimate path)."""
    def __init__(self, tokenizer):
        self._tok = tokenizer

    def encode(self, text, add_special_tokens=False):
        return self._tok.encode(text, add_special_tokens=add_special_tokens)


@pytest.fixture(scope="module")
def bible_part():
    return assets.bible_text()[:60_000]


def n_tokens(tok, text):
    return len(tok.encode(text, add_special_tokens=False))


def check_tiling(document, chunks, tok, budget):
    assert chunks, "no chunks"
    assert chunks[0].start == len(document) - len(document.lstrip())
    assert chunks[-1].end == len(document.rstrip())
    for c in chunks:
        assert isinstance(c, Chunk) and c.score is None
        assert c.text and c.text.strip(), f"empty chunk at {c.start}"
        assert document[c.start:c.end] == c.text
        assert c.n_tokens == n_tokens(tok, c.text) <= budget
    for a, b in zip(chunks, chunks[1:]):
        assert a.end <= b.start, "chunks overlap"
        assert document[a.end:b.start].strip() == "", f"non-whitespace gap {document[a.end:b.start]!r}"


@pytest.mark.parametrize("budget", [16, 61, 512])
@pytest.mark.parametrize("offsets", [True, False], ids=["offsets", "encode-only"])
def test_bible_chunks_tile_and_fit(tokenizer, bible_part, budget, offsets):
    tok = tokenizer if offsets else EncodeOnly(tokenizer)
    doc = bible_part if budget > 16 else bible_part[:8000]
    chunks = Chunker(tok, budget).split(doc)
    check_tiling(doc, chunks, tokenizer, budget)
    # greedy packing: no chunk could have taken its successor's first word and still fit
    # each chunk but the last ends in the back half of its budget
    assert all(c.n_tokens >= budget // 2 - 2 for c in chunks[:-1]), [c.n_tokens for c in chunks]
    again, count = Chunker(tok, budget).split_and_count(doc)
    assert again == chunks  # deterministic
    assert count == n_tokens(tokenizer, doc)


def test_breaks_prefer_paragraphs_then_sentences(tokenizer):
    sent = "The quick brown fox jumps over the lazy dog near the river bank."  # 14 tokens
    para = " ".join([sent] * 6)  # ~84 tokens
    doc = "\n\n".join([para] * 8)
    chunks = Chunker(tokenizer, 200).split(doc)
    check_tiling(doc, chunks, tokenizer, 200)
    para_ends = {m.start() for m in re.finditer(r"\n\n", doc)} | {len(doc)}
    assert all(c.end in para_ends for c in chunks), "a chunk ended inside a paragraph although two fit"
    chunks = Chunker(tokenizer, 50).split(doc)  # a paragraph no longer fits: cut at sentence ends
    check_tiling(doc, chunks, tokenizer, 50)
    assert all(c.text.endswith(".") for c in chunks)


def test_unbreakable_text_is_cut_inside_words(tokenizer):
    doc = "start " + "x7Q" * 3000 + " ünïcødé 漢字テキスト " * 40 + "\n\n" + "end."
    chunks = Chunker(tokenizer, 64).split(doc)
    check_tiling(doc, chunks, tokenizer, 64)
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(doc.split())


def test_tiny_and_single_word_documents(tokenizer):
    for doc in ["word", "  \n padded single line.\n\n  ", "a\n\nb"]:
        chunks = Chunker(tokenizer, 512).split(doc)
        assert len(chunks) == 1
        check_tiling(doc, chunks, tokenizer, 512)


@pytest.mark.parametrize("overlap", [8, 32])
def test_overlap(tokenizer, bible_part, overlap):
    doc = bible_part[:20_000]
    chunks = Chunker(tokenizer, 128, overlap).split(doc)
    for c in chunks:
        assert document_slice_ok(doc, c) and c.n_tokens == n_tokens(tokenizer, c.text) <= 128
    for a, b in zip(chunks, chunks[1:]):
        assert a.start < b.start < a.end and a.end < b.end, "each chunk must start inside the previous and advance"
        assert n_tokens(tokenizer, doc[b.start:a.end]) <= overlap
    assert chunks[-1].end == len(doc.rstrip())
    shared = [n_tokens(tokenizer, doc[b.start:a.end]) for a, b in zip(chunks, chunks[1:])]
    assert sum(shared) / len(shared) >= overlap / 2, f"overlap far below the {overlap} asked: {shared}"


def document_slice_ok(doc, c):
    return doc[c.start:c.end] == c.text and c.text.strip() != ""


@pytest.mark.parametrize("doc", ["", "   \n\t  "])
def test_empty_document_is_an_error(tokenizer, doc):
    with pytest.raises(ValueError, match="document is empty"):
        Chunker(tokenizer).split(doc)


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="document must be a str"):
        Chunker(tokenizer).split(b"bytes")
    with pytest.raises(ValueError, match="chunk_tokens must be an integer >= 16"):
        Chunker(tokenizer, chunk_tokens=8)
    with pytest.raises(ValueError, match="overlap_tokens must be an integer in"):
        Chunker(tokenizer, chunk_tokens=64, overlap_tokens=40)
    with pytest.raises(ValueError, match="tokenizer must have encode"):
        Chunker(object())


def test_params_identify_the_tokenizer(tokenizer):
    from tokenizers import Tokenizer as RawTokenizer

    from rapid_engine.retrieval import minilm_path
    a = Chunker(tokenizer, 512).params()
    assert a != Chunker(tokenizer, 256).params() != Chunker(tokenizer, 256, 16).params()
    assert a == Chunker(Tokenizer.from_dir(str(assets.smollm2_path())), 512).params()
    assert Chunker(EncodeOnly(tokenizer), 512).params() == Chunker(EncodeOnly(tokenizer), 512).params()
    bert = EncodeOnly(RawTokenizer.from_file(str(minilm_path() / "tokenizer.json")))
    bert.encode = lambda text, add_special_tokens=False: bert._tok.encode(text, add_special_tokens=False).ids
    assert Chunker(bert, 512).params()["tokenizer"] != Chunker(EncodeOnly(tokenizer), 512).params()["tokenizer"]
