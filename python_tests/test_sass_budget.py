"""Offline SASS of the verify_attention GPU kernels (bench/gpu/sass_budget.py), no GPU needed.

The bf16 decode loops must be able to feed the copy bandwidth: Triton's K/V tiles arrive by 16-byte cp.async
(LDGSTS) and both backends go through the tensor cores (HMMA), with an instruction count that leaves the issue
bound far above an H200's ~16 B/clk/SM of copy bandwidth. A change that makes the tile loads scalar (a lost
alignment or EVEN_D path) or bloats a loop fails here on a CPU machine, long before a GPU session would see it.
The tool runs in a subprocess with TRITON_INTERPRET=0 (this suite interprets Triton kernels, and @triton.jit
reads the switch at import).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton")


def _tools_present():
    try:
        import inspect

        from triton.compiler import ASTSource
        nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
        return "constexprs" in inspect.signature(ASTSource.__init__).parameters and nvdisasm.exists()
    except Exception:
        return False


def _budget(*args):
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "sass_budget.py"), *args, "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.skipif(not _tools_present(), reason="needs triton.compile's ASTSource API and Triton's nvdisasm")
def test_triton_bf16_decode_loop_can_feed_the_copy_bandwidth():
    (r,) = _budget("triton", "--formats", "bf16", "--config", "64,4,3")
    assert r["bytes"] == 2 * 64 * 128 * 2  # one 64-key tile of K and V, D = 128, bf16
    assert r["async_loads"] > 0, f"no cp.async in the key loop: {r['mix']}"
    assert r["mix"].get("HMMA", 0) > 0, f"no tensor-core MMA in the key loop: {r['mix']}"
    assert r["issue_bytes_per_clk"] > 2 * 16, (f"bf16 loop: {r['instructions']} instructions per 32 KB tile "
                                               f"-> {r['issue_bytes_per_clk']:.1f} B/clk/SM")


@pytest.mark.skipif(not _tools_present() or shutil.which("nvcc") is None, reason="needs nvcc and Triton's nvdisasm")
def test_cuda_bf16_decode_loops_can_feed_the_copy_bandwidth():
    rows = {r["kernel"]: r for r in _budget("cuda", "--formats", "bf16")}
    assert set(rows) == {"staged", "direct"}, rows
    for kernel, r in rows.items():
        assert r["mix"].get("HMMA", 0) > 0, f"{kernel}: no tensor-core MMA in the key loop: {r['mix']}"
        assert r["issue_bytes_per_clk"] > 2 * 16, (f"{kernel} bf16 loop: {r['instructions']} instructions per "
                                                   f"{r['keys']} keys -> {r['issue_bytes_per_clk']:.1f} B/clk/SM")
