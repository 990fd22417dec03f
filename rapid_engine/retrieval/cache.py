"""On-disk cache of document indexes: one folder per key, holding numpy arrays (.npy, loaded with
allow_pickle=False), an optional hnswlib graph file and a JSON manifest with every file's size and
SHA-256. Nothing in an entry can run code when read.

An entry is written into a temporary folder and renamed into place whole, so readers never see a
half-written entry. On read, every file is checked against the manifest *before* it is parsed or
handed to hnswlib; any mismatch makes `load` return None (with a warning) and the caller rebuilds.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
GRAPH = "graph.hnsw"


def cache_key(params: dict) -> str:
    """Key of an entry: hash of its parameters as canonical JSON."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "self_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class CorruptEntry(Exception):
    """A cache entry that failed verification (reported as a warning, then rebuilt)."""


class IndexCache:
    def __init__(self, root):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    # ---- write ----------------------------------------------------------------------------------
    def save(self, key: str, params: dict, meta: dict, arrays: dict,
             write_graph: Optional[Callable[[Path], bool]] = None) -> Path:
        """Write arrays (name -> ndarray), an optional graph (write_graph(path) -> written?) and the
        manifest into a temporary folder, then rename it to the entry folder."""
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            files = {}
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                if arr.dtype == object:
                    raise ValueError(f"array {name!r} has dtype object, which .npy can only store by pickling")
                np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
                files[f"{name}.npy"] = None
            if write_graph is not None and write_graph(tmp / GRAPH):
                files[GRAPH] = None
            for fname in files:
                files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
            manifest = {"format": CACHE_FORMAT, "params": params, "meta": meta, "files": files}
            manifest["self_sha256"] = _manifest_digest(manifest)
            (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
            final = self.entry_dir(key)
            if final.exists():  # a corrupt entry we are replacing: move it aside, then drop it
                old = self.root / f".old-{key}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:  # another process renamed the same entry in first; theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
            return final
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ---- read -----------------------------------------------------------------------------------
    def load(self, key: str, params: dict) -> Optional[tuple[dict, dict, Optional[Path]]]:
        """(meta, arrays, graph_path or None) of a verified entry, or None when absent or corrupt."""
        folder = self.entry_dir(key)
        if not folder.exists():
            return None
        try:
            return self._verified(folder, params)
        except CorruptEntry as e:
            warnings.warn(f"retrieval cache entry {folder} is corrupt ({e}); rebuilding it")
            return None

    def _verified(self, folder: Path, params: dict):
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptEntry(f"unreadable manifest: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise CorruptEntry("unknown manifest format")
        if manifest.get("self_sha256") != _manifest_digest(manifest):
            raise CorruptEntry("manifest fails its checksum")
        if manifest.get("params") != params:
            raise CorruptEntry("manifest parameters do not match the key")
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise CorruptEntry("manifest lists no files")
        for fname, info in files.items():
            path = folder / fname
            if "/" in fname or fname.startswith(".") or not isinstance(info, dict):
                raise CorruptEntry(f"bad file entry {fname!r}")
            if not path.is_file() or path.stat().st_size != info.get("bytes"):
                raise CorruptEntry(f"{fname} is missing or has the wrong size")
            if _sha256(path) != info.get("sha256"):
                raise CorruptEntry(f"{fname} fails its checksum")
        arrays = {}
        for fname in files:
            if fname.endswith(".npy"):
                try:
                    arrays[fname[:-4]] = np.load(folder / fname, allow_pickle=False)
                except ValueError as e:
                    raise CorruptEntry(f"{fname}: {e}") from None
        return manifest.get("meta", {}), arrays, (folder / GRAPH if GRAPH in files else None)
