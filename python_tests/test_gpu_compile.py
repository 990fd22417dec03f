"""CI proof, on a machine without a GPU, that the GPU code builds for sm_80 and sm_90.

(a) every csrc/cuda/*.cu compiles with nvcc (and every csrc/cuda/*.cpp with g++) against this torch's headers (the CPU wheel ships the
    ATen/c10 CUDA headers; only c10's generated cuda_cmake_macros.h is missing, hence
    -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE there), and the objects define every rapid::*_cuda launcher
    that csrc/ops.h declares for this part (same mangled names, so a RAPID_BUILD_CUDA=1 build links);
(b) every Triton kernel compiles to a cubin for GPUTarget("cuda", 80, 32) and ("cuda", 90, 32).
The nvcc jobs and the Triton job start together in a module fixture and run in parallel.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)
CU_SOURCES = sorted(p.name for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
CPP_SOURCES = sorted(p.name for p in (ROOT / "csrc" / "cuda").glob("*.cpp"))  # host-compiled argument checks
OWN_LAUNCHERS = ("quantize_kv_cuda", "dequantize_kv_cuda", "kv_append_cuda", "verify_attention_cuda")


def _nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/bin/nvcc",
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.exists(cand):
            return cand
    return None


def _torch_flags():
    from torch.utils.cpp_extension import include_paths
    incs = include_paths() + [sysconfig.get_paths()["include"], str(ROOT / "csrc"), str(ROOT / "csrc" / "include")]
    flags = [f"-I{p}" for p in incs] + [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    torch_inc = Path(include_paths()[0])
    if not (torch_inc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")  # CPU wheel: header generated only in CUDA builds
    return flags


def _nvcc_cmd(nvcc, src, obj):
    # The flags setup.py gives nvcc for RAPID_BUILD_CUDA=1, plus the ones torch's CUDAExtension adds
    # (no implicit __half/__nv_bfloat16 conversions or operators).
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
    cmd = [nvcc, "-c", str(src), "-o", str(obj), "-std=c++17", "-O3", "--use_fast_math", "-lineinfo",
           "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-DRAPID_WITH_CUDA=1", "-w"]
    cmd += [f for f in COMMON_NVCC_FLAGS if f not in cmd] + _torch_flags()
    for a in ARCHS:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    return cmd


# Runs with TRITON_INTERPRET=0 (the jit decorator reads it at import): compiles each kernel variant
# for both targets and prints one JSON line per (kernel, arch).
_TRITON_SCRIPT = r"""
import json, sys, traceback
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from rapid_engine.triton import kv_quant as kq, verify_attention as va

KV_PTR = {0: "*fp32", 1: "*bf16", 2: "*fp16", 3: "*i8", 4: "*u8", 5: "*u8"}
SCALE_PTR = {3: "*fp32", 4: "*fp16", 5: "*fp32"}
FLOATS = {"qk_scale"}

def signature(fn, ptrs, consts):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = ptrs[name]
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    return sig

variants = []
for fmt, dot_fp32 in ((0, True), (1, False), (2, False), (3, False), (4, False), (5, False)):
    q = "*fp32" if dot_fp32 else "*bf16"
    sc = SCALE_PTR.get(fmt, KV_PTR[fmt])
    ptrs = dict(q_ptr=q, k_ptr=KV_PTR[fmt], v_ptr=KV_PTR[fmt], ks_ptr=sc, vs_ptr=sc, kz_ptr=sc, vz_ptr=sc,
                seqlens_ptr="*i32", po_ptr="*fp32", plse_ptr="*fp32")
    consts = dict(FORMAT=fmt, G=32, BLOCK_R=64, BLOCK_N=64, BLOCK_D=128, DOT_FP32=dot_fp32, EVEN_D=True,
                  ROW_SCALED=fmt in (3, 5), FOLD_V=fmt in (3, 5))
    variants.append((f"verify_split[format={fmt}]", va._verify_split_kernel, ptrs, consts, {"num_warps": 4}))
variants.append(("merge_splits", va._merge_splits_kernel,
                 dict(po_ptr="*fp32", plse_ptr="*fp32", seqlens_ptr="*i32", out_ptr="*bf16"),
                 dict(BLOCK_S=32, BLOCK_D=128), {}))
for fmt, data in ((1, "*i16"), (3, "*i8"), (5, "*u8")):
    variants.append((f"quantize_rows[format={fmt}]", kq._quantize_rows_kernel,
                     dict(x_ptr="*bf16", data_ptr=data, scale_ptr="*fp32"),
                     dict(FORMAT=fmt, BLOCK_T=16, BLOCK_D=128), {"enable_fp_fusion": False}))
variants.append(("quantize_int4", kq._quantize_int4_kernel,
                 dict(x_ptr="*bf16", data_ptr="*u8", scale_ptr="*fp16", zero_ptr="*fp16"),
                 dict(G=32, BLOCK_T=16, BLOCK_G=4), {"enable_fp_fusion": False}))

only = sys.argv[1] if len(sys.argv) > 1 else None
for name, fn, ptrs, consts, opts in variants:
    for arch in (80, 90):
        try:
            src = ASTSource(fn, signature(fn, ptrs, consts), constexprs=consts)
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
            ok, err, size = True, "", len(k.asm["cubin"])
        except Exception:
            ok, err, size = False, traceback.format_exc()[-3000:], 0
        print(json.dumps(dict(kernel=name, arch=arch, ok=ok, error=err, cubin_bytes=size)), flush=True)
