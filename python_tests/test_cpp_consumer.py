"""The C++ consumer in cpp_tests/, built and run the way an embedding engine would use the kernels.

CMake builds rapid::rapid_kernels from the repository against this torch's libtorch, links
cpp_tests/test_verify_attention.cpp (CPU launchers called directly and by name through the torch
dispatcher, no Python), and ctest runs it on every CPU path: the best this CPU has, AVX2 and scalar.
About two minutes on two cores: the library is compiled a second time, outside setup.py.
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, what):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None, reason="needs cmake and ctest")
def test_cpp_consumer_builds_and_passes(tmp_path):
    build = tmp_path / "build-cpp"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", ROOT / "cpp_tests", "-B", build, *generator,
          f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], "cmake configure")
    _run(["cmake", "--build", build, "--parallel"], "cmake build")
    out = _run(["ctest", "--test-dir", build, "--output-on-failure"], "ctest")
    assert "100% tests passed, 0 tests failed out of 4" in out, out[-4000:]
