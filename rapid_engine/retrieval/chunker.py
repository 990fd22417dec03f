"""Split a document into chunks of at most `chunk_tokens` tokens of the *target* model's tokenizer.

Breaks prefer a paragraph boundary (blank line), then a sentence end, then a word boundary, and only
cut inside a word when a single "word" is longer than a chunk. Token counts are first estimated from
one encoding of the whole document (token offsets) and then checked by encoding each chunk on its
own, which is the number the budget is defined on; an estimate that was too low shrinks the chunk.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

CHUNKER_VERSION = 1  # bump when the split rule changes: it is part of every cache key

# Boundary strength before a word; a chunk ends at the strongest one in the back half of its window.
_CUT_IN_WORD, _WORD, _SENTENCE, _PARAGRAPH, _END = 0, 1, 2, 3, 4
_WORD_RE = re.compile(r"\S+")
_BLANK_LINE_RE = re.compile(r"\n[^\S\n]*\n")
_SENTENCE_END_RE = re.compile(r"[.!?\u2026\u3002][\"'\u2019\u201d)\]]*$")


@dataclass
class Chunk:
    """A span of the document: `document[start:end] == text`; `score` is set by retrieval."""
    text: str
    start: int
    end: int
    n_tokens: int
    score: Optional[float] = None


def _encode_len(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable id of the tokenizer's behaviour (for cache keys): its full JSON when it exposes one,
    else the ids it gives a fixed probe text."""
    inner = getattr(tokenizer, "tokenizer", None)
    h = hashlib.sha256()
    if inner is not None and hasattr(inner, "to_str"):
        h.update(inner.to_str().encode())
    else:
        probe = "The quick brown fox, 1234 jumps\n\nover the lazy dog! Ünïcødé 漢字 \t end."
        h.update(type(tokenizer).__name__.encode())
        h.update(np.asarray(tokenizer.encode(probe, add_special_tokens=False), np.int64).tobytes())
    return h.hexdigest()[:16]


