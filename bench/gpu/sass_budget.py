"""Offline issue budget of the verify_attention GPU kernels: SASS of their key loops, no GPU needed.

triton: compiles `_verify_split_kernel` for sm_80/sm_90 with the specialization the JIT gives a real
launch (16-byte aligned pointers, integer arguments that are multiples of 16 marked so: without those
hints the offline code uses scalar loads and says nothing about the real kernel).
cuda: compiles csrc/cuda/verify_attention.cu to an sm_90 cubin with nvcc (~35 s) and reads the staged
(default) and direct tensor-core kernels for bf16 queries, D = 128.
Both: disassembles with Triton's bundled nvdisasm and reports each kernel's main loop: instructions per
iteration, their mix, and the K/V bytes that iteration reads.

Napkin math: an SM issues at most one warp-instruction per scheduler (4) per clock.
  Triton: all num_warps warps of a CTA run the loop (N instructions each) for one BLOCK_N-key tile, so the
    SM is fed at most bytes * 4 / (num_warps * N) bytes per clock, however many CTAs share it.
  CUDA direct: each warp streams its own 16-key steps; with >= 4 warps resident, 4 * bytes / N.
  CUDA staged: all warps load a 64-key step into shared memory, then only the warps that own query rows
    run Q.K / softmax / P.V -- at one query (<= 16 rows per KV head) warp 0 alone, N instructions per step
    on one scheduler: bytes / N per CTA; reported for the launcher's 2 CTAs per SM, 2 * bytes / N.
  (The quarters variant of the staged kernel is not reported: nvcc lays its key loop out so that the
    largest backward branch's body is not the key loop.) The card's copy bandwidth per SM per clock is the bar (H200: 4.2 TB/s measured /
132 SMs / 1.98 GHz = 16 B/clk; H100 SXM ~3.0 TB/s / 132 / 1.98 = 11.5): a format whose issue bound sits near
or below it cannot reach the copy bandwidth, whatever the tuning. It is an upper bound (latency, shared-
memory and tensor-core stalls come on top), for comparing kernel variants between GPU sessions.

    python bench/gpu/sass_budget.py triton                  # bf16 / int8 / int4 / fp8, Llama heads, sm_90
    python bench/gpu/sass_budget.py triton --formats int8 --arch 80 --config 64,8,3
    python bench/gpu/sass_budget.py cuda
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rapid_engine.triton.kv_quant import FORMAT_CODE as FORMATS  # noqa: E402  (csrc's KvFormat uses the same codes)

_KV_PTR = {0: "*fp32", 1: "*bf16", 2: "*fp16", 3: "*i8", 4: "*u8", 5: "*u8"}
_SCALE_PTR = {3: "*fp32", 4: "*fp16", 5: "*fp32"}


def _bytes_per_iteration(fmt: int, block_n: int, d: int) -> int:
    """K and V bytes one iteration reads: the tile's codes plus its scales (and int4 zeros)."""
    per_row = {0: 4 * d, 1: 2 * d, 2: 2 * d, 3: d + 4, 4: d // 2 + 2 * 2 * (d // 32), 5: d + 4}[fmt]
    return 2 * block_n * per_row


def compile_split_kernel(fmt: int, *, arch: int = 90, block_n: int = 64, num_warps: int = 4, num_stages: int = 3,
                         q_heads: int = 32, kv_heads: int = 8, d: int = 128, s_max: int = 32768) -> bytes:
    """cubin of the decode-path split kernel for one query, bf16 q, the given heads and S_max."""
    import triton
    from triton.backends.compiler import GPUTarget
    import torch
    from triton.compiler import ASTSource

    from rapid_engine.triton import verify_attention as va

    fn = va._verify_split_kernel
    group = q_heads // kv_heads
    split = va.choose_split_size(s_max, 1, kv_heads, 1, torch.device("cpu"))
    row = d // 2 if fmt == 4 else d  # storage elements per token
    srow = d // 32 if fmt == 4 else 1  # scale elements per token
    ints = dict(S_MAX=s_max, NQ=1, GROUP=group, KVH=kv_heads, R=group, SPLIT=split, NSPLIT=-(-s_max // split), D=d,
                sqb=q_heads * d, sqn=q_heads * d, sqh=d, skb=kv_heads * s_max * row, skh=s_max * row, sks=row,
                svb=kv_heads * s_max * row, svh=s_max * row, svs=row, sksb=kv_heads * s_max * srow,
                sksh=s_max * srow, skss=srow, svsb=kv_heads * s_max * srow, svsh=s_max * srow, svss=srow)
    sc = _SCALE_PTR.get(fmt, _KV_PTR[fmt])
    ptrs = dict(q_ptr="*bf16", k_ptr=_KV_PTR[fmt], v_ptr=_KV_PTR[fmt], ks_ptr=sc, vs_ptr=sc, kz_ptr=sc, vz_ptr=sc,
                seqlens_ptr="*i32", po_ptr="*fp32", plse_ptr="*fp32")
    consts = dict(FORMAT=fmt, G=32, BLOCK_R=16, BLOCK_N=block_n, BLOCK_D=d, DOT_FP32=False, EVEN_D=True,
                  ROW_SCALED=fmt in (3, 5), FOLD_V=fmt in (3, 5))
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        sig[name] = "constexpr" if name in consts else ptrs.get(name, "fp32" if name == "qk_scale" else "i32")
        if name in ptrs or (name in ints and ints[name] % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]  # what the JIT's specialization marks on a real launch
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps,
                                                                          "num_stages": num_stages})
    return k.asm["cubin"]


