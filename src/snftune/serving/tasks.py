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
from safetensors.torch import load_file
from torch import nn

from ..backbones import install_sites
from ..backbones.sites import ResidualSite
from ..methods import Adapter, LoRALinear, ShortcutFlow, capabilities
from ..methods.vpt import PromptTokens
from ..tuning import TunedFileError, head_parameter_names, load_tuned, read_tuned_metadata

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
    """What one tuned file adds to the shared backbone, by where it goes.

    Attributes:
        slots: (residual site name, ``"shortcut"``/``"branch"``) -> the ShortcutFlow or Adapter there.
        lora: name of a backbone linear layer -> the LoRALinear that updates it.
        biases: name of a backbone layer -> its BitFit bias.
        prompts: block index -> the PromptTokens that block inserts or replaces.
        buffers: backbone buffers the file holds (BatchNorm statistics of BitFit's layers); frozen,
            so they must equal the backbone's own.
        head: the task's classifier; ``num_classes`` its output width.
    """

    name: str
    path: Path
    label: str
    head: nn.Module
    num_classes: int
    slots: dict[tuple[str, str], nn.Module] = field(default_factory=dict)
    lora: dict[str, LoRALinear] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    prompts: dict[int, PromptTokens] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)


def _head_shape(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[int, ...] | None:
    """The shape of the classifier weight in ``tensors`` (a file's, or the model's own), if any."""
    weights = [tensors[n] for n in head_parameter_names(model) if n in tensors and tensors[n].dim() == 2]
    return tuple(weights[0].shape) if weights else None


def load_task(skeleton: nn.Module, name: str, path: str | os.PathLike) -> TaskParts:
    """Reads a tuned file made for ``skeleton``'s backbone (a :func:`meta_copy` of it, untuned).

    Raises:
        FileNotFoundError: no such file.
        TunedFileError: not a tuned file, or made for another backbone (as ``load_tuned``).
        ServingError: a method without a per-sample form (full, sidetune, peft:...).
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
    tensors = load_file(str(path))
    donor = meta_copy(skeleton)
    head = _head_shape(skeleton, tensors)
    if head is not None and head != _head_shape(skeleton, skeleton.state_dict()):
        donor.reset_classifier(head[0])
    load_tuned(donor, path)  # the backbone, method and tensor checks of a single-task model
    if head is None:
        raise ServingError(f"{path} (task '{name}') holds no classifier head; serving needs each task's head")
    classes = head[0]
    donor.load_state_dict(tensors, strict=False, assign=True)
    parts = TaskParts(name, path, metadata.get("label", method), donor.get_classifier(), classes)
    claimed = set(head_parameter_names(donor))
    blocks = {id(block): i for i, block in enumerate(install_sites(donor).blocks)}
    for module_name, module in donor.named_modules():
        if isinstance(module, ResidualSite):
            for slot in ("shortcut", "branch"):
                filled = getattr(module, slot)
                if isinstance(filled, ShortcutFlow | Adapter):
                    parts.slots[(module_name, slot)] = filled
                    claimed.update(f"{module_name}.{slot}.{n}" for n, _ in filled.named_parameters())
        elif isinstance(module, LoRALinear):
            if type(module) is not LoRALinear:  # mixed LoRA hooks a plain nn.Linear's own forward
                raise ServingError(
                    f"{path} (task '{name}'): LoRA on {module_name} is a {type(module).__name__} (a 1x1 "
                    "convolution, or a qkv layer whose biases timm keeps in the attention: EVA, BEiT, Swin V2), "
                    "which has no per-sample form yet; serve this file with a model of its own (snftune.load_tuned)"
                )
            parts.lora[module_name] = module
            claimed.update(f"{module_name}.{n}" for n in ("lora_A", "lora_B"))
        elif id(module) in blocks and isinstance(getattr(module, "token_slot", None), PromptTokens):
            parts.prompts[blocks[id(module)]] = module.token_slot
            claimed.add(f"{module_name}.token_slot.prompts")
    for buffer_name, _ in donor.named_buffers():
        if buffer_name in tensors and buffer_name not in claimed:
            parts.buffers[buffer_name] = tensors[buffer_name]
            claimed.add(buffer_name)
    if method == "bitfit":
        for tensor_name in sorted(set(tensors) - claimed):
            module_name, _, leaf = tensor_name.rpartition(".")
            if leaf == "bias":
                parts.biases[module_name] = tensors[tensor_name]
                claimed.add(tensor_name)
    unclaimed = sorted(set(tensors) - claimed)
    if unclaimed:
        raise ServingError(
            f"{path} (task '{name}', method '{parts.label}'): tensor(s) {unclaimed[:3]} have no per-sample form; "
            "serve this file with a model of its own (snftune.load_tuned)"
        )
    return parts
