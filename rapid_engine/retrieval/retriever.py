"""ChunkRetriever: the RAG drafter's context from a long document (RAPID, arXiv 2502.20330, sec. 3).

index(document):  chunk with the target's tokenizer -> cut each chunk into windows the embedder can
                  see whole -> embed the windows in batches -> VectorIndex over them (cached on disk).
retrieve(...):    embed the query -> a chunk scores as its best window -> the best chunks scoring at
                  least `threshold` that fit in `budget_tokens`, returned in document order.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
from tqdm.auto import tqdm

from rapid_engine.retrieval.cache import IndexCache, cache_key
from rapid_engine.retrieval.chunker import Chunk, Chunker
from rapid_engine.retrieval.embedders import resolve_embedder
from rapid_engine.retrieval.index import EXACT_BELOW, VectorIndex

RETRIEVER_VERSION = 1
MIN_BUDGET, BUDGET_FRACTION = 4096, 24  # the paper's default context budget: max(4096, L / 24)
DEFAULT_THRESHOLD = 0.3  # cosine similarity, for sentence-embedding models
PROGRESS_MIN_WINDOWS = 512  # show a progress bar from this many windows on (when progress=None)


@dataclass
class DocumentIndex:
    """Everything retrieval needs about one document. `source`: 'built', 'disk' or 'memory'."""
    chunks: list
    embedder_name: str
    n_tokens: int                     # the whole document, in target-model tokens
    chunk_tokens: int
    vectors: VectorIndex = field(repr=False)        # one vector per window
    window_chunk: np.ndarray = field(repr=False)    # [n_windows] int64, chunk of each window (sorted)
    key: str = ""
    source: str = "built"
    seconds: dict = field(default_factory=dict)  # building: chunk / embed / graph; from disk: load

    @property
    def default_budget(self) -> int:
        return max(MIN_BUDGET, self.n_tokens // BUDGET_FRACTION, self.chunk_tokens)


def _check_query(query) -> None:
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query must be a non-empty str, got {query!r}")


def _embed_checked(embedder, texts: list, expect_dim: int, what: str) -> np.ndarray:
    vecs = np.asarray(embedder.encode(texts))
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise ValueError(f"embedder {embedder.name!r} returned shape {vecs.shape} for {len(texts)} {what}, "
                         f"expected [{len(texts)}, {expect_dim}]")
    if vecs.shape[1] != expect_dim:
        raise ValueError(f"embedder {embedder.name!r} returned vectors of dimension {vecs.shape[1]} for {what}, "
                         f"but its index uses dimension {expect_dim} (the embedder's dim changed between calls)")
    vecs = vecs.astype(np.float32)
    if not np.isfinite(vecs).all():
        raise ValueError(f"embedder {embedder.name!r} returned NaN or inf for {what}")
    # the protocol promises unit rows; renormalising is cheap and keeps scores cosine similarities
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


class ChunkRetriever:
    """Chunks by `tokenizer` (the target model's), embeds with `embedder` ('auto': MiniLM if installed,
    else hashing), indexes with hnswlib (M, ef_construction, ef_search; exact search below `exact_below`
    vectors). `cache_dir`: on-disk cache of built indexes (None: memory only). The last `memory_cache`
    indexes are also kept in memory, so repeated questions about one document skip even the disk.
    """

    def __init__(self, tokenizer, embedder="auto", *, chunk_tokens: int = 512, overlap_tokens: int = 0,
                 cache_dir=None, M: int = 32, ef_construction: int = 200, ef_search: int = 128,
                 exact_below: int = EXACT_BELOW, batch_size: int = 256, progress: Optional[bool] = None,
                 memory_cache: int = 4):
        self.chunker = Chunker(tokenizer, chunk_tokens, overlap_tokens)
        self.embedder = resolve_embedder(embedder)
        if int(self.embedder.dim) != self.embedder.dim or self.embedder.dim < 1:
            raise ValueError(f"embedder.dim must be a positive integer, got {self.embedder.dim!r}")
        self.index_params = {"M": M, "ef_construction": ef_construction, "ef_search": ef_search,
                             "exact_below": int(exact_below)}
        VectorIndex(np.eye(2, dtype=np.float32), **self.index_params)  # validates the numbers now
        self.cache = IndexCache(cache_dir) if cache_dir is not None else None
        self.batch_size, self.progress = int(batch_size), progress
        self._memory: OrderedDict = OrderedDict()
        self._memory_size = int(memory_cache)

    # ---- indexing -------------------------------------------------------------------------------
    def _params(self, document: str) -> dict:
        return {"retriever_version": RETRIEVER_VERSION, "embedder": self.embedder.name,
                "document_sha256": hashlib.sha256(document.encode("utf-8", "surrogatepass")).hexdigest(),
                "document_chars": len(document), **self.chunker.params(),
                **{k: v for k, v in self.index_params.items() if k != "ef_search"}}  # ef_search: query time only

    def index(self, document: str) -> DocumentIndex:
        """Chunk, embed and index `document`, or load it from the memory / disk cache."""
        if not isinstance(document, str):
            raise ValueError(f"document must be a str, got {type(document).__name__}")
        if not document.strip():
            raise ValueError("document is empty (no non-whitespace text to index)")
        params = self._params(document)
        key = cache_key(params)
        if key in self._memory:
            self._memory.move_to_end(key)
            return dataclasses.replace(self._memory[key], source="memory")
        t0 = time.perf_counter()
        doc_index = self._load(document, key, params) if self.cache is not None else None
        if doc_index is not None:
            doc_index.seconds["load"] = time.perf_counter() - t0
        else:
            doc_index = self._build(document, key, params)
        self._memory[key] = doc_index
        while len(self._memory) > self._memory_size:
            self._memory.popitem(last=False)
        return doc_index

    def _windows(self, chunks: list) -> tuple[list, np.ndarray]:
        """Texts of all windows, and the chunk each belongs to (chunks in order, windows in order)."""
        split = getattr(self.embedder, "windows", None)
        texts, owner = [], []
        for c_id, chunk in enumerate(chunks):
            spans = split(chunk.text) if split is not None else [(0, len(chunk.text))]
            texts.extend(chunk.text[s:e] for s, e in spans)
            owner.extend([c_id] * len(spans))
        return texts, np.asarray(owner, dtype=np.int64)

    def _build(self, document: str, key: str, params: dict) -> DocumentIndex:
        t0 = time.perf_counter()
        chunks, n_tokens = self.chunker.split_and_count(document)
        texts, owner = self._windows(chunks)
        t1 = time.perf_counter()
        show = self.progress if self.progress is not None else len(texts) >= PROGRESS_MIN_WINDOWS
        vecs = np.empty((len(texts), int(self.embedder.dim)), np.float32)
        with tqdm(total=len(texts), desc="embedding chunks", unit="window", disable=not show) as bar:
            for b in range(0, len(texts), self.batch_size):
                batch = texts[b:b + self.batch_size]
                vecs[b:b + len(batch)] = _embed_checked(self.embedder, batch, vecs.shape[1], "chunk windows")
                bar.update(len(batch))
        t2 = time.perf_counter()
        vectors = VectorIndex(vecs, **self.index_params)
        seconds = {"chunk": t1 - t0, "embed": t2 - t1, "graph": time.perf_counter() - t2}
        doc_index = DocumentIndex(chunks, self.embedder.name, n_tokens, self.chunker.chunk_tokens,
                                  vectors, owner, key, "built", seconds)
        if self.cache is not None:
            spans = np.asarray([(c.start, c.end, c.n_tokens) for c in chunks], dtype=np.int64)
            self.cache.save(key, params, {"n_tokens": n_tokens},
                            {"chunks": spans, "vectors": vecs, "window_chunk": owner},
                            write_graph=doc_index.vectors.save_graph)
        return doc_index

    def _load(self, document: str, key: str, params: dict) -> Optional[DocumentIndex]:
        entry = self.cache.load(key, params)
        if entry is None:
            return None
        meta, arrays, graph = entry
        try:
            spans, vecs, owner = arrays["chunks"], arrays["vectors"], arrays["window_chunk"]
            if spans.ndim != 2 or spans.shape[1] != 3 or owner.shape != (len(vecs),) or vecs.ndim != 2:
                raise ValueError("array shapes disagree")
            if vecs.shape[1] != self.embedder.dim:
                raise ValueError(f"vectors have dimension {vecs.shape[1]}, the embedder {self.embedder.dim}")
            if len(spans) == 0 or spans[:, 0].min() < 0 or spans[:, 1].max() > len(document) or \
                    np.any(spans[:, 0] >= spans[:, 1]):
                raise ValueError("chunk spans outside the document")
            if len(owner) and (owner.min() < 0 or owner.max() >= len(spans) or np.any(np.diff(owner) < 0)):
                raise ValueError("window_chunk is not a sorted list of chunk ids")
            chunks = [Chunk(document[s:e], int(s), int(e), int(n)) for s, e, n in spans.tolist()]
            vectors = VectorIndex.load(vecs, graph, **self.index_params)
            return DocumentIndex(chunks, self.embedder.name, int(meta["n_tokens"]), self.chunker.chunk_tokens,
                                 vectors, owner.astype(np.int64), key, "disk")
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            warnings.warn(f"retrieval cache entry {self.cache.entry_dir(key)} is corrupt ({e}); rebuilding it")
            return None

    # ---- retrieval ------------------------------------------------------------------------------
    def _as_index(self, document_or_index: Union[str, DocumentIndex]) -> DocumentIndex:
        if isinstance(document_or_index, DocumentIndex):
            if document_or_index.embedder_name != self.embedder.name:
                raise ValueError(f"the DocumentIndex was built with embedder {document_or_index.embedder_name!r}, "
                                 f"but this retriever uses {self.embedder.name!r}")
            return document_or_index
        return self.index(document_or_index)

    def chunk_scores(self, doc_index: DocumentIndex, query: str, n_chunks: Optional[int] = None) -> np.ndarray:
        """Score of every chunk for `query` (its best window; -inf where the graph search did not reach
        it). `n_chunks` = how many best chunks the caller needs (bounds the HNSW search)."""
        _check_query(query)
        q = _embed_checked(self.embedder, [query], doc_index.vectors.dim, "the query")
        n_windows, n = len(doc_index.vectors), len(doc_index.chunks)
        scores = np.full(n, -np.inf, np.float32)
        if doc_index.vectors.exact:
            win = doc_index.vectors.scores(q)[0]  # [n_windows]
            firsts = np.flatnonzero(np.r_[True, np.diff(doc_index.window_chunk) != 0])
            scores[doc_index.window_chunk[firsts]] = np.maximum.reduceat(win, firsts)
            return scores
        # enough windows that the best n_chunks chunks are found even if each has several strong ones
        per_chunk = n_windows / n
        k = min(n_windows, max(doc_index.vectors.ef_search, int(2 * per_chunk * (n_chunks or n)) + 1))
        win, ids = doc_index.vectors.search(q, k)
        np.maximum.at(scores, doc_index.window_chunk[ids[0]], win[0])
        return scores

    def retrieve(self, document_or_index, query: str, *, budget_tokens: Optional[int] = None,
                 top_k: Optional[int] = None, threshold: Optional[float] = None) -> list:
        """Best chunks scoring >= threshold that fit in budget_tokens (default max(4096, L/24)),
        at most top_k of them, in document order, each with its score. threshold=None: the embedder's
        `default_threshold` when it has one (the hashing embedder: 0.2), else 0.3."""
        _check_query(query)  # before any indexing work
        doc_index = self._as_index(document_or_index)
        budget = doc_index.default_budget if budget_tokens is None else budget_tokens
        if int(budget) != budget or budget < doc_index.chunk_tokens:
            raise ValueError(f"budget_tokens={budget_tokens!r} is smaller than one chunk "
                             f"(chunk_tokens={doc_index.chunk_tokens}); pass at least {doc_index.chunk_tokens}")
        if top_k is not None and (int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if threshold is None:
            threshold = float(getattr(self.embedder, "default_threshold", DEFAULT_THRESHOLD))
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
        sizes = np.asarray([c.n_tokens for c in doc_index.chunks])
        max_chunks = min(top_k or len(sizes), int(budget // max(1, sizes.min())))
        # the graph search only needs to reach the chunks that can make the cut: about budget / typical size
        wanted = min(max_chunks, 2 * int(np.ceil(budget / max(1.0, float(np.median(sizes))))))
        scores = self.chunk_scores(doc_index, query, wanted)
        chosen, left = [], int(budget)
        for c_id in np.argsort(-scores, kind="stable"):  # best first; ties keep document order
            if scores[c_id] < threshold or len(chosen) == max_chunks:
                break
            if sizes[c_id] <= left:  # a chunk too big for what is left is skipped, smaller ones may fit
                chosen.append(int(c_id))
                left -= int(sizes[c_id])
        return [dataclasses.replace(doc_index.chunks[i], score=float(scores[i])) for i in sorted(chosen)]

    def build_context(self, document_or_index, query: str, **kwargs) -> str:
        """The retrieved chunks joined by a blank line, in document order (the drafter's context)."""
        return "\n\n".join(c.text for c in self.retrieve(document_or_index, query, **kwargs))
