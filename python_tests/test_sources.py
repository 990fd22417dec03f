"""Source rules the compiler cannot enforce."""
import re
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def test_launcher_checks_never_stream_numbers():
    # Every launcher check goes through RAPID_CHECK / RAPID_CHECK_VALUE (csrc/include/rapid/check.h), whose
    # message is built without iostream number formatting: on the H200 image a failing TORCH_CHECK that streamed
    # an integer crashed the process instead of raising (bench/results/gpu_h200/cuda_bad_input_crash.log).
    offenders = []
    for path in sorted(CSRC.rglob("*")):
        if path.suffix not in {".h", ".cpp", ".cu", ".cuh", ".inc"} or path.name == "check.h":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bTORCH_CHECK\w*\s*\(", line):
                offenders.append(f"{path.relative_to(CSRC)}:{no}: {line.strip()}")
    assert not offenders, "use RAPID_CHECK / RAPID_CHECK_VALUE instead of:\n" + "\n".join(offenders)
