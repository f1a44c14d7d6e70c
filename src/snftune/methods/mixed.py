"""The mixed-batch protocol: how a method's modules serve many tasks in one batch.

``snftune.MultiTaskModel`` keeps one frozen backbone for many tuned tasks, each sample of a
batch with its own task. It knows no method: it loads each task's tuned file into a copy of
the backbone, asks the task's method for the modules that hold its tuned tensors (its *parts*,
by path), and hands every kind of part, with each task's instances, to that kind's
:meth:`MixedForm.install_mixed`, which puts a per-sample form of them into the shared backbone.
During a forward, :class:`TaskRouting` says which task each row of a tensor belongs to.

This is HF PEFT's ``_mixed_batch_forward`` shape (rows routed by a per-sample task index,
each task's tensors applied to its rows), with the tasks' tensors stacked into one table row
per task and gathered per row, so that a batch of any task mix costs a few kernels, not one
call per task. A mixed module computes its base's output (the frozen layer, an empty slot, or
another kind's mixed module at the same place), then changes the rows of its own tasks only:
rows of other tasks pass through exactly, so kinds of different tasks nest at one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "MixedForm",
    "MixedModule",
    "Placed",
    "TaskRouting",
    "channel_view",
    "frozen_layer",
    "mixed_parts",
    "replace_each",
    "shared_setting",
]

Placed = Mapping[str, Mapping[int, nn.Module]]
"""{path of a part in the model: {task index: that task's instance of the part there}}."""


class TaskRouting:
    """The task index of every sample in the batch now being served, shared by every mixed module.

    ``MultiTaskModel`` routes a batch (``with routing.route(task_ids, device): ...``) around the
    backbone's forward; each mixed module then asks for the rows it has work on
    (:meth:`select`: the samples of the tasks that put a module there) and gathers those rows'
    entries of its per-task tables. A module that serves one task of eight works on that task's
    samples only.
    """

    def __init__(self) -> None:
        self._ids: torch.Tensor | None = None
        self._present: frozenset[int] = frozenset()
        self._task_sets: set[frozenset[int]] = set()
        self._members: dict[frozenset[int], torch.Tensor | None] = {}
        self._expanded: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}

    def register(self, tasks: Iterable[int]) -> frozenset[int]:
        """Declares a set of tasks a module will :meth:`select`, so that its rows are found on
        the host before the backbone runs (no device sync in the middle of a forward)."""
        tasks = frozenset(tasks)
        self._task_sets.add(tasks)
        return tasks

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


class MixedModule(nn.Module):
    """Base of a mixed module: what it wraps (``base_layer``: the frozen layer, the slot's previous
    content, or another kind's mixed module; the empty slot by default), the routing, and the
    tasks it serves (registered with the routing). Its per-task tables are non-persistent
    buffers (:meth:`add_tables`): they move with ``MultiTaskModel.to(device)`` and are not state."""

    def __init__(self, tasks: Iterable[int], routing: TaskRouting, base: nn.Module | None = None) -> None:
        super().__init__()
        self.base_layer = base if base is not None else nn.Identity()
        self.routing = routing
        self.tasks = routing.register(tasks)

    def add_tables(self, **tables: torch.Tensor) -> None:
        for name, table in tables.items():
            self.register_buffer(name, table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base_layer(x)``, then :meth:`own` on the rows of this module's tasks (the others pass as they are)."""
        x = self.base_layer(x)
        if not self.routing.any_present(self.tasks):
            return x
        rows, ids = self.routing.select(self.tasks, x.shape[0])
        if rows is None:
            return self.own(x, ids)
        return x.index_copy(0, rows, self.own(x.index_select(0, rows), ids))

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Row ``i`` of ``x`` as task ``ids[i]``'s own module makes it (for a mixed module that maps
        its base's output; one that also needs the base's input, as LoRA, overrides :meth:`forward`)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither own() nor forward()")


@runtime_checkable
class MixedForm(Protocol):
    """A module a method puts into a model (a slot module, a wrapper of a frozen layer, prompt
    tokens, ...) whose tuned tensors have a per-sample form.

    ``install_mixed`` is a classmethod, called once per kind (class) with every task's instances:
    it puts into the shared ``model`` (the untuned backbone, residual sites installed) modules
    that give each row its own task's instance; rows of tasks without an instance at a place
    must come out exactly as the base there gives them. Most kinds replace each place with a
    mixed module through :func:`replace_each`; a kind whose places depend on each other (VPT's
    prompt region across blocks) installs all of them at once.

    An instance that cannot be served (a subclass without a per-sample form) sets the attribute
    ``why_not_mixed`` to a non-empty sentence; ``MultiTaskModel`` then refuses its file with it.
    The parameters of a part, as named under its path, are the tuned tensors it serves.
    """

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None: ...


def replace_each(
    model: nn.Module, placed: Placed, build: Callable[[Mapping[int, nn.Module], nn.Module], nn.Module]
) -> None:
    """Replaces the module at each path of ``placed`` with ``build(instances, module there)``."""
    for path, instances in placed.items():
        parent, _, leaf = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, build(instances, getattr(owner, leaf)))


def shared_setting(values: Iterable, what: str) -> object:
    """The one value the tasks' instances at one place agree on (channels, channel dimension)."""
    distinct = set(values)
    if len(distinct) != 1:
        raise ValueError(f"the tasks' modules in one place disagree on {what}: {sorted(distinct)}")
    return next(iter(distinct))


def frozen_layer(module: nn.Module) -> nn.Module:
    """The frozen layer under nested wrappers (each keeps what it wraps as ``base_layer``, PEFT's name)."""
    while isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    return module


def mixed_parts(model: nn.Module) -> dict[str, nn.Module]:
    """A tuned model's parts, by path: the outermost modules that implement :class:`MixedForm`
    (the default a method's registration may replace, as BitFit's does: its tensors are the
    frozen layers' own biases)."""
    parts: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, MixedForm) and not any(name.startswith(f"{outer}.") for outer in parts):
            parts[name] = module
    return parts