def _nvdisasm() -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not path.exists():
        raise FileNotFoundError(f"nvdisasm not found at {path} (Triton's NVIDIA backend ships it)")
    return str(path)


def main_loop(cubin: bytes) -> list:
    """Opcodes of the largest loop (a backward branch's body) of the cubin's SASS."""
    return _loop_opcodes(_sass(cubin))


def _loop_opcodes(sass: str) -> list:
    ins, labels, pending = [], {}, []
    for line in sass.splitlines():
        m = re.match(r"\s*\.L_x_(\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?);", line)
        if m:
            addr = int(m.group(1), 16)
            ins.append((addr, m.group(2).strip()))
            for lab in pending:
                labels[lab] = addr
            pending = []
    best = []
    for addr, text in ins:
        m = re.search(r"\bBRA\b.*\.L_x_(\d+)", text)
        if m and labels.get(m.group(1), addr + 1) <= addr:
            body = [t for a, t in ins if labels[m.group(1)] <= a <= addr]
            best = max(best, body, key=len)
    return [re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in best]


def report(fmt_name: str, *, arch: int, config: tuple, d: int = 128) -> dict:
    block_n, num_warps, num_stages = config
    fmt = FORMATS[fmt_name]
    loop = main_loop(compile_split_kernel(fmt, arch=arch, block_n=block_n, num_warps=num_warps,
                                          num_stages=num_stages, d=d))
    if not loop:
        raise RuntimeError(f"{fmt_name}: no loop found in the SASS")
    mix = collections.Counter(op.split(".")[0] for op in loop)
    nbytes = _bytes_per_iteration(fmt, block_n, d)
    return dict(format=fmt_name, arch=arch, config=config, instructions=len(loop), bytes=nbytes,
                issue_bytes_per_clk=nbytes * 4 / (num_warps * len(loop)), mix=mix,
                async_loads=sum(1 for op in loop if op.startswith("LDGSTS")))


_ROOT = Path(__file__).resolve().parents[2]


def _sass(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "k.cubin")
        Path(f).write_bytes(cubin)
        return subprocess.run([_nvdisasm(), "-c", f], capture_output=True, text=True, check=True).stdout


