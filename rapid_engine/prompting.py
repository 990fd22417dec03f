"""Prompts for a question about a document, as token ids in three parts: head | document | tail.

The document sits before the question so that `head + document` (the `prefix`) does not depend on the question:
its prefilled KV can be cached on disk and reused for every later question about the same document. Each part is
tokenized on its own, so the boundaries are token boundaries by construction and the prefix ids are stable.

The target sees the whole document, the RAG drafter the retrieved chunks; both go through the same function (and
the model's chat template when it has one), so `rag` mode is exactly `lc` mode on the retrieved text.

A document longer than the model can hold is middle-truncated (its first half and last half kept, as the RAPID
paper does for LongBench) with a warning, or refused with strict=True.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

INSTRUCTION = "Read the document below and answer the question that follows it."
_SENTINEL = "\ue000RAPID-USER-MESSAGE\ue000"  # private-use characters: no chat template contains them


@dataclass
class Prompt:
    head_ids: list[int]      # chat-template start + instruction, up to the document
    context_ids: list[int]   # the document (after any middle truncation)
    tail_ids: list[int]      # end of the document, the question, chat-template end (assistant turn opened)
    truncated_tokens: int = 0  # document tokens dropped from the middle

    @property
    def prefix_ids(self) -> list[int]:
        """The question-independent part: its KV is what the document cache stores."""
        return self.head_ids + self.context_ids

    @property
    def ids(self) -> list[int]:
        return self.head_ids + self.context_ids + self.tail_ids


def _template_halves(tokenizer) -> tuple[str, str] | None:
    """(text before, text after) the user's message in the chat template, or None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], add_generation_prompt=True)
    if rendered.count(_SENTINEL) != 1:
        raise ValueError("the chat template must render the user message exactly once")
    before, after = rendered.split(_SENTINEL)
    return before, after


def build_prompt(tokenizer, context: str, question: str, *, capacity: int, reserve: int,
                 strict: bool = False, who: str = "target") -> Prompt:
    """Token ids of the question-about-document prompt, fitted into `capacity - reserve` positions.

    capacity: positions the model can hold; reserve: positions kept free for generation (new tokens plus the
    widest verification). Raises ValueError for an empty context/question, a prompt that cannot fit even with the
    document truncated to nothing useful, or any truncation when strict=True.
    """
    if not isinstance(context, str) or not context.strip():
        raise ValueError("context must be a non-empty string")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    halves = _template_halves(tokenizer)
    if halves is None:  # plain completion format; BOS first when the model has one
        before, after = "", "\nAnswer:"
    else:
        before, after = halves
    head_text = f"{before}{INSTRUCTION}\n\n<document>\n"
    tail_text = f"\n</document>\n\nQuestion: {question.strip()}{after}"
    head_ids = tokenizer.encode(head_text, add_special_tokens=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if halves is None and bos is not None:
        head_ids = [bos] + head_ids
    tail_ids = tokenizer.encode(tail_text, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)

    budget = capacity - reserve - len(head_ids) - len(tail_ids)
    min_context = min(len(context_ids), 16)
    if budget < max(min_context, 1):
        raise ValueError(
            f"{who} prompt cannot fit: the model holds {capacity} positions, the question and template take "
            f"{len(head_ids) + len(tail_ids)}, generation reserves {reserve}; shorten the question or max_new_tokens")
    dropped = max(0, len(context_ids) - budget)
    if dropped:
        msg = (f"{who} context has {len(context_ids)} tokens but only {budget} fit ({capacity} positions minus "
               f"question, template and {reserve} reserved for generation)")
        if strict:
            raise ValueError(msg + "; strict=True refuses to truncate")
        warnings.warn(msg + f"; keeping the first and last {budget // 2} tokens (middle truncation)")
        keep_head = budget // 2
        context_ids = context_ids[:keep_head] + context_ids[len(context_ids) - (budget - keep_head):]
    return Prompt(head_ids, context_ids, tail_ids, dropped)
