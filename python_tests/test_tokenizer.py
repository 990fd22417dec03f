"""Tokenizer wrapper vs transformers' PreTrainedTokenizerFast on the same folder (a small byte-level BPE
trained here, offline), chat templates from tokenizer_config.json and chat_template.jinja, and errors."""
import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from rapid_engine.models.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Über café naïve — 東京 🙂 tabs\tand\nnewlines",
          "def f(x):\n    return x * 2  # code", "numbers 12345 and 3.14159"] * 20
TEXTS = ["Hello world, the fox!", "  leading spaces and trailing  ", "东京 🙂 café\n\nx = 1", ""]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>", "chat_template": TEMPLATE}))
    return path


def test_encode_decode_match_transformers(folder):
    ours = Tokenizer.from_dir(str(folder))
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == text == theirs.decode(ids)
    special = ours.encode("<|im_start|>user\nhi<|im_end|>")
    assert special[0] == ours.tokenizer.token_to_id("<|im_start|>")
    assert ours.decode(special) == "user\nhi"
    assert ours.decode(special, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


def test_offsets_cover_the_text(folder):
    """The retriever maps tokens back to characters through the underlying tokenizers.Tokenizer."""
    ours = Tokenizer.from_dir(str(folder))
    text = TEXTS[0]
    enc = ours.tokenizer.encode(text, add_special_tokens=False)
    assert enc.ids == ours.encode(text)
    assert "".join(text[a:b] for a, b in enc.offsets) == text


def test_special_ids_and_chat_template(folder):
    ours = Tokenizer.from_dir(str(folder), eos_token_ids=[0])
    assert ours.bos_token_id == ours.tokenizer.token_to_id("<|im_start|>")
    assert ours.eos_token_ids == sorted({0, ours.tokenizer.token_to_id("<|im_end|>")})
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b> & 'q'"}]
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    for gen in (True, False):
        want = theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == want
    assert ours.apply_chat_template(msgs).endswith("<|im_start|>assistant\n")


def test_chat_template_jinja_file_wins_and_dict_tokens(folder, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["eos_token"] = {"__type": "AddedToken", "content": "<|im_end|>", "special": True}  # older files' form
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                                                  "{% endfor %}")
    ours = Tokenizer.from_dir(str(tmp_path))
    assert ours.apply_chat_template([{"role": "user", "content": "x"}]) == "[user] x\n"
    assert ours.eos_token_ids == [ours.tokenizer.token_to_id("<|im_end|>")]


def test_errors(folder, tmp_path):
    ours = Tokenizer.from_dir(str(folder))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, \d+\), got \[1000000\]"):
        ours.decode([1, 10 ** 6])
    with pytest.raises(ValueError, match="token ids must be"):
        ours.decode([-1])
    with pytest.raises(TypeError, match="text must be a str"):
        ours.encode(b"bytes")
    with pytest.raises(ValueError, match="messages must be a list"):
        ours.apply_chat_template("hello")
    bare = Tokenizer(ours.tokenizer)
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        Tokenizer.from_dir(str(tmp_path))