def cuda_cubin() -> bytes:
    """csrc/cuda/verify_attention.cu for sm_90, with the flags setup.py's CUDA build uses."""
    import sysconfig

    import torch
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    incs = include_paths() + [sysconfig.get_paths()["include"], str(_ROOT / "csrc"), str(_ROOT / "csrc" / "include")]
    flags = [f"-I{p}" for p in incs] + [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    if not (Path(include_paths()[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")  # CPU wheel: header generated only in CUDA builds
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "va.cubin")
        cmd = [nvcc, "-cubin", str(_ROOT / "csrc" / "cuda" / "verify_attention.cu"), "-o", out, "-std=c++17", "-O3",
               "--use_fast_math", "--expt-relaxed-constexpr", "-DRAPID_WITH_CUDA=1", "-w", "-arch=sm_90",
               *COMMON_NVCC_FLAGS, *flags]
        subprocess.run(cmd, capture_output=True, text=True, check=True)
        return Path(out).read_bytes()


def cuda_reports(formats) -> list:
    """Main-loop budget of verify_staged_kernel / verify_mma_kernel<format, 128, bf16>."""
    sass = _sass(cuda_cubin())
    parts = re.split(r"\n\s*\.section\s+\.text\.([A-Za-z0-9_]+)[^\n]*\n", sass)
    names = [parts[i] for i in range(1, len(parts) - 1, 2)]
    pretty = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    out = []
    for i, (name, dn) in enumerate(zip(names, pretty)):
        m = re.search(r"verify_(staged|mma)_kernel<\(rapid::cuda::KvFormat\)(\d), 128, __nv_bfloat16"
                      r"(?:, \w+, (\d), (\d))?>", dn)
        if not m:
            continue
        fmt = int(m.group(2))
        fmt_name = next((k for k, v in FORMATS.items() if v == fmt), str(fmt))
        if fmt_name not in formats:
            continue
        # staged<..., warps per row tile, row tiles per block>: (1, 4) = the launcher's staged kernel
        kernel = {None: "direct", ("1", "4"): "staged"}.get(m.group(3) and (m.group(3), m.group(4)), "skip")
        if kernel == "skip":
            continue
        loop = _loop_opcodes(parts[2 * i + 2])
        keys, streams = (64, 2) if kernel == "staged" else (16, 4)  # independent instruction streams per SM (see above)
        nbytes = _bytes_per_iteration(fmt, keys, 128)
        out.append(dict(kernel=kernel, format=fmt_name, keys=keys,
                        instructions=len(loop), bytes=nbytes, issue_bytes_per_clk=streams * nbytes / len(loop),
                        mix=collections.Counter(op.split(".")[0] for op in loop)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backend", choices=["triton", "cuda"])
    ap.add_argument("--formats", nargs="+", default=["bf16", "int8", "int4", "fp8"], choices=list(FORMATS))
    ap.add_argument("--arch", type=int, default=90, choices=[80, 90])
    ap.add_argument("--config", default=None, help="BLOCK_N,num_warps,num_stages (default: decode_config)")
    ap.add_argument("--json", action="store_true", help="one JSON object per format instead of text")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # @triton.jit reads it at import: interpreted kernels
        sys.exit("sass_budget: run with TRITON_INTERPRET unset or 0 (the kernels must compile, not interpret)")
    from rapid_engine.triton.verify_attention import decode_config
    if args.backend == "cuda":
        header = ("CUDA tensor-core kernels, D 128, bf16 q, sm_90 (staged: the row warp's loop per 64-key step, 2 CTAs "
                  "per SM; direct: a warp's loop per 16-key step, 4 schedulers)")
        rows = sorted(cuda_reports(args.formats), key=lambda r: (FORMATS[r["format"]], r["kernel"] != "staged"))
    else:
        header = f"Triton split kernel, Llama-8B heads (32 q / 8 kv, D 128), one query, bf16 q, sm_{args.arch}"
        rows = []
        for name in args.formats:
            cfg = tuple(int(x) for x in args.config.split(",")) if args.config else decode_config(name, 128)
            rows.append(report(name, arch=args.arch, config=cfg))
    if not args.json:
        print(header)
    for r in rows:
        if args.json:
            print(json.dumps({**r, "mix": dict(r["mix"])}), flush=True)
            continue
        what = f"{r['kernel']:6s} {r['format']:5s}" if "kernel" in r else f"{r['format']:5s} {r['config']}"
        per = f"{r['keys']}-key iteration" if "keys" in r else "iteration"
        top = ", ".join(f"{op} {n}" for op, n in r["mix"].most_common(8))
        if "async_loads" in r:
            top = f"cp.async {r['async_loads']}; {top}"
        print(f"{what}: {r['instructions']} instr / {r['bytes']} B per {per} -> issue bound "
              f"{r['issue_bytes_per_clk']:.1f} B/clk/SM; {top}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
