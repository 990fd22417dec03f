#!/bin/bash
# spec_sample on the GPU (run from the repo root after the extension is built with RAPID_BUILD_CUDA=1):
# correctness of the CUDA split path against the float64 reference (+ bad input, chi-square), then the 12
# speed shapes (x read floor from a read probe in the same run, x faster than the torch reference, launch cost)
# and per-kernel profiles. Everything goes to stdout; the speed rows also to one JSON under $OUT.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=.
timeout 70 python3 bench/spec_sample_gpu_check.py cuda 2>&1
timeout 45 python3 bench/spec_sample_gpu_check.py cuda speed 2>&1
