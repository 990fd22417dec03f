"""StepTimer: the seconds a speculative round's parts take, without a host sync per part.

On the CPU a mark is the host clock. On a CUDA device the host runs ahead of the kernels once nothing reads
their results, so a host clock would time kernel launches; a mark is then a CUDA event recorded on the current
stream, and `seconds(a, b)` is read after the round's one device-to-host read, when every event has completed.
"""
from __future__ import annotations

import time

import torch


class StepTimer:
    def __init__(self, device, clock=time.perf_counter):
        self.cuda = torch.device(device).type == "cuda"
        self.clock = clock

    def mark(self):
        if not self.cuda:
            return self.clock()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, a, b) -> float:
        """Seconds from mark a to mark b (on CUDA: after a host read that followed b, so no wait here)."""
        if not self.cuda:
            return b - a
        b.synchronize()  # already complete after the round's read; a no-op wait that keeps misuse correct
        return a.elapsed_time(b) / 1e3
