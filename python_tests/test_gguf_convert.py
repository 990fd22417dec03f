"""GGUF -> HF folder converter.

Oracles: transformers reading the GGUF file directly (its own dequantizer, un-permute and tokenizer
builder) for the real SmolLM2 and Qwen2.5-Coder files and for a tiny synthetic llama written here with
gguf.GGUFWriter; an index-by-index re-statement of llama.cpp's q/k row permutation for exact checks.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

from rapid_engine import assets, cli  # noqa: E402
from rapid_engine.models import gguf_convert as gc  # noqa: E402

transformers = pytest.importorskip("transformers")

VARIED_TEXTS = [
    "Hello world! 12345 3.14159 and 2024-01-01, 1,000,000 items.",
    "  leading spaces\n\n\tTabs\r\nCRLF   trailing  ",
    "Ünïcödé — “quotes” 日本語テキスト 🚀🔥 emoji, Ελληνικά, русский",
    "def f(x):\n    return x**2  # comment\n\nclass A: pass\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "DON'T can't I'll we've they'RE",
]

# ------------------------------------------------------------------------------ a tiny synthetic GGUF

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 256, 512, 4, 2, 2  # K-quants need rows that are multiples of 256
HEAD_DIM = HIDDEN // HEADS
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
# One of every supported type across the tensors; layer-0 q/k are F32 so the un-permute is checked exactly.
LAYER_TYPES = [
    {"attn_q": QT.F32, "attn_k": QT.F32, "attn_v": QT.F16, "attn_output": QT.BF16,
     "ffn_gate": QT.Q8_0, "ffn_up": QT.Q4_0, "ffn_down": QT.Q4_1},
    {"attn_q": QT.Q5_0, "attn_k": QT.Q5_1, "attn_v": QT.Q4_K, "attn_output": QT.Q5_K,
     "ffn_gate": QT.Q6_K, "ffn_up": QT.Q8_0, "ffn_down": QT.F16},
]
K_QUANT_BLOCK = {QT.Q4_K: (144, [0, 2]), QT.Q5_K: (176, [0, 2]), QT.Q6_K: (210, [208])}  # bytes, fp16 offsets


def byte_alphabet() -> list:
    """GPT-2 byte-level alphabet: printable latin-1 bytes map to themselves, the rest to chr(256 + n)."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def tiny_vocab():
    tokens = byte_alphabet() + [m.replace(" ", "") for m in MERGES] + CONTROL + ["<tool>"]
    types = [1] * (len(tokens) - len(CONTROL) - 1) + [3] * len(CONTROL) + [4]
    return tokens, types


