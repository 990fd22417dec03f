"""Shared fixtures: which backends exist on this machine, and real assets (fetched, never mocked)."""
import os

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter. This must be set before any module that
# defines @triton.jit kernels is imported (the decorator reads it). Compile-for-sm_80/90 checks
# therefore run triton.compile in a subprocess with TRITON_INTERPRET=0.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rapid_engine import _ext  # noqa: E402


def available_backends(device: str = "cpu") -> list:
    """Kernel backends that can run tensors on `device` here (the torch reference is always first)."""
    out = ["torch"]
    if device == "cpu":
        if _ext.HAS_EXT:
            out.append("cpu")
        if _ext.triton_usable(torch.device("cpu")):
            out.append("triton")
    elif device == "cuda" and torch.cuda.is_available():
        if _ext.HAS_CUDA_KERNELS:
            out.append("cuda")
        if _ext.HAS_TRITON:
            out.append("triton")
    return out


def cpu_isas() -> list:
    """Every CPU path this machine can run (RAPID_CPU_ISA values)."""
    best = _ext.cpu_isa() if _ext.HAS_EXT else None
    order = ["scalar", "avx2", "avx512", "avx512bf16", "amx"]
    if best is None:
        return []
    return order[: order.index(best) + 1]


@pytest.fixture
def force_isa(monkeypatch):
    """Call force_isa('avx2') inside a test to pin the CPU kernel path for that test only."""
    def _set(name):
        monkeypatch.setenv("RAPID_CPU_ISA", name)
    return _set


def pytest_report_header(config):
    return f"rapid_engine backends: {_ext.backends()}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"
