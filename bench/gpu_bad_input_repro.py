"""Bad input to the CUDA KV ops must raise a clear error, never crash the process.

On an H200 (torch 2.11, nvcc 13) the CUDA launchers segfaulted (rc -11) when a TORCH_CHECK whose
message streams integers or sizes fired inside nvcc-compiled code; literal-only messages raised
fine. The checks now live in the host-compiled csrc/cuda/cuda_kv_checks.cpp. Each case runs in its
own process (a segfault must not take the others down), all in parallel.

  "attn" / "kv" cases: must raise with the expected text   -> PASS / FAIL lines
  "diag" cases: TORCH_CHECKs still formatted inside a .cu (the spec_sample CUDA launcher, called
  directly, past the Python checks): they tell whether nvcc-compiled throwing with a formatted
  message crashes in general on this machine (reported as DIAG lines, not a pass/fail).

Run on a GPU machine after building with RAPID_BUILD_CUDA=1: python3 bench/gpu_bad_input_repro.py
"""
import subprocess
import sys
import textwrap

PRE = textwrap.dedent('''
import sys, torch
sys.path.insert(0, "python_tests")
import rapid_engine
from test_triton_attention import _case, _attend, DEVICE
good = _case(1, 2, 4, 2, 32, 64, "int8", torch.float32)
def call(i, value, match=None):
    args = list(good); args[i] = value
    _attend("cuda", *args)
def spec(**kw):
    a = dict(target_logits=torch.randn(1, 3, 50, device="cuda"), draft_tokens=torch.zeros(1, 2, dtype=torch.long, device="cuda"),
             draft_probs=None, uniforms=torch.rand(1, 3, dtype=torch.float64, device="cuda"), temperature=1.0, top_k=0,
             top_p=1.0, eta=0.0, tail_alpha=0.0, residual="exact")
    a.update(kw)
    torch.ops.rapid.spec_sample(*a.values())
x = torch.randn(1, 2, 8, 64, device="cuda")
try:
''')
POST = textwrap.dedent('''
    torch.cuda.synchronize()
    print("NO ERROR RAISED")
except Exception as e:
    print(type(e).__name__ + ": " + str(e).splitlines()[0][:200])
''')

CASES = [  # (kind, python statement, text the error must contain)
    ("attn", "call(0, torch.randn(1, 2, 3, 64, device=DEVICE))", "multiple of kv_heads"),
    ("attn", "call(0, torch.randn(1, 2, 4, 128, device=DEVICE)[..., ::2])", "contiguous"),
    ("attn", "call(0, torch.randn(1, 2, 4, 64, device=DEVICE).double())", "q must be"),
    ("attn", "call(7, torch.tensor([33], dtype=torch.int32, device=DEVICE))", "seqlens must lie"),
    ("attn", "call(7, torch.tensor([1], dtype=torch.int32, device=DEVICE))", "seqlens must lie"),
    ("attn", "call(7, torch.tensor([20], dtype=torch.int64, device=DEVICE))", "seqlens must be int32"),
    ("attn", "call(3, good[3][:, :, :16])", "k_scale"),
    ("attn", "call(3, None)", "k_scale"),
    ("attn", "call(1, good[1].float())", "k must be"),
    ("attn", "call(8, 'int3')", "kv_dtype"),
    ("kv", "torch.ops.rapid.quantize_kv(x, 'int3')", "kv_dtype"),
    ("kv", "torch.ops.rapid.quantize_kv(torch.randn(1, 2, 8, 40, device='cuda'), 'int4')", "multiple of 16"),
    ("kv", "d, s, z = torch.ops.rapid.quantize_kv(x, 'int8'); torch.ops.rapid.kv_append(d, s, z, x, 3, 'int8')",
     "do not fit"),
    ("kv", "d, s, z = torch.ops.rapid.quantize_kv(x, 'int8'); torch.ops.rapid.dequantize_kv(d, s[:, :1], None, 'int8', 64)",
     "scale must be"),
    ("diag", "spec(top_k=-1)", "top_k"),                       # int64 in the message
    ("diag", "spec(temperature=-1.0)", "temperature"),         # double in the message
    ("diag", "spec(residual='bad')", "residual"),              # strings only
    ("diag", "spec(draft_tokens=torch.zeros(1, 5, dtype=torch.long, device='cuda'))", "draft_tokens"),  # sizes
]


def main() -> int:
    procs = [subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", PRE + "    " + stmt + POST],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _, stmt, _ in CASES]
    failed = 0
    for (kind, stmt, want), p in zip(CASES, procs):
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        out = out.strip()
        ok = p.returncode == 0 and "Error" in out and want in out
        tag = "DIAG" if kind == "diag" else ("PASS" if ok else "FAIL")
        failed += tag == "FAIL"
        print(f"{tag} rc={p.returncode} {stmt}\n     -> {out[:240] or err.strip()[-300:]}", flush=True)
    print(f"bad-input cases: {sum(k != 'diag' for k, _, _ in CASES) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
