"""Resumable checkpoints: tuned tensors, optimiser, schedule, RNG states and the position
in the data, written atomically so a kill at any moment leaves the previous file intact.

A checkpoint holds only tensors and plain data (numbers, strings, lists, tuples, dicts), so it
loads with ``torch.load(weights_only=True)``: a run folder is often shared or downloaded, and
loading one must never run code. A file that needs pickle is refused."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import SnftuneError

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "atomic_torch_save",
    "check_checkpoint",
    "load_checkpoint",
    "rng_states",
    "restore_rng_states",
]

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then ``os.replace``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), io_errors=(RuntimeError,))


class CheckpointError(SnftuneError, ValueError):
    """A checkpoint file that cannot be read safely (damaged, or not written by snftune)."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's contents, loaded without unpickling code (``weights_only=True``)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise CheckpointError(
            f"{path} cannot be loaded safely ({type(error).__name__}: {str(error).splitlines()[0][:200]}); it is "
            "damaged, was written by an older snftune, or holds objects that need pickle. Delete it to start the "
            "run again, or use another --out"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an snftune checkpoint (a {type(state).__name__}, not a dict)")
    return state


_SECTIONS: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "position": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "data_order": dict,
    "progress": dict,
    "config": dict,
}
_RECOVER = "delete it to start the run again, or use another --out"


def check_checkpoint(state: dict[str, Any], path: str | os.PathLike, tuned: dict[str, torch.Tensor]) -> None:
    """Refuses, before anything is loaded, a checkpoint whose sections are missing or of another
    shape, or whose tensors are not exactly ``tuned`` (the model's tuned tensors, by name and shape):
    a checkpoint of another method or model would otherwise fail half-way through loading."""
    for key, kind in _SECTIONS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            found = "missing" if key not in state else f"a {type(state[key]).__name__}"
            raise CheckpointError(f"{path} is not a whole snftune checkpoint ('{key}' is {found}); {_RECOVER}")
    position = state["position"]
    if not all(isinstance(position.get(k), int) and position[k] >= 0 for k in ("epoch", "step")):
        raise CheckpointError(f"{path} is damaged (position {position!r}); {_RECOVER}")
    saved = state["model"]
    missing, unexpected = sorted(set(tuned) - set(saved)), sorted(set(saved) - set(tuned))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} belongs to another method or model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"{_RECOVER}"
        )
    for name, tensor in tuned.items():
        if not isinstance(saved[name], torch.Tensor) or saved[name].shape != tensor.shape:
            found = tuple(saved[name].shape) if isinstance(saved[name], torch.Tensor) else type(saved[name]).__name__
            raise CheckpointError(
                f"{path} belongs to another model: '{name}' is {found}, this model's is {tuple(tensor.shape)}; "
                f"{_RECOVER}"
            )


def rng_states() -> dict[str, Any]:
    """Every global random generator's state as tensors and plain data: python, numpy, torch CPU and CUDA."""
    key, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "key": key,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["key"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
