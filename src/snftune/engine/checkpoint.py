"""Resumable checkpoints: tuned tensors, optimiser, schedule, RNG states and the position
in the data, written atomically so a kill at any moment leaves the previous file intact."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write

__all__ = ["CHECKPOINT_NAME", "atomic_torch_save", "load_checkpoint", "rng_states", "restore_rng_states"]

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then ``os.replace``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    # weights_only=False: the file holds RNG states (numpy tuples) and plain-data settings.
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def rng_states() -> dict[str, Any]:
    """Every global random generator's state: python, numpy, torch CPU and CUDA."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
