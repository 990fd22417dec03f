"""The decoder against transformers (random-weight configs saved with save_pretrained; no hub),
incremental decoding invariants, and clear errors for bad folders and bad input.

The test folders have no tokenizer.json: `load_model` then loads with `model.tokenizer = None`
(tokenizers are tested in test_tokenizer.py and test_real_models.py).
"""
import json
import os
import shutil
import zlib

import pytest
import torch

from rapid_engine.models import ModelConfig, load_model
from rapid_engine.models.rope import inv_frequencies

transformers = pytest.importorskip("transformers")

VOCAB = 97
BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
            initializer_range=0.2)  # large init: sharp attention, so RoPE or mask errors show in the logits

# name -> (config class, overrides). Positions in the tests reach 100, past every original length here.
CONFIGS = {
    "llama_gqa": ("LlamaConfig", {}),
    "llama_mha_tied_bias": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True,
                                                attention_bias=True, mlp_bias=True)),
    "llama3_rope": ("LlamaConfig", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "linear_rope": ("LlamaConfig", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "yarn_rope": ("LlamaConfig", dict(num_key_value_heads=1, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})),
    "dynamic_rope": ("LlamaConfig", dict(max_position_embeddings=48, rope_scaling={"rope_type": "dynamic",
                                                                                   "factor": 2.0})),
    "qwen2_tied": ("Qwen2Config", dict(tie_word_embeddings=True, num_attention_heads=6, num_key_value_heads=2,
                                       hidden_size=96, rope_theta=1e6)),
}


def _build(name, root):
    cls_name, over = CONFIGS[name]
    cfg = getattr(transformers, cls_name)(**{**BASE, **over})
    model_cls = transformers.LlamaForCausalLM if cls_name == "LlamaConfig" else transformers.Qwen2ForCausalLM
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)  # not hash(): str hashes change per process
    hf = model_cls(cfg).eval()
    if over.get("attention_bias") or cls_name == "Qwen2Config":
        with torch.no_grad():  # transformers zero-inits biases; make them matter
            for n, p in hf.named_parameters():
                if n.endswith(".bias"):
                    p.normal_(0, 0.5)
    path = os.path.join(root, name)
    hf.save_pretrained(path)
    return hf, path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _build(name, str(root))
        return cache[name]
    return get


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids).logits.float()


def _assert_close_to(out, ref, rel=1e-4):
    err, scale = (out - ref).abs().max().item(), ref.abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3g} > {rel} * max |logit| {scale:.3g}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(built, name):
    hf, path = built(name)
    model = load_model(path)
    ids = torch.randint(0, VOCAB, (2, 101), generator=torch.Generator().manual_seed(1))
    out = model.logits(ids)
    assert out.dtype == torch.float32 and out.shape == (2, 101, VOCAB)
    _assert_close_to(out, _hf_logits(hf, ids))


@pytest.mark.parametrize("name", ["llama3_rope", "qwen2_tied"])
def test_attention_backends_agree(built, name):
    """Every verify_attention backend on this machine gives the model the transformers logits."""
    from conftest import available_backends

    hf, path = built(name)
    ids = torch.randint(0, VOCAB, (1, 77), generator=torch.Generator().manual_seed(2))
    ref = _hf_logits(hf, ids)
    for backend in available_backends("cpu"):
        _assert_close_to(load_model(path, attn_backend=backend).logits(ids), ref)


@pytest.mark.parametrize("name", ["llama_gqa", "llama3_rope", "yarn_rope", "linear_rope", "qwen2_tied"])
def test_incremental_decoding_matches_full_forward(built, name):
    """Chunked prefill, then single-token and multi-token steps, reproduce the one-shot logits."""
    hf, path = built(name)
    model = load_model(path)
    ids = torch.randint(0, VOCAB, (2, 100), generator=torch.Generator().manual_seed(3))
    full = model.logits(ids)
    for chunk in (7, 64, 100):
        cache = model.new_cache(120, batch_size=2)
        last = model.prefill(ids[:, :90], cache, chunk_size=chunk)
        assert cache.length == 90
        torch.testing.assert_close(last, full[:, 89], rtol=1e-5, atol=1e-5 * full.abs().max().item())
        one = model.forward(ids[:, 90:91], cache)
        several = model.forward(ids[:, 91:100], cache)
        torch.testing.assert_close(torch.cat([one, several], 1), full[:, 90:100], rtol=1e-5,
                                   atol=1e-5 * full.abs().max().item())
        assert cache.length == 100


