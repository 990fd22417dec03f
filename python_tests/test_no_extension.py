"""An install without the compiled extension (RAPID_BUILD_EXT=0, or a _C that fails to load) still works:
the import never fails, backends() says so, and every torch.ops.rapid.* op exists, backed by the reference.

Runs in a subprocess with RAPID_DISABLE_EXT=1, since this process has already loaded the extension.
"""
import os
import subprocess
import sys

SCRIPT = r"""
import torch
import rapid_engine
from rapid_engine import ops
from rapid_engine.ops import reference as ref

b = rapid_engine.backends()
assert b["cpu"] is False and b["cpu_isa"] is None, b
g = torch.Generator().manual_seed(0)

# verify_attention over an int8 cache: the op and the public function both equal the reference
k = torch.randn(2, 2, 40, 64, generator=g)
v = torch.randn(2, 2, 40, 64, generator=g)
q = torch.randn(2, 3, 4, 64, generator=g)
seqlens = torch.tensor([40, 17], dtype=torch.int32)
kq, vq = ops.quantize_kv(k, "int8"), ops.quantize_kv(v, "int8")
want = ref.verify_attention(q, kq.data, vq.data, kq.scale, None, vq.scale, None, seqlens, "int8", 0.125)
got_op = torch.ops.rapid.verify_attention(q, kq.data, vq.data, kq.scale, None, vq.scale, None, seqlens, "int8", 0.125)
got_fn = ops.verify_attention(q, kq, vq, seqlens, sm_scale=0.125)
assert torch.equal(got_op, want) and torch.equal(got_fn, want)

# quantize-on-write through the op equals quantize_kv
data = torch.zeros(2, 2, 40, 64, dtype=torch.int8)
scale = torch.zeros(2, 2, 40)
torch.ops.rapid.kv_append(data, scale, torch.empty(0), k[:, :, :9], 0, "int8")
assert torch.equal(data[:, :, :9], kq.data[:, :, :9]) and torch.equal(scale[:, :, :9], kq.scale[:, :, :9])

# spec_sample: same uniforms -> same result as the reference
z = torch.randn(3, 4, 50, generator=g)
d = torch.randint(0, 50, (3, 3), generator=g)
p = torch.softmax(torch.randn(3, 3, 50, generator=g), -1)
u = torch.rand(3, 4, generator=g, dtype=torch.float64)
got = torch.ops.rapid.spec_sample(z, d, p, u, 1.0, 0, 0.9, 2.0, 0.1, "exact")
want = ref.spec_sample(z, d, p, u, 1.0, 0, 0.9, 2.0, 0.1, "exact")
assert all(torch.equal(a, b) for a, b in zip(got, want))

# the batch-invariant linear falls back to row-by-row torch
x, w = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g)
assert torch.allclose(ops.linear(x, w), x @ w.T, atol=1e-5)
print("OK")
"""


def test_everything_runs_without_the_extension():
    env = dict(os.environ, RAPID_DISABLE_EXT="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
