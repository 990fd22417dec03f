"""Helpers for the engine tests: a byte-level tokenizer and a tiny random-weight Llama folder built offline.

The tokenizer is a real `tokenizers` byte-level BPE with no merges (one token per byte) plus ChatML special
tokens, so any text round-trips and vocabularies stay small; the model is transformers' LlamaForCausalLM with
random weights saved with save_pretrained, read back through rapid_engine.load_model like any real folder.
"""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_byte_tokenizer(folder: Path, *, chat_template: str | None = CHATML, extra_tokens=()) -> int:
    """tokenizer.json + tokenizer_config.json into `folder`; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for t in extra_tokens:  # a different vocabulary, for the tokenizer-mismatch test
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"eos_token": "<|im_end|>", "bos_token": None}
    if chat_template:
        cfg["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tok.get_vocab_size(with_added_tokens=True)


@functools.lru_cache(maxsize=None)
def byte_tokenizer():
    from rapid_engine.models.tokenizer import Tokenizer

    folder = Path(tempfile.mkdtemp(prefix="rapid-bytetok-"))
    write_byte_tokenizer(folder)
    return Tokenizer.from_dir(str(folder))


def tiny_llama_dir(folder: Path, *, seed: int = 0, max_positions: int = 4096, extra_tokens=(), hidden: int = 64,
                   layers: int = 2, heads: int = 4, kv_heads: int = 2, init_range: float = 0.02) -> Path:
    """A random-weight Llama folder whose tokenizer is the byte tokenizer (vocab 259 + extra_tokens)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = write_byte_tokenizer(folder, extra_tokens=extra_tokens)
    eos = vocab - 1  # <|im_end|> is the last special token added
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=None, eos_token_id=eos,
                      initializer_range=init_range)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float()
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
