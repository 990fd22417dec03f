#!/usr/bin/env bash
# GPU checks of issue #3's CUDA/Triton verification attention (owner: cuda_attn). Run from the repo root
# AFTER the extension is built (RAPID_BUILD_CUDA=1 RAPID_CUDA_ARCHS=90 ... setup.py build_ext --inplace).
# Steps, each under its own time limit (about 3 minutes in all); logs and JSON land in $OUT:
#   1. correctness: the CUDA/Triton attention + KV-quant tests (float64 oracle, bitwise batch invariance,
#      bad input; backends triton, cuda (staged kernel), cuda-quarters and cuda-direct) -> pytest summary line;
#   2. bad input never crashes (each case in its own process) + the .cu formatted-TORCH_CHECK diagnostic;
#   3. speed: Llama (32q/8kv/D128) then SmolLM2 (9q/3kv/D64) heads, S 32K/64K, bf16/int8/int4, n_query
#      1/4/11: Triton, CUDA (default staged kernel and its RAPID_CUDA_VERIFY_KERNEL variants), SDPA; copy
#      bandwidth measured in-run; TARGET PASS/FAIL lines (BENCH_FLAGS=--sweep-triton adds the Triton config
#      and CUDA split-target sweeps).
set -u
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG=$OUT/cuda_attn.log
step() {
  local limit=$1; shift
  echo "=== [$(date +%T)] $* (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 80
  echo "=== rc=${PIPESTATUS[0]}" | tee -a "$LOG"
}
python3 -c "import torch, triton, rapid_engine; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__, rapid_engine.backends())" 2>&1 | tee -a "$LOG"
XDIST=""
python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
step 60 python3 -m pytest -q -p no:cacheprovider $XDIST --maxfail=40 python_tests/test_triton_attention.py -k "cuda or triton"
step 25 python3 bench/gpu_bad_input_repro.py
step ${BENCH_LIMIT:-150} python3 bench/bench_verify_attention_gpu.py --quick ${BENCH_FLAGS:-} --out "$OUT/verify_attention_gpu.json"
echo "=== cuda_attn done $(date +%T)" | tee -a "$LOG"
