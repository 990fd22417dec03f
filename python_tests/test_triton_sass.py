"""Offline SASS of the Triton verify_attention split kernel (bench/gpu/sass_budget.py), no GPU needed.

The bf16 decode loop must be able to feed the copy bandwidth: its K/V tiles arrive by 16-byte cp.async
(LDGSTS) and go through the tensor cores (HMMA), and its instruction count leaves the issue bound far above
an H200's ~16 B/clk/SM of copy bandwidth. A change that makes the tile loads scalar (a lost alignment or
EVEN_D path) or bloats the loop fails here on a CPU machine, long before a GPU session would see it.
Runs the tool in a subprocess with TRITON_INTERPRET=0 (this suite interprets Triton kernels, and @triton.jit
reads the switch at import).
"""
import json
import os
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


@pytest.mark.skipif(not _tools_present(), reason="needs triton.compile's ASTSource API and Triton's nvdisasm")
def test_bf16_decode_loop_can_feed_the_copy_bandwidth():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "sass_budget.py"), "triton", "--formats", "bf16",
                           "--config", "64,4,3", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["bytes"] == 2 * 64 * 128 * 2  # one 64-key tile of K and V, D = 128, bf16
    assert r["async_loads"] > 0, f"no cp.async in the key loop: {r['mix']}"
    assert r["mix"].get("HMMA", 0) > 0, f"no tensor-core MMA in the key loop: {r['mix']}"
    assert r["issue_bytes_per_clk"] > 2 * 16, (f"bf16 loop: {r['instructions']} instructions per 32 KB tile "
                                               f"-> {r['issue_bytes_per_clk']:.1f} B/clk/SM")
