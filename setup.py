"""Build rapid_engine and its compiled extension `rapid_engine._C`.

Environment switches:
  RAPID_BUILD_EXT=0    pure-Python install; every op runs on the torch reference.
  RAPID_BUILD_CUDA=0/1 force the CUDA sources off/on (default: on when torch has CUDA and nvcc exists).
  RAPID_CUDA_ARCHS     e.g. "80;90" (default) -> -gencode for each.
CPU code picks AVX-512 / AVX2 / scalar at run time (function target attributes + cpuid),
so the binary runs on any x86-64; no -march=native.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name, default=None):
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v.strip().lower() not in ("0", "false", "no", "off")


def _ext_modules():
    if not _env_flag("RAPID_BUILD_EXT", True):
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp")) + ["csrc/torch_bindings.cpp"]
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unused-function"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    nvcc_found = shutil.which("nvcc") is not None or os.path.exists(
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    build_cuda = _env_flag("RAPID_BUILD_CUDA", None)
    if build_cuda is None:
        build_cuda = torch.version.cuda is not None and nvcc_found
    if build_cuda and torch.version.cuda is None:
        sys.exit("RAPID_BUILD_CUDA=1 but this torch has no CUDA support (torch.version.cuda is None)")
    macros = []
    if build_cuda:
        archs = os.environ.get("RAPID_CUDA_ARCHS", "80;90").split(";")
        nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        for a in archs:
            nvcc_flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        macros.append(("RAPID_WITH_CUDA", "1"))
        ext = cpp_extension.CUDAExtension(
            "rapid_engine._C",
            cpu_sources + sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx_flags + ["-DRAPID_WITH_CUDA=1"], "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "rapid_engine._C",
            cpu_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _ext_modules()

setup(
    packages=find_packages(include=["rapid_engine", "rapid_engine.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