"""


def _triton_has_compile_api():
    try:
        import inspect

        from triton.compiler import ASTSource
        return "constexprs" in inspect.signature(ASTSource.__init__).parameters
    except Exception:
        return False


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Start every nvcc job and the Triton job at once; collect their results."""
    out = tmp_path_factory.mktemp("gpu_compile")
    procs = {}
    nvcc = _nvcc()
    if nvcc is not None:
        for name in CU_SOURCES:
            obj = out / (name + ".o")
            procs[name] = (subprocess.Popen(_nvcc_cmd(nvcc, ROOT / "csrc" / "cuda" / name, obj), stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True), obj)
        for name in CPP_SOURCES:
            obj = out / (name + ".o")
            cmd = ["g++", "-std=c++17", "-O1", "-fPIC", "-c", str(ROOT / "csrc" / "cuda" / name), "-o", str(obj),
                   "-DRAPID_WITH_CUDA=1", "-w"] + _torch_flags()
            procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), obj)
        # A host TU that takes the address of each launcher as csrc/ops.h declares it: its undefined
        # symbols are the exact names the torch bindings will need from the .cu objects.
        decl = out / "decl.cpp"
        decl.write_text('#include "ops.h"\nvoid* rapid_cuda_launchers[] = {'
                        + ", ".join(f"(void*)&rapid::{f}" for f in OWN_LAUNCHERS) + "};\n")
        cmd = ["g++", "-std=c++17", "-c", str(decl), "-o", str(out / "decl.o"), "-DRAPID_WITH_CUDA=1",
               "-w"] + _torch_flags()
        procs["decl"] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                         out / "decl.o")
    triton_proc = None
    if _triton_has_compile_api():
        env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=str(ROOT))
        triton_proc = subprocess.Popen([sys.executable, "-c", _TRITON_SCRIPT], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    results = {}
    for name, (p, obj) in procs.items():
        text, _ = p.communicate(timeout=900)
        results[name] = (p.returncode, text, obj)
    triton_results = None
    if triton_proc is not None:
        stdout, stderr = triton_proc.communicate(timeout=900)
        triton_results = {(r["kernel"], r["arch"]): r for r in map(json.loads, stdout.splitlines())}
        if not triton_results:
            triton_results = {("<script>", 0): dict(ok=False, error=stderr[-3000:])}
    return {"nvcc": nvcc, "results": results, "triton": triton_results}


def test_cuda_sources_exist():
    assert {"kv_quant.cu", "verify_attention.cu"} <= set(CU_SOURCES)


@pytest.mark.parametrize("src", CU_SOURCES + CPP_SOURCES)
def test_cuda_source_compiles_for_sm80_and_sm90(builds, src):
    if builds["nvcc"] is None:
        pytest.skip("nvcc not found (PATH, /usr/local/bin, $CUDA_HOME/bin)")
    rc, text, obj = builds["results"][src]
    assert rc == 0, f"nvcc failed on {src}:\n{text[-4000:]}"
    assert obj.stat().st_size > 0


def _symbols(obj, *flags):
    out = subprocess.run(["nm", *flags, str(obj)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_launchers_define_what_ops_h_declares(builds):
    if builds["nvcc"] is None:
        pytest.skip("nvcc not found (PATH, /usr/local/bin, $CUDA_HOME/bin)")
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not found")
    rc, text, decl_obj = builds["results"]["decl"]
    assert rc == 0, f"g++ failed on the ops.h declarations:\n{text[-4000:]}"
    needed = {s for s in _symbols(decl_obj, "-u") if "rapid" in s and "_cuda" in s}
    assert len(needed) == len(OWN_LAUNCHERS), needed
    defined = set()
    for src in CU_SOURCES:
        rc, _, obj = builds["results"][src]
        assert rc == 0, f"{src} did not compile"
        defined |= _symbols(obj, "--defined-only")
    assert needed <= defined, f"declared in ops.h but not defined by csrc/cuda: {sorted(needed - defined)}"
    # the .cu launchers call the host-compiled checks (cuda_kv_checks.cpp): those must link too
    checks_needed = set()
    for src in CU_SOURCES:
        checks_needed |= {s for s in _symbols(builds["results"][src][2], "-u") if "cuda_checks" in s}
    for src in CPP_SOURCES:
        rc, _, obj = builds["results"][src]
        assert rc == 0, f"{src} did not compile"
        defined |= _symbols(obj, "--defined-only")
    assert checks_needed and checks_needed <= defined, sorted(checks_needed - defined)


def test_triton_kernels_compile_for_sm80_and_sm90(builds):
    if builds["triton"] is None:
        pytest.skip("triton without triton.compile(ASTSource(..., constexprs=...)) (needs Triton >= 3.2)")
    results = builds["triton"]
    failed = {k: r["error"] for k, r in results.items() if not r["ok"]}
    assert not failed, "\n\n".join(f"{k}:\n{e}" for k, e in failed.items())
    kernels = {k for k, _ in results}
    assert {k for k in kernels if k.startswith("verify_split")} == {f"verify_split[format={f}]" for f in range(6)}
    assert {arch for _, arch in results} == set(ARCHS)
    assert all(r["cubin_bytes"] > 0 for r in results.values())
