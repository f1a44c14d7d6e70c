"""Which task each sample of the batch being served belongs to, shared by every mixed module.

:class:`MultiTaskModel` routes a batch (``with routing.route(task_ids, device): ...``) around
the backbone's forward; each mixed module inside the backbone then asks for the rows it has
work on (:meth:`TaskRouting.select`: the samples of the tasks that put a module there) and
gathers those rows' entries of its per-task tables. A batch of any task mix thus costs one
gather per table, not one call per task, and a module that serves one task of eight works
on that task's samples only.
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
        self._task_sets: set[frozenset[int]] = set()
        self._members: dict[frozenset[int], torch.Tensor | None] = {}
        self._expanded: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}

    def register(self, tasks: frozenset[int]) -> frozenset[int]:
        """Declares a set of tasks a module will :meth:`select`, so that its rows are found on
        the host before the backbone runs (no device sync in the middle of a forward)."""
        self._task_sets.add(frozenset(tasks))
        return frozenset(tasks)

    @contextmanager
    def route(self, ids: torch.Tensor, device: torch.device) -> Iterator[None]:
        """Routes the samples of one forward: ``ids`` (B,) task indices on the host."""
        ids = ids.to("cpu", torch.long)
        self._present = frozenset(ids.tolist())
        members = {}
        for tasks in self._task_sets:
            inside = torch.isin(ids, torch.tensor(sorted(tasks), dtype=torch.long))
            members[tasks] = None if bool(inside.all()) else inside.nonzero().flatten().to(device)
        self._ids, self._members, self._expanded = ids.to(device), members, {}
        try:
            yield
        finally:
            self._ids, self._present, self._members, self._expanded = None, frozenset(), {}, {}

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
        key = ("all", n)
        if key not in self._expanded:
            self._expanded[key] = (None, ids.repeat_interleave(n // batch))
        return self._expanded[key][1]

    def gather(self, table: torch.Tensor, n: int) -> torch.Tensor:
        """``table`` (one row per task) indexed by the task of each of ``n`` rows."""
        return table.index_select(0, self.rows(n))

    def select(self, tasks: frozenset[int], n: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(rows, their tasks)``: which of ``n`` rows belong to one of ``tasks`` (registered),
        and the task of each; ``rows`` is None when every row does."""
        all_ids = self.rows(n)
        members = self._members[tasks]
        if members is None:
            return None, all_ids
        key = (tasks, n)
        if key not in self._expanded:
            per_sample = n // self._ids.shape[0]
            if per_sample > 1:
                offsets = torch.arange(per_sample, device=members.device)
                members = (members[:, None] * per_sample + offsets).flatten()
            self._expanded[key] = (members, all_ids.index_select(0, members))
        return self._expanded[key]


def channel_view(rows: torch.Tensor, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per-sample channel vectors (N, C) shaped to broadcast against ``x`` (N, ..., C at ``channel_dim``, ...)."""
    dim = channel_dim % x.dim()
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = rows.shape[1]
    return rows.reshape(shape)
