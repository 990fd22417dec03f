"""Loads the compiled extension `rapid_engine._C` (which registers torch.ops.rapid.* kernels).

Never raises on import: a package installed with RAPID_BUILD_EXT=0, or one whose extension fails
to load, runs every op on the pure-torch reference. `backends()` tells what is available.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

_C = None
LOAD_ERROR: str | None = None

if os.environ.get("RAPID_DISABLE_EXT", "0") not in ("1", "true"):
    try:
        from rapid_engine import _C  # noqa: F811  (registers TORCH_LIBRARY(rapid))
    except ImportError as e:  # not built, or built against another torch
        _C = None
        LOAD_ERROR = str(e)
        if importlib.util.find_spec("rapid_engine._C") is not None:
            warnings.warn(f"rapid_engine._C exists but failed to load ({e}); using the torch reference ops")

HAS_EXT: bool = _C is not None
HAS_CUDA_KERNELS: bool = bool(HAS_EXT and getattr(_C, "with_cuda", False))


def _has_triton() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton install must not break the import
        return False
    return True


HAS_TRITON: bool = _has_triton()


def triton_usable(device: torch.device) -> bool:
    """Triton kernels run on CUDA devices, or anywhere under TRITON_INTERPRET=1."""
    if not HAS_TRITON:
        return False
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cpu_isa() -> str | None:
    """The CPU kernel path in use ('avx512', 'avx2', 'scalar'), or None without the extension."""
    return _C.cpu_isa() if HAS_EXT else None


def backends() -> dict:
    """What this install can run: {'torch': True, 'cpu': ..., 'cuda': ..., 'triton': ..., 'cpu_isa': ...}."""
    return {
        "torch": True,
        "cpu": HAS_EXT,
        "cuda": HAS_CUDA_KERNELS and torch.cuda.is_available(),
        "triton": HAS_TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
        "cpu_isa": cpu_isa(),
        "ext_error": LOAD_ERROR,
    }


VALID_BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Turn backend='auto' into a concrete one for tensors on `device`; check explicit choices.

    auto: cuda tensors -> 'cuda' kernels if built, else 'triton', else 'torch';
          cpu tensors  -> 'cpu' kernels if built, else 'torch'.
    """
    if backend not in VALID_BACKENDS:
        raise ValueError(f"{op}: backend must be one of {VALID_BACKENDS}, got {backend!r}")
    dev = torch.device(device)
    if backend == "auto":
        if dev.type == "cuda":
            if HAS_CUDA_KERNELS:
                return "cuda"
            return "triton" if HAS_TRITON else "torch"
        return "cpu" if (HAS_EXT and dev.type == "cpu") else "torch"
    if backend == "cpu":
        if not HAS_EXT:
            raise RuntimeError(f"{op}: backend='cpu' needs the compiled extension ({LOAD_ERROR or 'built with RAPID_BUILD_EXT=0'})")
        if dev.type != "cpu":
            raise ValueError(f"{op}: backend='cpu' needs CPU tensors, got {dev}")
    if backend == "cuda":
        if not HAS_CUDA_KERNELS:
            raise RuntimeError(f"{op}: backend='cuda' needs the extension built with CUDA (RAPID_BUILD_CUDA=1)")
        if dev.type != "cuda":
            raise ValueError(f"{op}: backend='cuda' needs CUDA tensors, got {dev}")
    if backend == "triton" and not triton_usable(dev):
        raise RuntimeError(f"{op}: backend='triton' needs triton and a CUDA device (or TRITON_INTERPRET=1 on CPU)")
    return backend
