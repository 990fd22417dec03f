#!/usr/bin/env bash
# One GPU session (H100/H200), run from the repository root: build the CUDA extension for sm_90, run the
# CUDA/Triton tests, the GPU benchmarks, then compute-sanitizer on a slice of the tests. Every step has its own
# time limit so one slow step cannot starve the rest; everything lands in $OUT (default bench/results/gpu).
set -u
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG=$OUT/gpu_session.log
step() { local limit=$1; shift; echo "=== [$(date +%T)] $* (limit ${limit}s)" | tee -a "$LOG"; timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 40; echo "=== rc=${PIPESTATUS[0]}" | tee -a "$LOG"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee -a "$LOG"
step 200 env RAPID_BUILD_CUDA=1 RAPID_CUDA_ARCHS=90 MAX_JOBS=16 python3 setup.py -q build_ext --inplace
step 30 python3 -c "import rapid_engine; print(rapid_engine.backends())"
step 110 python3 -m pytest -q -p no:cacheprovider -n 8 --maxfail=30 python_tests/test_triton_attention.py "python_tests/test_spec_sample.py" -k "cuda or triton"
step 75 python3 bench/bench_verify_attention_gpu.py --quick --out "$OUT/verify_attention_gpu.json"
step 30 python3 bench/spec_sample_gpu_check.py cuda
step 90 python3 bench/gpu_engine_steps.py --out "$OUT/gpu_engine_steps.json"
step 45 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider -x python_tests/test_triton_attention.py -k "cuda and (odd_shapes or every_format)"
step 25 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider -x python_tests/test_triton_attention.py -k "cuda and odd_shapes and int4"
echo "=== done $(date +%T)" | tee -a "$LOG"
