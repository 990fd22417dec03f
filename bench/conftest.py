"""Shared pytest-benchmark plumbing for bench/.

Run: `pytest bench/bench_<op>.py` (or `pytest bench/` for all; bench_*.py files are collected here).

Fixtures:
  roofline  session-wide InterleavedRoofline (one probe buffer, bandwidth sampled between rounds)
  report    report(**figures): attaches figures to the benchmark's extra_info (when the test uses
            `benchmark`) and collects them; at the end of the session every bench file's rows are
            written to bench/results/<file>.json with the machine they came from.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
sys.path.insert(0, str(BENCH_DIR))  # `import roofline` from every bench file, whatever the import mode

import roofline as _roofline  # noqa: E402

_ROWS: dict = {}  # bench file stem -> [row, ...]


def pytest_collect_file(file_path, parent):
    # pyproject's python_files is test_*.py; benchmarks are bench_*.py. Paths named on the command line
    # are already collected by pytest itself, so only pick up the ones found by walking a folder.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def roofline():
    """One InterleavedRoofline for the session (on the GPU when there is one, else the CPU)."""
    return _roofline.InterleavedRoofline(device=_device())


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def report(request):
    """report(**figures) -> record this test's figures (ratios, GB/s, fractions) in results JSON."""
    benchmark = request.getfixturevalue("benchmark") if "benchmark" in request.fixturenames else None

    def _report(**figures):
        if benchmark is not None:
            benchmark.extra_info.update(figures)
            stats = getattr(benchmark, "stats", None)
            if stats is not None:
                figures = {"median_s": stats.stats.median, **figures}
        row = {"test": request.node.name, **figures}
        # RAPID_BENCH_TAG=x writes <bench>_x.json: a variant run (another model or dtype) keeps the default's file
        tag = os.environ.get("RAPID_BENCH_TAG")
        stem = Path(str(request.node.fspath)).stem + (f"_{tag}" if tag else "")
        _ROWS.setdefault(stem, []).append(row)
        return row

    return _report


def pytest_sessionfinish(session, exitstatus):
    if not _ROWS:
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    machine = _roofline.machine_info(_device())
    for stem, rows in _ROWS.items():
        payload = {"bench": stem, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine, "rows": rows}
        fd, tmp = tempfile.mkstemp(dir=RESULTS_DIR, prefix=f".{stem}.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=float)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, RESULTS_DIR / f"{stem}.json")  # a crashed run never leaves half a file
