"""BitFit (Ben Zaken et al., 2022): only the bias terms of the backbone train.

Biases are found structurally: the parameter a module registers under the name ``bias``
(linear, convolution and normalisation layers alike), or under a name ending in ``_bias``
(the ``q_bias``/``v_bias`` that EVA, BEiT and Swin V2 attention keep beside a bias-free
fused ``qkv`` layer). On timm's CNNs the convolutions mostly have no bias, so BitFit trains
the BatchNorm biases (their running statistics stay frozen).

Served in a mixed batch (:class:`MixedBias`), each sample gets the frozen layer's output plus
its own task's bias minus the frozen one, added where the layer adds its bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .common import output_channel_dim
from .mixed import MixedModule, Placed, TaskRouting, channel_view, frozen_layer, replace_each
from .registry import Capabilities, MethodConfig, register_method


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit has no settings."""

    method: ClassVar[str] = "bitfit"


def bias_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every module's own ``bias`` (or ``*_bias``) parameter, by qualified name."""
    biases = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias" or name.endswith("_bias"):
                biases[f"{module_name}.{name}" if module_name else name] = parameter
    return biases


def apply_bitfit(model: nn.Module, config: BitFitConfig) -> None:
    """Makes every bias trainable (the head's too; ``snftune.apply`` counts those as head)."""
    for bias in bias_parameters(model).values():
        bias.requires_grad_(True)


def _why_not_mixed(layer: nn.Module, names: list[str]) -> str:
    if names != ["bias"] or output_channel_dim(layer) is None:
        return (
            f"BitFit's {', '.join(names)} of a {type(layer).__name__} has no per-sample form "
            "(no known place where the layer adds it)"
        )
    if not isinstance(getattr(layer, "act", nn.Identity()), nn.Identity):
        return f"BitFit's bias of a {type(layer).__name__} has no per-sample form (an activation follows it)"
    return ""


class TunedBias(nn.Module):
    """The tuned bias of one backbone layer: the part BitFit serves (its tensors are the layer's own)."""

    def __init__(self, layer: nn.Module, names: list[str]) -> None:
        super().__init__()
        for name in names:
            self.register_parameter(name, getattr(layer, name))
        self.why_not_mixed = _why_not_mixed(layer, names)

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each layer some task tunes the bias of gets a :class:`MixedBias` (the mixed-batch protocol)."""
        replace_each(
            model,
            placed,
            lambda tuned, base: MixedBias({t: p.bias for t, p in tuned.items()}, num_tasks, routing, base),
        )


def tuned_biases(model: nn.Module) -> dict[str, nn.Module]:
    """BitFit's parts of a tuned model: a :class:`TunedBias` per layer with a trainable bias."""
    parts: dict[str, nn.Module] = {}
    for module_name, module in model.named_modules():
        names = [
            name
            for name, parameter in module.named_parameters(recurse=False)
            if parameter.requires_grad and (name == "bias" or name.endswith("_bias"))
        ]
        if names:
            parts[module_name] = TunedBias(module, names)
    return parts


class MixedBias(MixedModule):
    """The output of ``base`` (a frozen layer, or a mixed module wrapping it) plus each sample's
    own task's bias minus the frozen one; a task without one here gets the frozen output exactly."""

    def __init__(
        self, biases: Mapping[int, torch.Tensor], num_tasks: int, routing: TaskRouting, base: nn.Module
    ) -> None:
        super().__init__(biases, routing, base)
        layer = frozen_layer(base)
        self.channel_dim = output_channel_dim(layer)
        frozen = layer.bias.detach().to("cpu", torch.float64)
        delta = torch.zeros(num_tasks, frozen.numel(), dtype=layer.bias.dtype)
        for task, bias in biases.items():
            delta[task] = (bias.detach().to("cpu", torch.float64) - frozen).to(delta.dtype)
        self.add_tables(delta=delta)

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x + channel_view(self.delta.index_select(0, ids).to(x.dtype), x, self.channel_dim)

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, channels={self.delta.shape[1]}, channel_dim={self.channel_dim}"


register_method(
    BitFitConfig,
    apply_bitfit,
    "BitFit: every bias term of the backbone",
    # Mergeable with nothing to fold: the tuned biases are the backbone's own.
    capabilities=Capabilities(mergeable=True, servable=True),
    mixed_parts=tuned_biases,
)
