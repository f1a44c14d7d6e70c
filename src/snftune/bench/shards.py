"""Slices of a grid, for SLURM job arrays or several machines sharing one ``--out`` folder.

``snftune bench --shard K/N`` runs the K-th of N disjoint slices of the cells; the N slices
together hold every cell exactly once. A slice depends on the suite (and the selection options)
alone, so every shard computes the same partition without talking to the others: run each
shard with the same command but ``--shard``. A cell evaluated with another cell's weights
(``train_from``) goes to its source cell's shard, so that no shard waits for another.

Cells are dealt round robin in the suite's order, (model, method) rows times tasks, which
spreads the methods and tasks, and with them the cost, over the shards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..runs import SettingsError
from .runner import PlannedCell
from .suites import Suite

__all__ = ["Shard", "shard_cells"]


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (1-based) of ``count`` slices."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """From ``"K/N"``, e.g. ``"3/8"`` (SLURM: ``--shard $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT``)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise SettingsError(f"--shard takes K/N (the K-th of N slices, e.g. 2/8), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 1 <= index <= count:
            raise SettingsError(f"--shard {text}: K must be between 1 and N (N >= 1), e.g. 1/{max(count, 2)}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_cells(suite: Suite, plan: list[PlannedCell], shard: Shard) -> list[PlannedCell]:
    """The cells of ``plan`` that belong to ``shard``, in the plan's order."""
    units: dict[tuple[str, str], int] = {}  # (row, task) of a source cell -> its position among the units

    def unit(planned: PlannedCell) -> int:
        cell = suite.source_cell(planned.cell) if planned.cell.task.train_from else planned.cell
        return units.setdefault((cell.row, cell.task.data), len(units))

    return [planned for planned in plan if unit(planned) % shard.count == shard.index - 1]
