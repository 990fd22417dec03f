# Reproduces the CUDA launcher crash seen on an H200 (torch 2.11, nvcc 13): each bad-input case of
# test_triton_attention.py::test_bad_input_is_a_clear_error runs in its own process; rc=-11 is a segfault.
# Run on a GPU machine after building with RAPID_BUILD_CUDA=1: PYTHONPATH=. python3 bench/gpu_bad_input_repro.py
import sys, subprocess, textwrap
CASES = [
 "call(0, torch.randn(1, 2, 3, 64, device=DEVICE), 'multiple of kv_heads')",
 "call(0, torch.randn(1, 2, 4, 128, device=DEVICE)[..., ::2], 'contiguous')",
 "call(0, torch.randn(1, 2, 4, 64, device=DEVICE).double(), 'q must be')",
 "call(7, torch.tensor([33], dtype=torch.int32, device=DEVICE), 'seqlens')",
 "call(7, torch.tensor([1], dtype=torch.int32, device=DEVICE), 'seqlens')",
 "call(7, torch.tensor([20], dtype=torch.int64, device=DEVICE), 'seqlens')",
 "call(3, good[3][:, :, :16], 'k_scale')",
 "call(3, None, 'k_scale')",
 "call(1, good[1].float(), 'k must be')",
 "call(8, 'int3', 'kv_dtype')",
]
PRE = textwrap.dedent('''
import sys, torch, re
sys.path.insert(0, "python_tests")
import rapid_engine
from test_triton_attention import _case, _attend, DEVICE
good = _case(1, 2, 4, 2, 32, 64, "int8", torch.float32)
def call(i, value, match):
    args = list(good); args[i] = value
    try:
        _attend("cuda", *args); torch.cuda.synchronize(); print("NO ERROR RAISED")
    except Exception as e:
        print(type(e).__name__, str(e).splitlines()[0][:200])
''')
for c in CASES:
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", PRE + c], capture_output=True, text=True)
    print(f"rc={r.returncode} {c}\n   {r.stdout.strip()[:300]}\n   {r.stderr.strip()[-600:] if r.returncode else ''}", flush=True)
