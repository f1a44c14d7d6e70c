"""One tuned file read for serving: checked as ``load_tuned`` checks it, split into its parts.

A file is loaded with :func:`~snftune.tuning.load_tuned` itself, into a copy of the backbone
whose frozen tensors live on the meta device (no memory, no copy of the weights): so a file
is accepted for serving exactly when it would load into its own single-task model (same
architecture and fingerprint, a known method config, every tensor name and shape). Only its
tuned tensors are then made real, and the method's modules are read from that copy.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..methods import capabilities, method_for
from ..tuning import TunedFileError, head_parameter_names, load_tuned, read_tuned_metadata, read_tuned_tensors

__all__ = ["ServingError", "TaskParts", "load_task", "meta_copy"]


class ServingError(TunedFileError):
    """Tuned files that cannot be served together on this backbone."""


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are on the meta device (shapes only)."""
    memo: dict[int, object] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(
            torch.empty_like(parameter, device="meta"), requires_grad=parameter.requires_grad
        )
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo)


@dataclass
class TaskParts:
    """What one tuned file adds to the shared backbone.

    Attributes:
        parts: path in the backbone -> the module of the task's method there that holds its tuned
            tensors (a :class:`~snftune.methods.mixed.MixedForm`: a flow, a LoRA layer, ...).
        buffers: backbone buffers the file holds (BitFit's BatchNorm statistics); frozen, so they
            must equal the backbone's own.
        head: the task's classifier; ``num_classes`` its output width.
    """

    name: str
    path: Path
    label: str
    head: nn.Module
    num_classes: int
    parts: dict[str, nn.Module] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)


def _head_shape(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[int, ...] | None:
    """The shape of the classifier weight in ``tensors`` (a file's, or the model's own), if any."""
    weights = [tensors[n] for n in head_parameter_names(model) if n in tensors and tensors[n].dim() == 2]
    return tuple(weights[0].shape) if weights else None


def _refuse(path: Path, name: str, reason: str) -> ServingError:
    return ServingError(
        f"{path} (task '{name}'): {reason}; serve this file with a model of its own (snftune.load_tuned)"
    )


def load_task(skeleton: nn.Module, name: str, path: str | os.PathLike) -> TaskParts:
    """Reads a tuned file made for ``skeleton``'s backbone (a :func:`meta_copy` of it, untuned).

    Raises:
        FileNotFoundError: no such file.
        TunedFileError: not a tuned file, or made for another backbone (as ``load_tuned``).
        ServingError: a method not declared servable, or a part without a per-sample form.
    """
    path = Path(path)
    metadata = read_tuned_metadata(path)
    method = metadata["method"]
    declared = capabilities(method)
    if not declared.servable:
        raise ServingError(
            f"{path} (task '{name}') is tuned with '{metadata.get('label', method)}', which cannot be served "
            f"in a mixed batch: {declared.reason('servable')}. Serve it with a model of its own (snftune.load_tuned)."
        )
    tensors = read_tuned_tensors(path)  # damaged data is a TunedFileError, as in load_tuned
    donor = meta_copy(skeleton)
    head = _head_shape(skeleton, tensors)
    if head is not None and head != _head_shape(skeleton, skeleton.state_dict()):
        donor.reset_classifier(head[0])
    load_tuned(donor, path)  # the backbone, method and tensor checks of a single-task model
    if head is None:
        raise ServingError(f"{path} (task '{name}') holds no classifier head; serving needs each task's head")
    donor.load_state_dict(tensors, strict=False, assign=True)
    task = TaskParts(name, path, metadata.get("label", method), donor.get_classifier(), head[0])
    claimed = set(head_parameter_names(donor))
    in_head = {module_name for module_name, m in donor.named_modules() if m is donor.get_classifier()}
    for part_path, part in method_for(donor.snftune_state.config).mixed_parts(donor).items():
        if any(part_path == h or part_path.startswith(f"{h}.") for h in in_head):
            continue  # the head is served by TaskHeads
        if getattr(part, "why_not_mixed", ""):
            raise _refuse(path, name, f"{part_path}: {part.why_not_mixed}")
        task.parts[part_path] = part
        claimed.update(f"{part_path}.{n}" for n, _ in part.named_parameters())
    for buffer_name, _ in donor.named_buffers():
        if buffer_name in tensors and buffer_name not in claimed:
            task.buffers[buffer_name] = tensors[buffer_name]
            claimed.add(buffer_name)
    unclaimed = sorted(set(tensors) - claimed)
    if unclaimed:
        raise _refuse(path, name, f"method '{task.label}': tensor(s) {unclaimed[:3]} have no per-sample form")
    return task
