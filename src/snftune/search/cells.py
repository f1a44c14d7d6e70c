"""Cells of a benchmark grid, NOAH's included: a cell whose method is ``noah`` without sizes
(no ``subnet`` file, no ``prompt``/``lora``/``adapter``) runs NOAH's pipeline in its folder;
every other cell runs :mod:`snftune.selection`'s selection and final runs. The bench runner
calls these four functions and needs to know nothing else about NOAH.

A NOAH cell's method options hold NOAH's settings (``param_limit``, ``population``, ...,
``sizes``, ``depths``, ``supernet: {...}``, ``retrain: {...}``; see :class:`NoahSettings`);
its retrained subnet is the cell's final run, so tables read it like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import selection
from ..engine import DistInfo
from ..selection import CellPlan, SearchSpace
from .noah import NoahPlan, noah_differences, noah_state, plan_noah, run_noah

__all__ = ["cell_differences", "cell_state", "is_noah_search", "plan_cell", "run_cell"]

SIZE_OPTIONS = ("subnet", "prompt", "lora", "adapter")


def is_noah_search(values: dict[str, Any]) -> bool:
    """Method ``noah`` with nothing that fixes its sizes: the sizes are to be searched."""
    options = values.get("method_options") or {}
    return values.get("method") == "noah" and not any(key in options for key in SIZE_OPTIONS)


def plan_cell(values: dict[str, Any], space: SearchSpace | None, seeds: tuple[int, ...] | None) -> CellPlan:
    """The cell's plan: NOAH's pipeline (checked now, before anything trains), or selection + final runs."""
    if is_noah_search(values):
        return plan_noah(values, seeds, space)
    return CellPlan(values, space, seeds)


def cell_state(folder: Path, plan: CellPlan) -> str:
    return noah_state(folder, plan) if isinstance(plan, NoahPlan) else selection.cell_state(folder, plan)


def cell_differences(folder: Path, plan: CellPlan) -> list[str]:
    return noah_differences(folder, plan) if isinstance(plan, NoahPlan) else selection.cell_differences(folder, plan)


def run_cell(
    plan: CellPlan, folder: Path, dist: DistInfo | None = None, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    if isinstance(plan, NoahPlan):
        return run_noah(plan, folder, dist, log)
    return selection.run_cell(plan, folder, dist, log)