class Chunker:
    """`Chunker(tokenizer, chunk_tokens=512, overlap_tokens=0).split(document) -> list[Chunk]`.

    `tokenizer` needs `encode(text, add_special_tokens=False) -> list[int]`; when it also has a
    `.tokenizer` (a `tokenizers.Tokenizer`), its offsets make the size estimates nearly exact.
    With `overlap_tokens > 0` each chunk starts with (at most) that many tokens of the previous one.
    """

    def __init__(self, tokenizer, chunk_tokens: int = 512, overlap_tokens: int = 0):
        if not callable(getattr(tokenizer, "encode", None)):
            raise ValueError(f"tokenizer must have encode(text, add_special_tokens=False); got {type(tokenizer).__name__}")
        if int(chunk_tokens) != chunk_tokens or chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be an integer >= 16, got {chunk_tokens!r}")
        if int(overlap_tokens) != overlap_tokens or not 0 <= overlap_tokens <= chunk_tokens // 2:
            raise ValueError(f"overlap_tokens must be an integer in [0, chunk_tokens // 2 = {chunk_tokens // 2}], "
                             f"got {overlap_tokens!r}")
        self.tokenizer = tokenizer
        self.chunk_tokens = int(chunk_tokens)
        self.overlap_tokens = int(overlap_tokens)
        self._fingerprint = tokenizer_fingerprint(tokenizer)  # once: hashing a tokenizer's JSON takes ~10 ms

    def params(self) -> dict:
        """Everything the split depends on besides the document (part of the cache key)."""
        return {"chunker_version": CHUNKER_VERSION, "chunk_tokens": self.chunk_tokens,
                "overlap_tokens": self.overlap_tokens, "tokenizer": self._fingerprint}

    # ---- size estimates -------------------------------------------------------------------------
    def _token_starts(self, document: str) -> Optional[np.ndarray]:
        """Character offset where each token of the whole document starts, if offsets are available."""
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is None or not hasattr(inner, "encode"):
            return None
        try:
            if getattr(inner, "truncation", None) or getattr(inner, "padding", None):
                # a copy that neither truncates nor pads, so offsets cover the whole document
                inner = type(inner).from_str(inner.to_str())
                inner.no_truncation()
                inner.no_padding()
            enc = inner.encode(document, add_special_tokens=False)
            return np.fromiter((s for s, _ in enc.offsets), dtype=np.int64, count=len(enc.offsets))
        except Exception:  # not a tokenizers.Tokenizer after all: fall back to per-word counts
            return None

    def _token_prefix(self, document: str, spans: np.ndarray) -> tuple[np.ndarray, Optional[int]]:
        """prefix[i] = estimated tokens before word i, prefix[n] = estimated total; and the document's
        token count when the whole-document encoding gave it."""
        starts = self._token_starts(document)
        if starts is not None and len(starts) > 0:
            # a token counts toward the word it starts in (whitespace tokens toward the word before)
            before = np.searchsorted(starts, spans[:, 0], side="left")
            return np.append(before - before[0], len(starts) - before[0]).astype(np.int64), len(starts)
        count = lru_cache(maxsize=1 << 16)(lambda w: _encode_len(self.tokenizer, " " + w) if w else 0)
        sizes = [count(document[s:e]) for s, e in spans]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]), None

    # ---- words and their boundary strengths -----------------------------------------------------
    def _words(self, document: str) -> tuple[np.ndarray, np.ndarray]:
        """[n, 2] spans of non-whitespace runs (long runs cut to fit a chunk) and the boundary level
        before each (level[0] is unused)."""
        spans, levels = [], []
        for m in _WORD_RE.finditer(document):
            s, e = m.span()
            if spans:
                gap = document[spans[-1][1]:s]
                prev = document[spans[-1][0]:spans[-1][1]]
                level = (_PARAGRAPH if _BLANK_LINE_RE.search(gap) else
                         _SENTENCE if _SENTENCE_END_RE.search(prev) else _WORD)
            else:
                level = _PARAGRAPH
            if e - s > 16 and _encode_len(self.tokenizer, document[s:e]) > self.chunk_tokens // 2:
                for i, (ps, pe) in enumerate(self._cut_long_word(document, s, e)):
                    spans.append((ps, pe))
                    levels.append(level if i == 0 else _CUT_IN_WORD)
                continue
            spans.append((s, e))
            levels.append(level)
        return np.asarray(spans, dtype=np.int64).reshape(-1, 2), np.asarray(levels, dtype=np.int8)

    def _cut_long_word(self, document: str, s: int, e: int) -> list[tuple[int, int]]:
        """Cut one whitespace-free run into pieces of at most chunk_tokens // 2 tokens each."""
        limit, pieces = self.chunk_tokens // 2, []
        while s < e:
            lo = s + 1
            if _encode_len(self.tokenizer, document[s:lo]) > limit:
                raise ValueError(f"chunk_tokens={self.chunk_tokens} is too small: the single character "
                                 f"{document[s]!r} at offset {s} alone needs more than {limit} tokens")
            # grow an upper bound exponentially, then binary-search the largest end that fits: every
            # encode is of a piece near `limit` tokens, never of the whole remaining run
            hi = min(e, s + 4 * limit)
            while hi < e and _encode_len(self.tokenizer, document[s:hi]) <= limit:
                lo, hi = hi, min(e, s + 2 * (hi - s))
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if _encode_len(self.tokenizer, document[s:mid]) <= limit:
                    lo = mid
                else:
                    hi = mid - 1
            pieces.append((s, lo))
            s = lo
        return pieces

    # ---- the split ------------------------------------------------------------------------------
    def split(self, document: str) -> list[Chunk]:
        return self.split_and_count(document)[0]

    def split_and_count(self, document: str) -> tuple[list, int]:
        """The chunks, and the whole document's token count (one encoding serves both when the
        tokenizer has offsets)."""
        if not isinstance(document, str):
            raise ValueError(f"document must be a str, got {type(document).__name__}")
        if not document.strip():
            raise ValueError("document is empty (no non-whitespace text to chunk)")
        spans, levels = self._words(document)
        prefix, n_tokens = self._token_prefix(document, spans)
        if n_tokens is None:
            n_tokens = _encode_len(self.tokenizer, document)
        n = len(spans)
        # level before word j for j in 0..n (j == n is the document end)
        cut_level = np.append(levels, _END).astype(np.int8)
        cut_level[0] = -1  # never end a chunk before its first word
        chunks, i = [], 0
        while i < n:
            j, n_tok = self._choose_end(document, spans, prefix, cut_level, i)
            s, e = int(spans[i, 0]), int(spans[j - 1, 1])
            chunks.append(Chunk(document[s:e], s, e, n_tok))
            if j == n:
                break
            i = self._next_start(document, spans, prefix, i, j)
        return chunks, n_tokens

    def _choose_end(self, document, spans, prefix, cut_level, i) -> tuple[int, int]:
        """End word index j (exclusive) of the chunk starting at word i, and its true token count."""
        budget = self.chunk_tokens
        target = budget
        while True:
            # farthest j whose estimate fits; at least one word (each word fits: _words cut the long ones)
            j_max = max(int(np.searchsorted(prefix, prefix[i] + target, side="right")) - 1, i + 1)
            j_max = min(j_max, len(spans))
            j_lo = int(np.searchsorted(prefix, prefix[i] + target // 2, side="left"))
            j_lo = min(max(j_lo, i + 1), j_max)
            window = cut_level[j_lo:j_max + 1]
            # strongest boundary in the back half; among equals the latest (fewest chunks)
            j = j_lo + len(window) - 1 - int(np.argmax(window[::-1]))
            n_tok = _encode_len(self.tokenizer, document[spans[i, 0]:spans[j - 1, 1]])
            if n_tok <= budget:
                return j, n_tok
            if j == i + 1:
                raise ValueError(f"chunk_tokens={budget} is too small for the text at offset {int(spans[i, 0])}")
            # the estimate was low: scale the target down by what it missed, and drop at least one word
            est = int(prefix[j] - prefix[i])
            target = min(int(est * budget / n_tok), est - 1)

    def _next_start(self, document, spans, prefix, i, j) -> int:
        """First word of the next chunk: j, or earlier so that the two chunks share at most
        overlap_tokens tokens (checked by encoding the shared text); always after i."""
        if self.overlap_tokens == 0:
            return j
        k = int(np.searchsorted(prefix, prefix[j] - self.overlap_tokens, side="left"))
        k = min(max(k, i + 1), j)
        while k < j and _encode_len(self.tokenizer, document[spans[k, 0]:spans[j - 1, 1]]) > self.overlap_tokens:
            k += 1
        return k