def test_truncate_then_redecode_equals_never_decoded(built):
    _, path = built("llama3_rope")
    model = load_model(path)
    ids = torch.randint(0, VOCAB, (1, 60), generator=torch.Generator().manual_seed(4))
    fresh = model.new_cache(64)
    model.prefill(ids[:, :50], fresh)
    want = model.forward(ids[:, 55:58], fresh)

    rolled = model.new_cache(64)
    model.prefill(ids[:, :50], rolled)
    model.forward(ids[:, 50:55], rolled)  # decode 5 tokens, then reject them all
    rolled.truncate(50)
    got = model.forward(ids[:, 55:58], rolled)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name,kv_dtype", [("llama_gqa", "fp32"), ("qwen2_tied", "fp32"), ("llama_gqa", "bf16"),
                                           ("llama_gqa", "int8"), ("qwen2_tied", "int4"), ("qwen2_tied", "fp8")])
def test_forward_is_batch_invariant(built, name, kv_dtype):
    """forward over n tokens gives each token the bits of feeding the tokens one at a time (n <= 16), in
    every KV format: greedy speculative decoding must reproduce plain decoding exactly."""
    _, path = built(name)
    model = load_model(path)
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(5))
    cache = model.new_cache(64, kv_dtype=kv_dtype)
    model.prefill(ids[:, :24], cache)
    singles = torch.cat([model.forward(ids[:, 24 + i:25 + i], cache) for i in range(16)], 1)  # [1, 16, V]
    for n in (2, 5, 16):
        cache.truncate(24)
        assert torch.equal(model.forward(ids[:, 24:24 + n], cache), singles[:, :n]), f"n={n}"


def test_batch_rows_are_independent(built):
    """Small steps (batch * tokens <= SMALL_M) give a row the bits it gets alone in a batch of 1."""
    _, path = built("qwen2_tied")
    model = load_model(path)
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(6))
    both = model.new_cache(32, batch_size=3)
    model.prefill(ids[:, :8], both)
    row = model.new_cache(32, batch_size=1)
    model.prefill(ids[1:2, :8], row)
    assert torch.equal(model.forward(ids[:, 8:12], both)[1], model.forward(ids[1:2, 8:12], row)[0])


@pytest.mark.parametrize("kv_dtype,rel", [("bf16", 3e-2), ("fp16", 5e-3)])
def test_low_precision_kv_cache_stays_close(built, kv_dtype, rel):
    _, path = built("llama_gqa")
    model = load_model(path)
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(7))
    ref = model.logits(ids)[:, -1]
    cache = model.new_cache(40, kv_dtype=kv_dtype)
    _assert_close_to(model.prefill(ids, cache, chunk_size=16), ref, rel=rel)


def test_bf16_weights_stay_close(built):
    hf, path = built("qwen2_tied")
    model = load_model(path, dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.embed.dtype == torch.bfloat16
    ids = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(8))
    out = model.logits(ids)
    assert out.dtype == torch.float32
    _assert_close_to(out, _hf_logits(hf, ids), rel=5e-2)


def test_sharded_checkpoint_loads(built, tmp_path):
    hf, _ = built("llama_gqa")
    hf.save_pretrained(tmp_path, max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ids = torch.randint(0, VOCAB, (1, 33), generator=torch.Generator().manual_seed(9))
    _assert_close_to(load_model(tmp_path).logits(ids), _hf_logits(hf, ids))


def test_rope_scaling_override_extends_context(built, tmp_path):
    """load_model(rope_scaling=...) runs the same weights with another RoPE, as transformers would."""
    hf, path = built("llama_gqa")
    scaling = {"rope_type": "linear", "factor": 4.0}
    cfg = transformers.LlamaConfig(**{**BASE, "rope_scaling": scaling})
    hf4 = transformers.LlamaForCausalLM(cfg).eval()
    hf4.load_state_dict(hf.state_dict())
    model = load_model(path, rope_scaling=scaling)
    assert model.config.rope_type == "linear"
    ids = torch.randint(0, VOCAB, (1, 90), generator=torch.Generator().manual_seed(10))
    _assert_close_to(model.logits(ids), _hf_logits(hf4, ids))


def test_config_reads_transformers_4_layout():
    v5 = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 128,
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"}
    v4["rope_theta"] = 5e5
    v4["rope_scaling"] = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 32}
    a, b = ModelConfig.from_dict(v5), ModelConfig.from_dict(v4)
    assert a == b and a.rope_theta == 5e5 and a.rope_type == "llama3" and a.head_dim == 16
    assert torch.equal(inv_frequencies(a)[0], inv_frequencies(b)[0])


