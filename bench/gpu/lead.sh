#!/usr/bin/env bash
# GPU-machine checks of the CPU launchers' bad-input errors (their TORCH_CHECKs crashed on this image before
# rapid/check.h): every bad-input test of the CPU ops, on that machine's toolchain.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
XDIST=""; python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
timeout 90 python3 -m pytest -q -p no:cacheprovider $XDIST python_tests/test_sources.py python_tests/test_kv_quant.py \
  python_tests/test_linear.py python_tests/test_verify_attention.py python_tests/test_spec_sample.py \
  -k "bad or error or invalid or refuse or sources" 2>&1 | tail -n 25
