"""Retrieval for the RAG drafter: chunk a long document by the target's tokenizer, embed the chunks,
index them (hnswlib HNSW, exact below 2,000 vectors), cache the index on disk, and pick the chunks
that answer a question.

    from rapid_engine.retrieval import ChunkRetriever
    retriever = ChunkRetriever(model.tokenizer, cache_dir="~/.cache/rapid_engine/retrieval")
    context = retriever.build_context(document, "Who built the lighthouse?")
"""
from rapid_engine.retrieval.cache import IndexCache
from rapid_engine.retrieval.chunker import Chunk, Chunker
from rapid_engine.retrieval.embedders import (Embedder, HashingEmbedder, SentenceEmbedder, default_embedder,
                                              minilm_path, resolve_embedder)
from rapid_engine.retrieval.index import VectorIndex
from rapid_engine.retrieval.retriever import ChunkRetriever, DocumentIndex

__all__ = ["Chunk", "Chunker", "ChunkRetriever", "DocumentIndex", "Embedder", "HashingEmbedder",
           "IndexCache", "SentenceEmbedder", "VectorIndex", "default_embedder", "minilm_path",
           "resolve_embedder"]
