"""What `RapidEngine.generate` returns, and the bookkeeping between emitted token ids and streamed text."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]          # the generated ids only (no prompt; EOS not included)
    stats: dict = field(default_factory=dict)
    finish_reason: str = "length"  # "eos" | "stop" | "length"


class GenerationStream:
    """Iterator of text pieces; once exhausted, `result` holds the GenerationResult.

    `pieces` is a generator that yields text and *returns* the GenerationResult."""

    def __init__(self, pieces: Generator[str, None, GenerationResult]):
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as done:
            if self.result is None:
                self.result = done.value
            raise


class TextTracker:
    """Accepts emitted tokens, decides when generation ends, and yields text that is final.

    Ends on an EOS id (not kept), a stop string (text cut before it; ids kept up to the token completing it) or
    max_new_tokens. Text is held back while it ends in an incomplete UTF-8 sequence (decoded as U+FFFD) or in
    a prefix of a stop string, so a streamed piece is never retracted.
    """

    def __init__(self, tokenizer, *, eos_ids, stop: list[str] | None, max_new_tokens: int):
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids or [])
        self.stop = [s for s in (stop or []) if s]
        self.max_new_tokens = max_new_tokens
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0           # characters of self.text already streamed
        self.finish_reason: str | None = None

    def add(self, tokens: list[int]) -> int:
        """Take a round's tokens; returns how many were consumed before generation finished."""
        for n, tok in enumerate(tokens):
            if self.finish_reason is not None:
                return n
            if tok in self.eos_ids:
                self.finish_reason = "eos"
                return n + 1
            self.ids.append(tok)
            prev_len = len(self.text)
            self.text = self.tokenizer.decode(self.ids)
            if self.stop and self._cut_at_stop(prev_len):
                self.finish_reason = "stop"
            elif len(self.ids) >= self.max_new_tokens:
                self.finish_reason = "length"
        return len(tokens)

    def _cut_at_stop(self, prev_len: int) -> bool:
        start = max(0, prev_len - max(len(s) for s in self.stop))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
        return bool(hits)

    def ready_text(self) -> str:
        """The newly final text (empty if everything new might still change)."""
        end = len(self.text)
        if self.finish_reason is None:
            if self.text.endswith("\ufffd"):
                return ""
            for s in self.stop:  # hold back a tail that could grow into a stop string
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        piece = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return piece
