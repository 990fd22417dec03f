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


ALL_CPU_ISAS = ["scalar", "avx2", "avx512", "avx512bf16", "amx"]
# /proc/cpuinfo flags each path needs (cpu_isa.h's detected_isa(); the avx512 paths need bf16 + VNNI dot products).
_ISA_FLAGS = {
    "avx2": ["avx2", "fma", "f16c"],
    "avx512": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni"],
    "avx512bf16": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni"],
    "amx": ["avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"],
}


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa_params() -> list:
    """Every CPU path as a pytest param; a path this machine lacks is skipped with the missing flag named."""
    have = cpu_isas()
    flags = _cpu_flags()
    out = []
    for name in ALL_CPU_ISAS:
        if name in have:
            out.append(pytest.param(name, id=name))
            continue
        if not _ext.HAS_EXT:
            reason = "the compiled extension is not built"
        else:
            missing = [f for f in _ISA_FLAGS.get(name, []) if f not in flags]
            reason = (f"CPU lacks {', '.join(missing)}" if missing else
                      "the OS refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)")
        out.append(pytest.param(name, id=name, marks=pytest.mark.skip(reason=f"{name} path: {reason}")))
    return out


@pytest.fixture
def force_isa(monkeypatch):
    """Call force_isa('avx2') inside a test to pin the CPU kernel path for that test only."""
    def _set(name):
        monkeypatch.setenv("RAPID_CPU_ISA", name)
    return _set


def pytest_report_header(config):
    return f"rapid_engine backends: {_ext.backends()}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"
