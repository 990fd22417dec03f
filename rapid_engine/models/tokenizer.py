"""Tokenizer: a `tokenizers.Tokenizer` (from tokenizer.json) plus the chat template and special ids.

The chat template comes from `chat_template.jinja` or `tokenizer_config.json` and is rendered with
jinja2 in a sandbox, the way Hugging Face chat templates expect (`messages`, `add_generation_prompt`,
`bos_token`, `eos_token`, `raise_exception`).
"""
from __future__ import annotations

import json
import os

from tokenizers import Tokenizer as _HFTokenizer


class Tokenizer:
    def __init__(self, tokenizer: _HFTokenizer, *, chat_template: str | None = None, bos_token: str | None = None,
                 eos_tokens: list | None = None, eos_token_ids: list | None = None, vocab_size: int | None = None):
        self.tokenizer = tokenizer  # the underlying tokenizers.Tokenizer (encode(...).offsets for the retriever)
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.bos_token_id = tokenizer.token_to_id(bos_token) if bos_token else None
        eos_tokens = [t for t in (eos_tokens or []) if t]
        ids = list(eos_token_ids or []) + [tokenizer.token_to_id(t) for t in eos_tokens]
        self.eos_token = eos_tokens[0] if eos_tokens else None
        self.eos_token_ids = sorted({int(i) for i in ids if i is not None})
        # The model's embedding table may be larger than the tokenizer's vocabulary (padding rows).
        self.vocab_size = vocab_size or tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, path: str, eos_token_ids: list | None = None, vocab_size: int | None = None) -> "Tokenizer":
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise FileNotFoundError(f"tokenizer.json not found in {path}")
        tok = _HFTokenizer.from_file(tok_file)
        cfg = {}
        cfg_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                cfg = json.load(f)
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            by_name = {t.get("name"): t.get("template") for t in template}
            template = by_name.get("default") or next(iter(by_name.values()), None)
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            with open(jinja_file, encoding="utf-8") as f:
                template = f.read()
        eos = cfg.get("eos_token")
        return cls(tok, chat_template=template, bos_token=_token_text(cfg.get("bos_token")),
                   eos_tokens=[_token_text(eos)], eos_token_ids=eos_token_ids, vocab_size=vocab_size)

    def encode(self, text: str, add_special_tokens: bool = False) -> list:
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: token ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list, add_generation_prompt: bool = True) -> str:
        """Render [{"role": ..., "content": ...}, ...] to the prompt text the model was tuned on."""
        if not self.chat_template:
            raise ValueError("apply_chat_template: this model folder has no chat template "
                             "(tokenizer_config.json 'chat_template' or chat_template.jinja)")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError("apply_chat_template: messages must be a list of {'role': ..., 'content': ...} dicts")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise ValueError(f"chat template: {msg}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
        # jinja's own tojson HTML-escapes '<' and '&'; templates expect plain JSON
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")


def _token_text(tok):
    """tokenizer_config.json stores special tokens as a str or as {"content": str, ...}."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok
