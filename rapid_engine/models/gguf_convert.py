"""GGUF -> Hugging Face style folder (config.json, model.safetensors, tokenizer.json, ...).

Supports the llama and qwen2 architectures with a gpt2-style byte-level BPE vocabulary. Quantized
tensors are dequantized with the `gguf` package and stored as float32, so the folder loads in our
own loader and in transformers alike.

Two GGUF quirks this undoes:
  * numpy views of GGUF tensors are already [out_features, in_features] (ggml's ne[] reversed), the
    HF layout, so no transpose is needed.
  * llama.cpp's converter permutes llama's q_proj/k_proj rows so each rotary pair (i, i + d/2) of a
    head becomes adjacent rows (2i, 2i + 1) (ggml's "normal" rope rotates adjacent pairs, HF's
    rotate_half rotates halves). qwen2 uses ggml's NEOX rope, which matches HF, so it is stored as is.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ARCHITECTURES = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
MARKER = "rapid_convert.json"  # written last: its presence means the folder is complete
CONVERTER_VERSION = 1

# GGUF per-layer tensor name -> HF name inside model.layers.N
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Pre-tokenizer split per `tokenizer.ggml.pre`. The gpt2 pattern is what ByteLevel(use_regex=True) runs.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# name -> (digits one by one first?, split regex, NFC normalizer?)
PRE_TOKENIZERS = {
    "smollm": (True, _GPT2_SPLIT, False),  # SmolLM2: every digit its own pre-token, then GPT-2
    "gpt2": (False, _GPT2_SPLIT, False),
    "qwen2": (False, _QWEN2_SPLIT, True),
    "llama-bpe": (False, _LLAMA3_SPLIT, False),
}

REQUIRED_KEYS = ("block_count", "context_length", "embedding_length", "feed_forward_length",
                 "attention.head_count", "attention.layer_norm_rms_epsilon")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4


class GGUFConvertError(ValueError):
    """The GGUF file uses something this converter does not support (named in the message)."""


# ---------------------------------------------------------------------------------------- metadata

def read_metadata(reader) -> dict:
    """All key/value fields of a gguf.GGUFReader as plain Python values (strings decoded)."""
    from gguf import GGUFValueType

    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            items = [field.parts[i] for i in field.data]
            if field.types[-1] == GGUFValueType.STRING:
                meta[key] = [bytes(p).decode("utf-8") for p in items]
            else:
                meta[key] = np.concatenate(items).tolist() if items else []
        elif kind == GGUFValueType.STRING:
            meta[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
        elif kind == GGUFValueType.FLOAT32:  # shortest decimal that round-trips: 1e-05, not 9.99999974e-06
            meta[key] = float(str(field.parts[field.data[0]][0]))
        else:
            meta[key] = field.parts[field.data[0]][0].item()
    return meta


def build_config(meta: dict, shapes: dict) -> dict:
    """HF config.json for the architecture; `shapes` maps HF tensor name -> shape."""
    arch = meta["general.architecture"]
    cls, model_type = ARCHITECTURES[arch]
    a = f"{arch}."
    hidden, n_heads = meta[a + "embedding_length"], meta[a + "attention.head_count"]
    n_layers = meta[a + "block_count"]
    tied = "lm_head.weight" not in shapes
    cfg = {
        "architectures": [cls],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": meta[a + "feed_forward_length"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": meta.get(a + "attention.head_count_kv", n_heads),
        "head_dim": meta.get(a + "attention.key_length", hidden // n_heads),
        "rms_norm_eps": meta[a + "attention.layer_norm_rms_epsilon"],
        "rope_theta": meta.get(a + "rope.freq_base", 10000.0),
        "max_position_embeddings": meta[a + "context_length"],
        "vocab_size": shapes["model.embed_tokens.weight"][0],
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
        "rope_scaling": _rope_scaling(meta, a),
    }
    for name in ("bos", "eos", "padding"):
        key = f"tokenizer.ggml.{name}_token_id"
        if key in meta:
            cfg["pad_token_id" if name == "padding" else f"{name}_token_id"] = meta[key]
    if arch == "llama":
        cfg["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in shapes
        cfg["mlp_bias"] = False
    else:  # qwen2 always has q/k/v biases; no sliding window in these checkpoints
        cfg.update(use_sliding_window=False, sliding_window=cfg["max_position_embeddings"],
                   max_window_layers=n_layers)
    return cfg


def _rope_scaling(meta: dict, a: str):
    kind = meta.get(a + "rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind not in ("linear", "yarn"):
        raise GGUFConvertError(f"rope scaling type {kind!r} is not supported (supported: none, linear, yarn)")
    out = {"rope_type": kind, "type": kind, "factor": float(meta[a + "rope.scaling.factor"])}
    if a + "rope.scaling.original_context_length" in meta:
        out["original_max_position_embeddings"] = meta[a + "rope.scaling.original_context_length"]
    return out


# ------------------------------------------------------------------------------------------ weights

def hf_tensor_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    raise GGUFConvertError(f"tensor {gguf_name!r} has no Hugging Face counterpart in this converter")


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: GGUF row 2i+j of a head holds HF row j*(d/2)+i.

    w: [n_heads*d, ...] (a weight [out, in] or a bias [out]).
    """
    d = w.shape[0] // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, d // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)  # [h, i, j] -> [h, j, i]


def _dequantize(tensor) -> np.ndarray:
    from gguf import quants

    name = tensor.tensor_type.name
    if name not in TENSOR_TYPES:
        raise GGUFConvertError(f"tensor {tensor.name!r} has type {name}; supported: {', '.join(TENSOR_TYPES)}")
    out = quants.dequantize(tensor.data, tensor.tensor_type)
    if not out.flags.writeable:  # F32 tensors come back as read-only views of the memory-mapped file
        out = out.copy()
    return np.ascontiguousarray(out, dtype=np.float32)


def convert_weights(reader, arch: str, meta: dict, progress: bool = True) -> dict:
    """HF-named float32 torch tensors from every GGUF tensor."""
    import torch
    from tqdm import tqdm

    n_heads = meta[f"{arch}.attention.head_count"]
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_heads)
    out = {}
    for t in tqdm(reader.tensors, desc="dequantize", unit="tensor", disable=not progress):
        if t.name == "rope_freqs.weight":
            raise GGUFConvertError("rope_freqs.weight (llama3-style rope scaling) is not supported")
        name = hf_tensor_name(t.name)
        w = _dequantize(t)
        if arch == "llama" and ".q_proj." in name:
            w = unpermute_rope_rows(w, n_heads)
        elif arch == "llama" and ".k_proj." in name:
            w = unpermute_rope_rows(w, n_kv)
        out[name] = torch.from_numpy(np.ascontiguousarray(w))
    return out


# ---------------------------------------------------------------------------------------- tokenizer

def build_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` equivalent to llama.cpp's reading of the GGUF vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFConvertError(f"tokenizer.ggml.model {kind!r} is not supported (supported: 'gpt2' byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZERS:
        raise GGUFConvertError(f"tokenizer.ggml.pre {pre!r} is not supported (supported: {sorted(PRE_TOKENIZERS)})")
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFConvertError("tokenizer.ggml.tokens has duplicate entries; cannot build a BPE vocabulary")
    if "tokenizer.ggml.merges" not in meta:
        raise GGUFConvertError("tokenizer.ggml.merges is missing; a gpt2 byte-level BPE vocabulary needs its merges")
    for name in ("bos", "eos", "padding", "unknown"):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        if i is not None and not 0 <= i < len(tokens):
            raise GGUFConvertError(f"tokenizer.ggml.{name}_token_id = {i} is outside the {len(tokens)}-token vocabulary")
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))

    split_digits, split_regex, nfc = PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    steps += [pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()

    types = meta.get("tokenizer.ggml.token_type", [])
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == _CONTROL])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i, t in enumerate(types) if t == _USER_DEFINED])
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos_id is not None:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def build_tokenizer_config(meta: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    arch = meta["general.architecture"]

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None else None

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta[f"{arch}.context_length"],
        "chat_template": meta.get("tokenizer.chat_template"),
    }


# ------------------------------------------------------------------------------------------- driver

def is_converted(out_dir) -> bool:
    return (Path(out_dir) / MARKER).is_file()


def convert_gguf(src, out_dir, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Convert GGUF file `src` into a HF-style folder `out_dir` (built in a temp folder, then renamed)."""
    import gguf
    from safetensors.torch import save_file

    src, out_dir = Path(src), Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"convert_gguf: src {src} is not a file")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"convert_gguf: out_dir {out_dir} exists (overwrite=True / --overwrite replaces it)")
    try:
        reader = gguf.GGUFReader(src)
    except ValueError as e:  # bad magic, truncated header, ...
        raise GGUFConvertError(f"{src} is not a readable GGUF file: {e}") from e
    meta = read_metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFConvertError(f"architecture {arch!r} is not supported (supported: {sorted(ARCHITECTURES)})")

    missing = [f"{arch}.{k}" for k in REQUIRED_KEYS if f"{arch}.{k}" not in meta]
    if missing:
        raise GGUFConvertError(f"GGUF metadata lacks required key(s) {missing}")
    tokenizer = build_tokenizer(meta)  # fail on an unsupported vocabulary before the slow part
    weights = convert_weights(reader, arch, meta, progress=progress)
    config = build_config(meta, {k: tuple(v.shape) for k, v in weights.items()})
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del weights
        tokenizer.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation)
        _write_json(tmp / "tokenizer_config.json", build_tokenizer_config(meta))
        _write_json(tmp / MARKER, {
            "converter_version": CONVERTER_VERSION, "source": src.name, "source_bytes": src.stat().st_size,
            "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
        })
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp/safetensors make 0700/0600; the cache is shared
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out_dir.exists():  # overwrite: move the old folder aside first so the swap is one rename
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old"))
            os.replace(out_dir, old / "x")
            shutil.rmtree(old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
