"""Reading back what a finished run wrote: ``metrics.json``, checked against its shape.

Tables, selections, ``--status`` and reruns all decide from these files; one that was cut short
(a full disk, a copy interrupted) or edited must be one line naming it and how to recover, not a
``KeyError`` in the middle of a table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..inputs import read_json_record
from .trainer import METRICS_NAME

__all__ = ["METRICS_SCHEMA", "Metrics", "read_metrics"]

METRICS_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "top1": (int, float, type(None)),
    "reported": str,
    "eval_split": str,
}
"""The keys every ``metrics.json`` has, with their types (``top1`` is null for a run evaluated never)."""

Metrics = dict[str, Any]
"""A run's ``metrics.json`` as plain data: the keys of :data:`METRICS_SCHEMA`, the headline's
details (``final``, ``best``, ``reported_as``), ``timing``, ``tuned_parameters`` and the
``settings`` it ran with. What a run, a plan and a bench cell return."""


def read_metrics(path: str | os.PathLike) -> Metrics:
    """A run's ``metrics.json`` (``path``: the file, or the run folder holding it), its shape checked."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    return read_json_record(
        path,
        METRICS_SCHEMA,
        recover=f"delete the run folder {path.parent} (or move it aside) and run it again",
    )
