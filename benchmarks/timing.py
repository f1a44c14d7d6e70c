"""The clock the benchmarks share: on a GPU wall time between synchronisations, on the CPU the
process's CPU time (steadier when other jobs share the machine) unless wall time is asked for."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timer(device: torch.device, clock: str = "cpu") -> Callable[[Callable[[], object]], float]:
    """``timed(fn)`` -> seconds ``fn()`` took on ``device`` by that clock."""
    read = time.perf_counter if device.type == "cuda" or clock == "wall" else time.process_time

    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = read()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return read() - start

    return timed