def llama_cpp_row_order(n_rows: int, n_heads: int) -> np.ndarray:
    """GGUF row r = h*d + 2i + j holds HF row h*d + j*d/2 + i (llama.cpp's convert permutation)."""
    d = n_rows // n_heads
    return np.array([h * d + j * (d // 2) + i for h in range(n_heads) for i in range(d // 2) for j in range(2)])


def _random_k_quant(rows: int, cols: int, qtype, rng) -> np.ndarray:
    block_bytes, f16_offsets = K_QUANT_BLOCK[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
    for off in f16_offsets:  # small finite super-block scales so the weights stay O(1)
        scale = (rng.random((rows, cols // 256)) * 1e-3 + 1e-4).astype(np.float16)
        raw[:, :, off:off + 2] = scale.view(np.uint8).reshape(rows, cols // 256, 2)
    return raw.reshape(rows, -1)


def _store(writer, name, hf_weight, qtype, rng):
    """Write hf_weight (already in GGUF row order) as qtype; return what a reader dequantizes to."""
    rows, cols = hf_weight.shape if hf_weight.ndim == 2 else (1, hf_weight.shape[0])
    if qtype in K_QUANT_BLOCK:
        raw = _random_k_quant(rows, cols, qtype, rng)
        writer.add_tensor(name, raw, raw_dtype=qtype)
        return gguf.quants.dequantize(raw, qtype)
    if qtype == QT.F32:
        writer.add_tensor(name, hf_weight.astype(np.float32))
        return hf_weight.astype(np.float32)
    if qtype == QT.F16:
        writer.add_tensor(name, hf_weight.astype(np.float16))
        return hf_weight.astype(np.float16).astype(np.float32)
    raw = gguf.quants.quantize(hf_weight.astype(np.float32), qtype)
    writer.add_tensor(name, raw, raw_dtype=qtype)
    return gguf.quants.dequantize(raw, qtype)


def write_tiny_gguf(path, *, arch="llama", tied=True, seed=0, add_bos=False):
    """A 2-layer random model as GGUF. Returns (expected HF tensors, original F32 HF tensors)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD_DIM)
    tokens, types = tiny_vocab()
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm" if arch == "llama" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

    expected, original = {}, {}
    n_vocab = len(tokens)

    def put(gguf_name, hf_name, hf_weight, qtype, n_heads=None):
        original[hf_name] = hf_weight
        stored = hf_weight
        if n_heads is not None:  # llama: GGUF holds the rows in rotary-interleaved order
            stored = hf_weight[llama_cpp_row_order(hf_weight.shape[0], n_heads)]
        deq = _store(w, gguf_name, stored, qtype, rng).reshape(hf_weight.shape)
        if n_heads is not None:
            deq = deq[np.argsort(llama_cpp_row_order(hf_weight.shape[0], n_heads))]
        expected[hf_name] = deq

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    put("token_embd.weight", "model.embed_tokens.weight", mat(n_vocab, HIDDEN), QT.Q8_0)
    put("output_norm.weight", "model.norm.weight", 1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32), QT.F32)
    if not tied:
        put("output.weight", "lm_head.weight", mat(n_vocab, HIDDEN), QT.Q6_K)
    permuted = arch == "llama"
    shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
              "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
              "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
    for layer in range(LAYERS):
        pre, hf = f"blk.{layer}.", f"model.layers.{layer}."
        for norm, hf_norm in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            put(pre + norm + ".weight", hf + hf_norm + ".weight",
                1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32), QT.F32)
        for short, qtype in LAYER_TYPES[layer].items():
            heads = {"attn_q": HEADS, "attn_k": KV_HEADS}.get(short) if permuted else None
            put(f"{pre}{short}.weight", hf + gc._LAYER_NAMES[short] + ".weight", mat(*shapes[short]), qtype, heads)
        if arch == "qwen2":
            for short, rows in (("attn_q", HIDDEN), ("attn_k", KV_HEADS * HEAD_DIM), ("attn_v", KV_HEADS * HEAD_DIM)):
                put(f"{pre}{short}.bias", hf + gc._LAYER_NAMES[short] + ".bias",
                    (0.1 * rng.standard_normal(rows)).astype(np.float32), QT.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected, original


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Converted tiny llama (untied, every tensor type) shared by the tests below."""
    d = tmp_path_factory.mktemp("tiny")
    expected, original = write_tiny_gguf(d / "tiny.gguf", tied=False)
    out = gc.convert_gguf(d / "tiny.gguf", d / "hf", progress=False)
    return d / "tiny.gguf", out, expected, original


def test_tiny_llama_every_tensor_type_round_trips(tiny):
    _, out, expected, original = tiny
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name].dtype == torch.float32, name
        np.testing.assert_array_equal(got[name].numpy(), want, err_msg=name)
    # F32 q/k of layer 0 went through permute -> GGUF -> un-permute: bit-exact original rows.
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        np.testing.assert_array_equal(got[name].numpy(), original[name])
    marker = json.loads((out / gc.MARKER).read_text())
    assert set(marker["tensor_types"]) == set(gc.TENSOR_TYPES)  # the fixture really covers every type


def test_tiny_llama_config_and_files(tiny):
    _, out, _, _ = tiny
    cfg = json.loads((out / "config.json").read_text())
    tokens, _ = tiny_vocab()
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (HIDDEN, FFN, LAYERS)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (HEADS, KV_HEADS, HEAD_DIM)
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 50000.0
    assert cfg["max_position_embeddings"] == 4096 and cfg["vocab_size"] == len(tokens)
    assert cfg["tie_word_embeddings"] is False  # output.weight is present
    assert cfg["bos_token_id"] == tokens.index("<|endoftext|>") and cfg["eos_token_id"] == tokens.index("<|im_end|>")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"]
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and "<|im_start|>" in tok_cfg["chat_template"]


def test_tiny_llama_matches_transformers_gguf_loader(tiny):
    src, out, _, _ = tiny
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    ours = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.tensor([[5, 260, 261, 17, 100, 3, 262, 263, 200, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_tiny_tokenizer_matches_transformers_gguf_tokenizer(tiny):
    src, out, _, _ = tiny
    ref = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    ours = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in VARIED_TEXTS + ["the <tool> then in a theater", "<|im_end|><|endoftext|>"]:
        assert ours.encode(text) == ref.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    assert len(ours.encode("<|im_start|>")) == 1 and len(ours.encode("<tool>")) == 1


def test_add_bos_token_prepends_bos(tmp_path):
    write_tiny_gguf(tmp_path / "t.gguf", add_bos=True)
    out = gc.convert_gguf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    bos = tiny_vocab()[0].index("<|endoftext|>")
    the = tiny_vocab()[0].index("Ġthe")
    assert tok.encode(" the") == [bos, the]
    assert tok.encode(" the", add_special_tokens=False) == [the]


def _llama_meta(**extra):
    meta = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.attention.head_count": 4,
            "llama.block_count": 1, "llama.feed_forward_length": 128, "llama.context_length": 8192,
            "llama.attention.layer_norm_rms_epsilon": 1e-5}
    meta.update(extra)
    return meta


def test_rope_scaling_from_metadata():
    shapes = {"model.embed_tokens.weight": (10, 64)}
    assert gc.build_config(_llama_meta(), shapes)["rope_scaling"] is None
    cfg = gc.build_config(_llama_meta(**{"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
                                         "llama.rope.scaling.original_context_length": 2048}), shapes)
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "type": "yarn", "factor": 4.0,
                                   "original_max_position_embeddings": 2048}
    cfg = gc.build_config(_llama_meta(**{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}), shapes)
    assert cfg["rope_scaling"]["rope_type"] == "linear" and cfg["rope_scaling"]["factor"] == 2.0
    with pytest.raises(gc.GGUFConvertError, match="rope scaling type 'longrope' is not supported"):
        gc.build_config(_llama_meta(**{"llama.rope.scaling.type": "longrope"}), shapes)


def test_tiny_tied_embeddings_write_no_lm_head(tmp_path):
    write_tiny_gguf(tmp_path / "t.gguf", tied=True)
    out = gc.convert_gguf(tmp_path / "t.gguf", tmp_path / "hf", progress=False)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))


def test_tiny_qwen2_is_not_permuted_and_keeps_biases(tmp_path):
    expected, original = write_tiny_gguf(tmp_path / "q.gguf", arch="qwen2", tied=True)
    out = gc.convert_gguf(tmp_path / "q.gguf", tmp_path / "hf", progress=False)
    got = load_file(str(out / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    np.testing.assert_array_equal(got[q].numpy(), original[q])  # stored as is, no rotary permutation
    for layer in range(LAYERS):
        for proj in ("q_proj", "k_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}.bias"
            np.testing.assert_array_equal(got[name].numpy(), original[name])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["use_sliding_window"] is False


def test_unpermute_inverts_llama_cpp_permutation():
    for rows, heads in ((64, 1), (192, 3), (576, 9)):
        w = np.arange(rows * 5, dtype=np.float32).reshape(rows, 5)
        gguf_rows = w[llama_cpp_row_order(rows, heads)]
        np.testing.assert_array_equal(gc.unpermute_rope_rows(gguf_rows, heads), w)
        np.testing.assert_array_equal(gc.unpermute_rope_rows(gguf_rows[:, 0], heads), w[:, 0])  # a bias


# ---------------------------------------------------------------------------------------- errors

def _minimal_gguf(path, arch="llama", tensor_type=QT.F32, tokenizer_model="gpt2", pre="smollm", merges=True,
                  with_config=True, eos=0):
    w = gguf.GGUFWriter(str(path), arch)
    if with_config:
        for key in gc.REQUIRED_KEYS:
            w.add_uint32(f"{arch}.{key}", 1)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tiny_vocab()[0])
    if merges:
        w.add_token_merges(MERGES)
    w.add_eos_token_id(eos)
    if tensor_type == QT.F32:
        w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    else:
        w.add_tensor("token_embd.weight", np.zeros((4, gguf.GGML_QUANT_SIZES[tensor_type][1]), np.uint8),
                     raw_dtype=tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "gemma"}, "architecture 'gemma' is not supported (supported: ['llama', 'qwen2'])"),
    ({"tensor_type": QT.IQ4_NL}, "has type IQ4_NL; supported: F32, F16, BF16, Q8_0"),
    ({"tokenizer_model": "llama"}, "tokenizer.ggml.model 'llama' is not supported"),
    ({"pre": "deepseek-coder"}, "tokenizer.ggml.pre 'deepseek-coder' is not supported"),
    ({"merges": False}, "tokenizer.ggml.merges is missing"),
    ({"eos": 265}, "tokenizer.ggml.eos_token_id = 265 is outside the 265-token vocabulary"),
    ({"with_config": False}, "GGUF metadata lacks required key(s) ['llama.block_count',"),
])
def test_unsupported_input_is_a_clear_error_and_leaves_nothing(tmp_path, kwargs, message):
    _minimal_gguf(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(gc.GGUFConvertError, match=re.escape(message)):
        gc.convert_gguf(tmp_path / "bad.gguf", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 this is a zip, not a GGUF" * 4)
    with pytest.raises(gc.GGUFConvertError, match="is not a readable GGUF file"):
        gc.convert_gguf(tmp_path / "x.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_interrupted_write_leaves_no_output(tiny, tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        gc.convert_gguf(tiny[0], tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temp folder


def test_existing_output_and_missing_source(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="src .* is not a file"):
        gc.convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        gc.convert_gguf(tiny[0], tmp_path / "out")
    gc.convert_gguf(tiny[0], tmp_path / "out", overwrite=True, progress=False)
    assert gc.is_converted(tmp_path / "out")


def test_cli_convert_gguf(tiny, tmp_path, capsys):
    assert cli.main(["convert-gguf", str(tiny[0]), str(tmp_path / "hf")]) == 0
    assert gc.is_converted(tmp_path / "hf")
    assert cli.main(["convert-gguf", str(tiny[0]), str(tmp_path / "hf")]) == 2  # exists, no --overwrite
    err = capsys.readouterr().err
    assert "rapid-engine convert-gguf: error:" in err and "--overwrite" in err
    assert cli.main(["convert-gguf", str(tiny[0]), str(tmp_path / "hf"), "--overwrite"]) == 0


# ------------------------------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def smollm2():
    return assets.smollm2_gguf(), assets.smollm2_path()


@pytest.fixture(scope="module")
def smollm2_tokenizers(smollm2):
    src, out = smollm2
    ref = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    return ref, transformers.AutoTokenizer.from_pretrained(str(out))


def test_smollm2_config(smollm2):
    cfg = json.loads((smollm2[1] / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (576, 1536, 30)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert (cfg["vocab_size"], cfg["max_position_embeddings"], cfg["rope_theta"]) == (49152, 8192, 100000.0)
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["tie_word_embeddings"] is True
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)


def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2_tokenizers):
    ref, ours = smollm2_tokenizers
    for text in VARIED_TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == text
    assert ours.encode("<|im_start|>")[0] == ref.convert_tokens_to_ids("<|im_start|>")
    chat = [{"role": "user", "content": "Summarize Genesis 1 in 3 words."}]
    assert (ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    assert ours.eos_token == "<|im_end|>"


def test_smollm2_digits_are_split_one_by_one(smollm2_tokenizers):
    _, ours = smollm2_tokenizers
    ids = ours.encode("year 2025")
    assert [ours.decode([i]) for i in ids[-4:]] == ["2", "0", "2", "5"]


def shrink_gguf(src, dst, n_vocab: int = 4096, max_layers: int = 3) -> list:
    """Copy of a real GGUF with its first n_vocab tokens and a few of its layers, tensors byte for byte.

    transformers' GGUF reader needs minutes for a full 0.5B file on 2 cores; a shrunk copy keeps what
    the logits test checks (tensor names, every quant type the file uses, real head counts for the
    q/k un-permute) at a fraction of the cost. Layers are picked to cover every tensor type in the file.
    Returns the kept layer numbers.
    """
    from gguf import GGUFValueType

    reader = gguf.GGUFReader(src)
    meta = gc.read_metadata(reader)
    arch = meta["general.architecture"]
    types_of = {}
    for t in reader.tensors:
        if t.name.startswith("blk."):
            types_of.setdefault(int(t.name.split(".")[1]), set()).add(t.tensor_type)
    layers, covered = [], set()
    for layer in sorted(types_of):
        if not types_of[layer] <= covered or not layers:
            layers.append(layer)
            covered |= types_of[layer]
    layers = layers[:max_layers]

    tokens = meta["tokenizer.ggml.tokens"][:n_vocab]
    vocab = set(tokens)
    merges = [m for m in meta["tokenizer.ggml.merges"]
              if all(p in vocab for p in m.split(" ")) and m.replace(" ", "") in vocab]
    replaced = {f"{arch}.block_count": len(layers), f"{arch}.vocab_size": n_vocab, "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.token_type": meta["tokenizer.ggml.token_type"][:n_vocab],
                "tokenizer.ggml.merges": merges}
    w = gguf.GGUFWriter(str(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = replaced.get(key, meta[key])
        if key.endswith("_token_id"):
            value = min(value, n_vocab - 1)
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(key, value, field.types[0], sub_type=sub_type)
    for t in reader.tensors:
        parts = t.name.split(".")
        data = t.data
        if parts[0] == "blk":
            if int(parts[1]) not in layers:
                continue
            parts[1] = str(layers.index(int(parts[1])))
        elif parts[0] in ("token_embd", "output"):
            data = data[:n_vocab]  # quant blocks never straddle rows, so a row slice stays valid
        raw_dtype = None if t.tensor_type in (QT.F32, QT.F16) else t.tensor_type
        w.add_tensor(".".join(parts), np.ascontiguousarray(data), raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return layers


def _logits_match_transformers(src, tmp_path, text_ids):
    small = tmp_path / "small.gguf"
    shrink_gguf(src, small)
    out = gc.convert_gguf(small, tmp_path / "hf", progress=False)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=small.name, dtype=torch.float32)
    ours = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.tensor([[i for i in text_ids if i < 4096]])
    assert ids.shape[1] >= 8
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(ours(ids).logits, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_smollm2_logits_match_transformers_gguf_loader(smollm2, smollm2_tokenizers, tmp_path):
    """Same fp32 logits as transformers' own GGUF reader: names, dequantization, q/k un-permute (9/3 heads)."""
    _, ours = smollm2_tokenizers
    _logits_match_transformers(smollm2[0], tmp_path, ours.encode("In the beginning God created the heaven and the "
                                                                 "earth. And the earth was without form, and void"))


def test_qwen_coder_config():
    cfg = json.loads((assets.qwen_coder_path() / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["tie_word_embeddings"] is False
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        896, 24, 14, 2)
    assert (cfg["max_position_embeddings"], cfg["rope_theta"], cfg["eos_token_id"]) == (32768, 1e6, 151645)
    assert cfg["rms_norm_eps"] == 1e-6 and cfg["vocab_size"] == 151936


@pytest.mark.slow
def test_qwen_coder_tokenizer_matches_transformers_gguf_tokenizer():
    src, out = assets.qwen_coder_gguf(), assets.qwen_coder_path()
    ref = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in VARIED_TEXTS + ["<tool_call>{\"name\": 1}</tool_call><|fim_prefix|>x"]:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    # HF's Qwen2 tokenizer NFC-normalizes (transformers' GGUF reader does not): e + combining acute == é.
    assert tok.encode("cafe\u0301") == tok.encode("caf\u00e9")
    chat = [{"role": "user", "content": "Write a haiku about Rust."}]
    assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


@pytest.mark.slow
def test_qwen_coder_logits_match_transformers_gguf_loader(tmp_path):
    """Q4_K/Q6_K/Q5_0/Q8_0 tensors, q/k/v biases, untied lm_head: same fp32 logits as transformers."""
    tok = transformers.AutoTokenizer.from_pretrained(str(assets.qwen_coder_path()))
    _logits_match_transformers(assets.qwen_coder_gguf(), tmp_path,
                               tok.encode("def fibonacci(n):\n    if n < 2:\n        return n\n    return"))
