#!/usr/bin/env bash
# A/B the avx512bf16 small-M linear: a git ref (A, default HEAD) against the working tree (B), in one process
# (bench/cpu_linear_ab/harness.cpp). Not a test; a tool for kernel work on this noisy VM.
#   bench/cpu_linear_ab/ab.sh [-r REF] [-t THREADS] N,K...     e.g.  ab.sh -r HEAD~2 -t 2 2048,1536 17920,1536
set -euo pipefail
ref=HEAD threads=1
while [[ "${1:-}" == -* ]]; do
  case $1 in -r) ref=$2 ;; -t) threads=$2 ;; esac
  shift 2
done
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/A"
git -C "$root" archive "$ref" csrc/include | tar -x -C "$work/A"
flags=(-O3 -std=c++17 -fopenmp -fno-math-errno)
g++ "${flags[@]}" -Drapid=rapid_A -DRUN=run_A -I"$work/A/csrc/include" -c "$here/variant.cpp" -o "$work/A.o"
g++ "${flags[@]}" -DRUN=run_B -I"$root/csrc/include" -c "$here/variant.cpp" -o "$work/B.o"
g++ "${flags[@]}" "$here/harness.cpp" "$work/A.o" "$work/B.o" -o "$work/harness"
for spec in "$@"; do "$work/harness" "${spec%,*}" "${spec#*,}" "$threads"; done
