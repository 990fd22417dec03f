#!/usr/bin/env bash
# One GPU run (H100/H200), from the repository root: build the CUDA extension for sm_90 once, then run every
# part's script in bench/gpu/ (cuda_attn.sh: attention tests + benchmarks; sampler.sh: spec_sample checks +
# benchmarks), each under its own time limit. Logs and JSON land in $OUT (default bench/results/gpu).
set -u
export OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
t0=$(date +%s)
timeout 240 env RAPID_BUILD_CUDA=1 RAPID_CUDA_ARCHS=90 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s"; tail -n 5 "$OUT/build.log"
timeout 30 python3 -c "import rapid_engine; print(rapid_engine.backends())"
# Toolchain facts behind the old bad-input SIGSEGV (rapid/check.h): which compiler and libstdc++ the .so uses.
{ so=$(ls rapid_engine/_C*.so); c++ --version | head -n 1; g++ --version | head -n 1; which g++ c++
  ldd "$so" | grep -E "stdc|gcc_s"; readelf -d "$so" | grep -E "NEEDED|RPATH|RUNPATH"
  nm -D --defined-only "$so" | grep -c "St6locale" ; } > "$OUT/toolchain.txt" 2>&1; cat "$OUT/toolchain.txt"
for part in ${GPU_PARTS:-lead cuda_attn sampler}; do
  t1=$(date +%s)
  timeout "${GPU_PART_LIMIT:-170}" bash "bench/gpu/$part.sh" > "$OUT/$part.stdout" 2>&1
  echo "=== $part rc=$? in $(( $(date +%s) - t1 )) s"; grep -E "PASS|FAIL|passed|failed|error" "$OUT/$part.stdout" | tail -n 25
done
echo "total $(( $(date +%s) - t0 )) s"
