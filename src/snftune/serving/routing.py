"""Which task each sample of the batch being served belongs to, shared by every mixed module.

:class:`MultiTaskModel` routes a batch (``with routing.route(task_ids): ...``) around the
backbone's forward; each mixed module inside the backbone then reads the rows of its per-task
tables that belong to the samples it sees (:meth:`TaskRouting.gather`). The tables hold one
row per task, so a batch of any task mix costs one gather per table, not one call per task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["TaskRouting", "channel_view"]


class TaskRouting:
    """The task index of every sample in the batch now being served."""

    def __init__(self) -> None:
        self._ids: torch.Tensor | None = None
        self._present: frozenset[int] = frozenset()
        self._rows: dict[int, torch.Tensor] = {}

    @contextmanager
    def route(self, ids: torch.Tensor, present: frozenset[int]) -> Iterator[None]:
        """Routes the samples of one forward: ``ids`` (B,) on the model's device, ``present`` their set."""
        self._ids, self._present, self._rows = ids, present, {}
        try:
            yield
        finally:
            self._ids, self._present, self._rows = None, frozenset(), {}

    @property
    def present(self) -> frozenset[int]:
        return self._present

    def any_present(self, tasks: Iterable[int]) -> bool:
        """Whether a sample of the batch belongs to one of ``tasks`` (else a module may skip itself)."""
        return not self._present.isdisjoint(tasks)

    def rows(self, n: int) -> torch.Tensor:
        """The task of each of ``n`` rows: the samples themselves, or ``k`` rows per sample in
        sample order (Swin's attention sees a batch of windows, each sample's windows together)."""
        ids = self._ids
        if ids is None:
            raise RuntimeError(
                "a mixed-task module ran outside MultiTaskModel.forward(images, task_ids); call the "
                "MultiTaskModel, not its backbone"
            )
        batch = ids.shape[0]
        if n == batch:
            return ids
        if n % batch:
            raise RuntimeError(f"a mixed-task module saw {n} rows, not a multiple of the batch of {batch} samples")
        if n not in self._rows:
            self._rows[n] = ids.repeat_interleave(n // batch)
        return self._rows[n]

    def gather(self, table: torch.Tensor, n: int) -> torch.Tensor:
        """``table`` (one row per task) indexed by the task of each of ``n`` rows."""
        return table.index_select(0, self.rows(n))


def channel_view(rows: torch.Tensor, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per-sample channel vectors (N, C) shaped to broadcast against ``x`` (N, ..., C at ``channel_dim``, ...)."""
    dim = channel_dim % x.dim()
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = rows.shape[1]
    return rows.reshape(shape)
