"""On-disk cache of prefilled KV for a (model, document prefix, kv_dtype), so a second question skips the prefill.

One entry is one folder `<root>/<key>/` holding `kv.safetensors` (the cache tensors, sliced to the prefix length)
and `meta.json` (length, kv_dtype, the file's SHA-256, size, last use). Nothing is pickled: safetensors and JSON
cannot run code when read.

- Atomic: an entry is written into a temporary folder under the root and renamed into place, so a crash leaves
  either no entry or a complete one; a temporary folder left behind by a crash is removed on the next store.
- Verified: the SHA-256 of `kv.safetensors` is checked before the tensors are trusted; a corrupt or partial entry
  is deleted with a warning and the caller rebuilds it.
- Bounded: after each store, least-recently-used entries are evicted until the total is under `max_bytes`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_KV_FILE = "kv.safetensors"
_META_FILE = "meta.json"
_TMP_PREFIX = ".tmp-"


def _sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def document_key(model_fingerprint: str, kv_dtype: str, prefix_ids: list[int]) -> str:
    """Cache key of a prefilled prefix: the model, the storage format and the exact token ids."""
    h = hashlib.sha256()
    h.update(model_fingerprint.encode())
    h.update(b"\0" + kv_dtype.encode() + b"\0")
    h.update(torch.tensor(prefix_ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:40]


class DocumentCache:
    """Prefilled-KV store under `root`, at most `max_bytes` on disk (LRU eviction)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = 8 << 30):
        if max_bytes <= 0:
            raise ValueError(f"DocumentCache: max_bytes must be > 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)

    def _entry(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"DocumentCache: invalid key {key!r}")
        return self.root / key

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, meta) of a verified entry, or None if absent; a corrupt entry is removed (and None)."""
        entry = self._entry(key)
        if not entry.is_dir():
            return None
        try:
            meta = json.loads((entry / _META_FILE).read_text())
            kv_path = entry / _KV_FILE
            if kv_path.stat().st_size != meta["nbytes"] or _sha256_file(kv_path) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            tensors = load_file(str(kv_path))
        except Exception as e:  # anything unreadable is untrusted: drop it, the caller rebuilds
            warnings.warn(f"document cache entry {entry} is corrupt ({e}); rebuilding it")
            shutil.rmtree(entry, ignore_errors=True)
            return None
        meta["last_used"] = time.time()
        try:
            _write_json_atomic(entry / _META_FILE, meta)
        except OSError:
            pass  # a read-only cache still serves hits; only the LRU order goes stale
        return tensors, meta

    def store(self, key: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Write an entry atomically, then evict least-recently-used entries beyond max_bytes."""
        entry = self._entry(key)
        self._remove_stale_tmp()
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=_TMP_PREFIX))
        try:
            kv_path = tmp / _KV_FILE
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(kv_path))
            full_meta = dict(meta, sha256=_sha256_file(kv_path), nbytes=kv_path.stat().st_size,
                             created=time.time(), last_used=time.time())
            (tmp / _META_FILE).write_text(json.dumps(full_meta))
            if entry.exists():  # a concurrent writer won, or a stale entry: replace it
                shutil.rmtree(entry, ignore_errors=True)
            os.rename(tmp, entry)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not entry.is_dir():
                warnings.warn(f"could not write document cache entry {entry}: {e}")
            return
        self.evict(keep=key)

    def entries(self) -> list[tuple[str, float, int]]:
        """(key, last_used, bytes) for every complete entry."""
        out = []
        for d in self.root.iterdir():
            if not d.is_dir() or d.name.startswith(_TMP_PREFIX):
                continue
            try:
                meta = json.loads((d / _META_FILE).read_text())
                size = sum(f.stat().st_size for f in d.iterdir())
                out.append((d.name, float(meta.get("last_used", 0.0)), size))
            except (OSError, ValueError):
                out.append((d.name, 0.0, sum(f.stat().st_size for f in d.iterdir() if f.is_file())))
        return out

    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.entries())

    def evict(self, keep: str | None = None) -> None:
        entries = sorted(self.entries(), key=lambda e: e[1])  # oldest first
        total = sum(size for _, _, size in entries)
        for key, _, size in entries:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            shutil.rmtree(self.root / key, ignore_errors=True)
            total -= size

    def _remove_stale_tmp(self, older_than_s: float = 3600.0) -> None:
        now = time.time()
        for d in self.root.glob(_TMP_PREFIX + "*"):
            try:
                if now - d.stat().st_mtime > older_than_s:
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
            except OSError:
                pass