# ---------------------------------------------------------------- errors
def _copy(path, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(path, dst)
    return dst


def test_error_unsupported_architecture(built, tmp_path):
    dst = _copy(built("llama_gqa")[1], tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MistralForCausalLM"], "mistral"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture 'MistralForCausalLM'.*LlamaForCausalLM.*Qwen2"):
        load_model(dst)


def test_error_missing_and_truncated_weights(built, tmp_path):
    dst = _copy(built("llama_gqa")[1], tmp_path)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        load_model(dst)
    os.remove(dst / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(dst)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model(tmp_path / "nope")


def test_error_wrong_shape_and_missing_tensor(built, tmp_path):
    from safetensors.torch import load_file, save_file

    dst = _copy(built("llama_gqa")[1], tmp_path)
    tensors = load_file(dst / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"] = torch.zeros(64, 95)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"down_proj.weight.*shape \[64, 95\], expected \[64, 96\]"):
        load_model(dst)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="down_proj.weight' is missing"):
        load_model(dst)


def test_error_bad_input(built):
    model = load_model(built("llama_gqa")[1])
    cache = model.new_cache(16)
    with pytest.raises(ValueError, match="do not fit the cache.*max_len=16"):
        model.prefill(torch.zeros(1, 17, dtype=torch.long), cache)
    assert cache.length == 0
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {VOCAB}\), got {VOCAB}"):
        model.forward(torch.tensor([[1, VOCAB]]), cache)
    with pytest.raises(ValueError, match=r"token ids must be in .*got -1"):
        model.logits(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="integer tensor"):
        model.logits(torch.rand(1, 3))
    with pytest.raises(ValueError, match="batch 2.*batch_size=1"):
        model.forward(torch.zeros(2, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="chunk_size"):
        model.prefill(torch.zeros(1, 3, dtype=torch.long), cache, chunk_size=0)
    with pytest.raises(ValueError, match="dtype must be"):
        load_model(built("llama_gqa")[1], dtype="int8")
    with pytest.raises(ValueError, match="rope type 'llama3' needs"):
        load_model(built("llama_gqa")[1], rope_scaling={"rope_type": "llama3", "factor": 2.0})


def test_kv_bytes_per_token(built):
    model = load_model(built("llama_gqa")[1])
    c = model.config
    assert model.kv_bytes_per_token("fp32") == 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
    assert model.kv_bytes_per_token("bf16") == 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2


# ---------------------------------------------------------------- plain generation (rapid_engine.sampling)
def test_generate_ids_greedy_is_the_argmax_of_full_forwards(built):
    from rapid_engine.sampling import generate_ids

    model = load_model(built("qwen2_tied")[1])
    prompt = [3, 14, 15, 92, 65]
    got = list(generate_ids(model, prompt, max_new_tokens=6, stop_ids=[]))
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(model.logits(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(prompt):]
    stop = got[2]
    assert list(generate_ids(model, prompt, max_new_tokens=6, stop_ids=[stop]))[-1] == stop


def test_generate_ids_seeded_sampling_is_reproducible(built):
    from rapid_engine.sampling import generate_ids

    model = load_model(built("qwen2_tied")[1])
    kw = dict(max_new_tokens=12, temperature=1.5, top_k=20, top_p=0.95, stop_ids=[])
    a, b = (list(generate_ids(model, [1, 2, 3], seed=7, **kw)) for _ in range(2))
    assert a == b and len(a) == 12 and all(0 <= t < VOCAB for t in a)


def test_sample_next_follows_the_filtered_distribution():
    """10^5 draws of one row: chi-square against softmax(top-p(top-k(z / T)))."""
    from scipy.stats import chisquare

    from rapid_engine.sampling import sample_next

    z = torch.tensor([2.0, 1.5, 1.0, 0.2, -1.0, 0.9])
    T, k, p = 0.8, 4, 0.9
    probs = torch.softmax(z / T, 0)
    keep = probs.argsort(descending=True)[:k]  # top-4: ids 0, 1, 2, 5
    kp = probs[keep] / probs[keep].sum()
    n_keep = int((kp.cumsum(0) < p).sum()) + 1  # smallest prefix with mass >= p
    support = keep[:n_keep]
    want = torch.zeros_like(probs)
    want[support] = probs[support] / probs[support].sum()
    n = 100_000
    draws = sample_next(z.expand(n, -1).contiguous(), temperature=T, top_k=k, top_p=p,
                        generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=z.numel()).double()
    assert counts[want == 0].sum() == 0, "a filtered-out token was drawn"
    res = chisquare(counts[support].numpy(), (want[support].double() / want[support].double().sum() * n).numpy())
    assert res.pvalue > 1e-3, f"chi-square p={res.pvalue:.2g}"


def test_invalid_sampling_parameters(built):
    from rapid_engine.sampling import generate_ids

    model = load_model(built("qwen2_tied")[1])
    for kw, msg in ((dict(temperature=-0.5), "temperature"), (dict(temperature=float("nan")), "temperature"),
                    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                    (dict(max_new_tokens=-1), "max_new_tokens")):
        with pytest.raises(ValueError, match=msg):
            generate_ids(model, [1, 2], **kw)
    with pytest.raises(ValueError, match="prompt token ids"):
        generate_ids(model, [1, VOCAB])
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(model, [])
