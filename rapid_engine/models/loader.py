"""Hugging Face style model folders: safetensors weights (single or sharded) and `load_model`.

Weights are read through `safetensors.safe_open`, which memory-maps each file: a tensor is copied
out of the mapping once, straight into its final (fused, converted) buffer, and dropped, so the
model never sits in memory twice. Every problem with the folder is reported before or while
reading, naming the file or tensor: a missing or truncated file, a missing tensor, a wrong shape.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open

_SINGLE, _INDEX = "model.safetensors", "model.safetensors.index.json"


class SafetensorsFolder:
    """Name -> tensor access over `model.safetensors` or the shards listed in the index."""

    def __init__(self, path: str):
        self.path = path
        index_file, single_file = os.path.join(path, _INDEX), os.path.join(path, _SINGLE)
        if os.path.isfile(index_file):
            with open(index_file, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index_file}: expected a non-empty 'weight_map'")
            self._file_of = {name: os.path.join(path, shard) for name, shard in weight_map.items()}
        elif os.path.isfile(single_file):
            self._file_of = None  # filled from the file's header below
        else:
            raise FileNotFoundError(f"no weights in {path}: expected {_SINGLE} or {_INDEX}")
        self._handles = {}
        if self._file_of is None:
            self._file_of = {name: single_file for name in self._open(single_file).keys()}
        for shard in sorted(set(self._file_of.values())):
            self._open(shard)  # surface a missing or truncated shard now, not halfway through loading

    def _open(self, file: str):
        handle = self._handles.get(file)
        if handle is None:
            if not os.path.isfile(file):
                raise FileNotFoundError(f"weight file listed in {_INDEX} is missing: {file}")
            try:
                handle = safe_open(file, framework="pt", device="cpu")
            except Exception as e:  # SafetensorError: truncated file, bad header
                raise ValueError(f"cannot read {file} (truncated or not a safetensors file): {e}") from None
            self._handles[file] = handle
        return handle

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def names(self) -> list:
        return sorted(self._file_of)

    def shape(self, name: str) -> tuple:
        return tuple(self._open(self._file(name)).get_slice(name).get_shape())

    def _file(self, name: str) -> str:
        if name not in self._file_of:
            raise ValueError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        return self._file_of[name]

    def get(self, name: str, shape: tuple) -> torch.Tensor:
        """The tensor `name` (checked against `shape`), in its stored dtype, read from the mapping."""
        got = self.shape(name)
        if got != tuple(shape):
            raise ValueError(f"{self.path}: tensor {name!r} has shape {list(got)}, expected {list(shape)}")
        try:
            return self._open(self._file(name)).get_tensor(name)
        except Exception as e:  # data region shorter than the header says
            raise ValueError(f"cannot read tensor {name!r} from {self._file(name)}: {e}") from None

    def copy_into(self, out: torch.Tensor, name: str) -> None:
        """Read `name` (shape == out.shape) straight into `out`, converting dtype/device on the copy."""
        out.copy_(self.get(name, tuple(out.shape)))

    def close(self):
        self._handles.clear()


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """dtype=None -> float32 on CPU, bfloat16 on CUDA; strings like 'bf16' accepted."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)} or a torch dtype, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def load_model(path: str, *, dtype=None, device="cpu", rope_scaling: dict | None = None, attn_backend: str = "auto"):
    """Load a Llama / Qwen2 Hugging Face folder (config.json, safetensors, tokenizer.json).

    dtype: None -> float32 on CPU, bfloat16 on CUDA. rope_scaling: overrides the config's RoPE scaling,
    e.g. to run past the trained length. A folder without tokenizer.json (random-weight test models)
    loads with `model.tokenizer = None`.
    """
    from rapid_engine.models.config import ModelConfig
    from rapid_engine.models.llama import Model
    from rapid_engine.models.tokenizer import Tokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder not found: {path}")
    device = torch.device(device)
    cfg = ModelConfig.from_file(os.path.join(path, "config.json"), rope_scaling=rope_scaling)
    dtype = resolve_dtype(dtype, device)
    tokenizer = None
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        tokenizer = Tokenizer.from_dir(path, eos_token_ids=cfg.eos_token_ids, vocab_size=cfg.vocab_size)
    weights = SafetensorsFolder(path)
    try:
        return Model.from_weights(cfg, weights, tokenizer=tokenizer, dtype=dtype, device=device,
                                  attn_backend=attn_backend)
    finally:
        weights.close()
