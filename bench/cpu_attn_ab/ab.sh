#!/usr/bin/env bash
# A/B the CPU verify_attention header: a git ref (A, default HEAD) against the working tree (B), round-robin
# in one process (bench/cpu_attn_ab/harness.cpp). Not a test; a tool for kernel work on this noisy VM.
#   bench/cpu_attn_ab/ab.sh [-r REF] SPEC...      e.g.  ab.sh -r HEAD~1 9,3,64,65536,1,5 32,8,128,65536,1,5,1
set -euo pipefail
ref=HEAD
if [[ "${1:-}" == "-r" ]]; then ref=$2; shift 2; fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/A"
git -C "$root" archive "$ref" csrc/include | tar -x -C "$work/A"
flags=(-O3 -std=c++17 -fopenmp -fno-math-errno -fPIC -shared -fvisibility=hidden -fvisibility-inlines-hidden)
g++ "${flags[@]}" -DRUN=run_A -I"$work/A/csrc/include" "$here/variant.cpp" -o "$work/libA.so" &
g++ "${flags[@]}" -DRUN=run_B -I"$root/csrc/include" "$here/variant.cpp" -o "$work/libB.so" &
wait
g++ -O2 -std=c++17 "$here/harness.cpp" -L"$work" -lA -lB -Wl,-rpath,"$work" -fopenmp -o "$work/harness"
echo "A = $ref ($(git -C "$root" rev-parse --short "$ref")), B = working tree; OMP_NUM_THREADS=${OMP_NUM_THREADS:-all}"
"$work/harness" "$@"
