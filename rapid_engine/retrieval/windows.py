"""Cut a text into windows an embedding model can see whole, along sentence boundaries.

A chunk (sized by the *target's* tokenizer) is usually longer than the embedder's input (256 word
pieces for MiniLM), and a short fact averaged with a few hundred unrelated tokens scores poorly.
So a chunk is embedded as several windows of at most `window` embedder tokens and scored by its
best window. Windows end on sentence ends, so every sentence that fits in a window lies whole inside
one; the next window starts with the trailing sentences of the previous one that fit in `overlap`
tokens, so a short statement spread over two sentences is also seen together. A sentence longer
than a window is covered by token windows overlapping by `overlap` tokens.
"""
from __future__ import annotations

import re
from bisect import bisect_left, bisect_right

import numpy as np

# a sentence starts after . ! ? (plus closing quotes/brackets) and whitespace, or after a blank line
_SENTENCE_START = re.compile(r"(?:[.!?\u2026][\"'\u2019\u201d)\]]*\s+|\n[^\S\n]*\n\s*)(?=\S)")


def sentence_window_spans(text: str, token_offsets, window: int, overlap: int) -> list:
    """Character spans [(start, end)] of `text` covering all of its tokens.

    token_offsets: [(char_start, char_end)] of the embedder's tokens of `text`, in order.
    window: the most tokens in one window; overlap: the most tokens two consecutive windows share.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    n = len(token_offsets)
    if n <= window:
        return [(0, len(text))]
    tok_starts = np.fromiter((s for s, _ in token_offsets), dtype=np.int64, count=n)
    # token index where each sentence starts (0 and n included), deduplicated and sorted
    cuts = np.searchsorted(tok_starts, [m.end() for m in _SENTENCE_START.finditer(text)], side="left")
    bounds = sorted({0, n, *cuts.tolist()})
    spans, a = [], 0
    while True:
        if a + window >= n:
            spans.append((a, n))
            break
        b_idx = bisect_right(bounds, a + window) - 1  # last sentence start that fits
        b = bounds[b_idx]
        if b > a:  # whole sentences [a, b); the next window repeats its trailing sentences that fit in `overlap`
            spans.append((a, b))
            shared = bounds[bisect_left(bounds, b - overlap)]
            a = shared if a < shared < b else b
        else:  # the sentence at a is longer than a window: slide through it token-wise
            spans.append((a, a + window))
            a = a + window - overlap
    return [(int(token_offsets[s][0]), int(token_offsets[e - 1][1])) for s, e in spans]
