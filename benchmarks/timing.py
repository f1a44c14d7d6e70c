"""The clock the benchmarks share: on a GPU wall time between synchronisations, on the CPU the
process's CPU time (steadier when other jobs share the machine) unless wall time is asked for."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any


def timer(device: Any, clock: str = "cpu") -> Callable[[Callable[[], object]], float]:
    """``timed(fn)`` -> seconds ``fn()`` took on ``device`` (a ``torch.device``) by that clock.
    torch is imported here, not at the top: snf_cost measures memory in processes that start bare."""
    import torch

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


def add_clock_option(parser: argparse.ArgumentParser) -> None:
    """``--clock cpu|wall``, read by :func:`timer`."""
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="on the CPU, time by the process's CPU time (steadier under other load) or by wall time",
    )
