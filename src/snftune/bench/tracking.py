"""What a benchmark folder records about each cell besides its runs: who is running it, and
how long it took where.

A cell is several runs (selection trials, one final run per seed) plus a check of what is
already done. Each run has its own lock (:func:`snftune.engine.run_lock`), but that is not
enough when several processes share one ``--out`` (SLURM shards, a Ray job beside a serial
rerun): a second process could find a run "to do", and by the time it takes the run's lock
the first one has finished it. So whoever runs a cell holds ``<cell>/.cell.lock`` for the whole
cell, and decides what is left only once it holds it; a live cell lock is also what
``snftune bench --status`` counts as *running*.

``<cell>/cell.json`` records the last execution of the cell: its outcome, wall time, device,
host and executor, for ``--status`` (the slowest cells) and for planning the next grid.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json
from ..engine import lock_holder, run_lock
from ..inputs import DamagedFileError, read_json_record

__all__ = [
    "CELL_LOCK_NAME",
    "CELL_RECORD_NAME",
    "cell_holder",
    "cell_lock",
    "cell_record",
    "device_description",
    "read_cell_record",
    "write_cell_record",
]

CELL_LOCK_NAME = ".cell.lock"
CELL_RECORD_NAME = "cell.json"


def cell_lock(folder: Path) -> AbstractContextManager[Path]:
    """Holds the cell's lock for the duration; raises ``RunLockedError`` (naming the holder)
    when a live process holds it. A dead holder's lock (same host, pid gone) is taken over."""
    return run_lock(folder, CELL_LOCK_NAME)


def cell_holder(folder: Path) -> dict[str, Any] | None:
    """``{"pid", "host", "since"}`` of the live process running the cell, or None."""
    return lock_holder(folder, CELL_LOCK_NAME)


def device_description(device: torch.device) -> str:
    """``cpu (8 threads)``, ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'s' if threads > 1 else ''})"


def cell_record(
    outcome: str, started: float, wall_s: float, device: torch.device, executor: str, resumed: bool
) -> dict[str, Any]:
    """The ``cell.json`` record of one execution of a cell (``started``: a ``time.time()``)."""
    return {
        "outcome": outcome,
        "wall_s": round(wall_s, 3),
        "device": device_description(device),
        "executor": executor,
        "resumed": resumed,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started + wall_s)),
    }


def write_cell_record(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_json(folder / CELL_RECORD_NAME, record)


CELL_RECORD_SCHEMA: dict[str, type | tuple[type, ...]] = {"outcome": str, "wall_s": (int, float)}


def read_cell_record(folder: Path) -> dict[str, Any] | None:
    """The cell's ``cell.json``, or None when it has none (never run, or run before it existed).

    The record only informs (wall times for ``--status``): a damaged one costs one warning naming
    it and counts as absent; the cell's next execution writes it again."""
    path = folder / CELL_RECORD_NAME
    if not path.is_file():
        return None
    try:
        return read_json_record(path, CELL_RECORD_SCHEMA, recover="ignored, the cell's next run writes it again")
    except (DamagedFileError, OSError) as error:
        warnings.warn(str(error), stacklevel=2)
        return None
