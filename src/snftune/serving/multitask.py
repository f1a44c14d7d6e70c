"""Many tuned tasks served from one backbone, each sample of a batch with its own task.

The point of tuning kilobytes per task is to keep one backbone for all of them. A
:class:`MultiTaskModel` puts every task's method into the one frozen backbone in a per-sample
form, so a batch that mixes tasks, and methods, runs the backbone once. It knows no method:
each method's modules put their own mixed form in (the protocol of
:mod:`snftune.methods.mixed`); this module routes rows to tasks and stacks the heads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..backbones import install_sites
from ..methods.mixed import TaskRouting
from .heads import MultiTaskOutput, TaskHeads
from .tasks import ServingError, TaskParts, load_task, meta_copy

__all__ = ["MultiTaskModel"]

TaskIds = torch.Tensor | Sequence[int | str]


def _placed_by_kind(tasks: list[TaskParts]) -> dict[type, dict[str, dict[int, nn.Module]]]:
    """{kind of part: {path: {task index: its part there}}}, kinds in the order the tasks bring them."""
    placed: dict[type, dict[str, dict[int, nn.Module]]] = {}
    for index, task in enumerate(tasks):
        for path, part in task.parts.items():
            placed.setdefault(type(part), {}).setdefault(path, {})[index] = part
    return placed


class MultiTaskModel(nn.Module):
    """One frozen backbone serving tuned tasks of every method declared servable
    (``snftune.capabilities(name).servable``; docs/methods.md lists them).

    Args:
        backbone: the untuned timm model the files were tuned on (the same architecture, shapes
            and weights). It is edited in place, as ``snftune.apply`` edits a model: frozen,
            its residual sites and token slots filled with the per-sample modules.
        tasks: ``{task name: tuned file}`` (files written by ``save_tuned``); the order gives each
            task its index. Methods and settings may differ from task to task.

    ``forward(images, task_ids)`` returns a :class:`MultiTaskOutput`: logits padded to the widest
    head (``-inf`` past each sample's own class count) and the mask of real columns. Each row
    equals what the task's own model (a fresh backbone + ``load_tuned``) gives for that image.
    VPT tasks share a prompt region as wide as the longest prompts, masked per sample
    (see :mod:`snftune.methods.vpt`). Inference only: the model stays in eval mode.

    Raises:
        FileNotFoundError: a file is missing.
        TunedFileError: a file is not a tuned file, or was made for another backbone.
        ServingError: a method not declared servable (full, sidetune, peft:...), a part without a
            per-sample form, or a backbone that is already tuned.
    """

    def __init__(self, backbone: nn.Module, tasks: Mapping[str, str | os.PathLike]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskModel needs at least one task: {name: tuned file}")
        state = getattr(backbone, "snftune_state", None)
        if state is not None:
            raise ServingError(
                f"the backbone is already tuned with '{state.label}'; pass the untuned backbone the files were "
                "made for (every task's method is added to it)"
            )
        skeleton = meta_copy(backbone)
        # Every file is read and checked before the backbone is touched.
        parts = [load_task(skeleton, str(name), path) for name, path in tasks.items()]
        _check_frozen_buffers(backbone, parts)
        self.task_names = [part.name for part in parts]
        self.methods = [part.label for part in parts]
        self.routing = TaskRouting()
        reference = next(backbone.parameters())
        backbone.requires_grad_(False)
        install_sites(backbone)
        self.backbone = backbone
        for kind, placed in _placed_by_kind(parts).items():
            kind.install_mixed(backbone, placed, len(parts), self.routing)
        self.heads = TaskHeads([part.head for part in parts], [part.num_classes for part in parts])
        self.to(device=reference.device, dtype=reference.dtype)
        self.eval()

    @property
    def num_classes(self) -> list[int]:
        """The class count of each task, in task order."""
        return list(self.heads.num_classes)

    def task_index(self, task: int | str) -> int:
        """The index of a task given by name (or by index, checked)."""
        if isinstance(task, str):
            if task not in self.task_names:
                raise KeyError(f"unknown task '{task}'; the tasks are {', '.join(self.task_names)}")
            return self.task_names.index(task)
        if not 0 <= int(task) < len(self.task_names):
            raise IndexError(f"task index {task} out of range: {len(self.task_names)} tasks")
        return int(task)

    def _task_ids(self, task_ids: TaskIds, batch: int) -> torch.Tensor:
        if isinstance(task_ids, torch.Tensor):
            ids = task_ids.detach().to("cpu", torch.long).flatten()
            if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < len(self.task_names)):
                raise IndexError(f"task ids must lie in [0, {len(self.task_names)}), got {ids.tolist()}")
        else:
            ids = torch.tensor([self.task_index(t) for t in task_ids], dtype=torch.long)
        if ids.numel() != batch:
            raise ValueError(f"got {ids.numel()} task ids for a batch of {batch} images; give one per image")
        return ids

    def forward(self, images: torch.Tensor, task_ids: TaskIds) -> MultiTaskOutput:
        """Each image's logits under its own task (``task_ids``: indices or names, one per image),
        padded to the widest head; see :class:`MultiTaskOutput`."""
        ids = self._task_ids(task_ids, images.shape[0])
        # Every index tensor is made before the backbone runs: no device sync in the middle of it.
        groups = {int(t): (ids == t).nonzero().flatten().to(images.device) for t in ids.unique()}
        with self.routing.route(ids, images.device):
            features = self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)
        return self.heads(features, ids.to(images.device), groups)

    def train(self, mode: bool = True) -> MultiTaskModel:
        if mode:
            raise RuntimeError(
                "MultiTaskModel serves tuned tasks (inference only); train a task on a model of its own "
                "(snftune.apply) and serve the file it saves"
            )
        return super().train(False)


def _check_frozen_buffers(backbone: nn.Module, parts: list[TaskParts]) -> None:
    """The buffers a file holds (BitFit's BatchNorm statistics) are the frozen backbone's: one
    set serves every task, so a file whose statistics differ is refused."""
    own = dict(backbone.named_buffers())
    for part in parts:
        for name, tensor in part.buffers.items():
            if not torch.equal(own[name].detach().cpu(), tensor.to(own[name].dtype)):
                raise ServingError(
                    f"{part.path} (task '{part.name}') holds {name} with other values than the backbone's: it was "
                    "tuned on other weights, or its statistics changed; build the backbone it was tuned on"
                )
