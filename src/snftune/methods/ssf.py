"""SSF (Lian et al., NeurIPS 2022): scale and shift the features after every operation.

Each linear layer, convolution and normalisation layer of the frozen backbone is followed by
a per-channel affine map ``y = gamma * f(x) + beta`` (:class:`ScaleShift` wraps the layer as
``base_layer``), the classifier head excepted. Because the map is linear and follows a linear
operation, it folds into that operation's weight and bias after training
(:func:`snftune.merge`): the tuned model then costs exactly the backbone's inference.

SSF initialises ``gamma ~ N(1, 0.02)`` and ``beta ~ N(0, 0.02)``; ``init_std=0`` starts
from the exact identity.

Served in a mixed batch (:class:`MixedScaleShift`), each sample's output of a shared frozen
layer gets its own task's scale and shift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..inputs import check_sequence, check_value
from .common import output_channel_dim
from .mixed import MixedModule, Placed, TaskRouting, channel_view, replace_each, shared_setting
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method
from .split_bias import TakesOverQKVBiases, keeps_qkv_biases_apart

KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv2d,),
    "norm": (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm),
}


@dataclass
class SSFConfig(MethodConfig):
    """Settings of SSF.

    Attributes:
        targets: which layers get a scale and shift: ``"linear"``, ``"conv"``, ``"norm"``
            (default all three, as in the paper).
        init_std: standard deviation of the initial scale (around 1) and shift (around 0).
    """

    method: ClassVar[str] = "ssf"

    targets: tuple[str, ...] = ("linear", "conv", "norm")
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.targets = check_sequence(self.targets, "targets", str)
        unknown = sorted(set(self.targets) - set(KINDS))
        if not self.targets or unknown:
            raise ValueError(f"targets must be a non-empty subset of {tuple(KINDS)}, got {list(self.targets)}")
        self.init_std = check_value(self.init_std, "init_std", float, 0.0, 10.0)


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    if isinstance(layer, nn.GroupNorm):
        return layer.num_channels
    if isinstance(layer, nn.LayerNorm):
        return layer.normalized_shape[-1]
    return layer.num_features


class ScaleShift(nn.Module):
    """``scale * base_layer(x) + shift`` per output channel of a frozen layer."""

    why_not_mixed = ""
    """Empty: its scale and shift have a per-sample form (:class:`MixedScaleShift`)."""

    def __init__(self, base_layer: nn.Module, init_std: float = 0.02) -> None:
        super().__init__()
        channels = _out_channels(base_layer)
        reference = next(base_layer.parameters(), None)
        kw = {"device": reference.device, "dtype": reference.dtype} if reference is not None else {}
        self.base_layer = base_layer
        self.channel_dim = output_channel_dim(base_layer) or -1
        self.scale = nn.Parameter(torch.ones(channels, **kw))
        self.shift = nn.Parameter(torch.zeros(channels, **kw))
        if init_std:
            nn.init.normal_(self.scale, mean=1.0, std=init_std)
            nn.init.normal_(self.shift, std=init_std)
        self.merged = False
        self._original: dict[str, torch.Tensor | None] | None = None

    def _broadcast(self, tensor: torch.Tensor, ndim: int) -> torch.Tensor:
        if self.channel_dim == -1:
            return tensor
        return tensor.view(-1, *([1] * (ndim - 2)))

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base(x)
        if self.merged:
            return out
        return out * self._broadcast(self.scale, out.ndim) + self._broadcast(self.shift, out.ndim)

    @property
    def mergeable(self) -> bool:
        """The base layer has the per-channel weight and the bias the scale and shift fold into,
        and nothing after them: timm's norm-act layers (``BatchNormAct2d``: RegNet, EfficientNet)
        apply an activation after their affine step, which a scale and shift after it cannot
        cross, so those stay unmerged (the outputs are right either way)."""
        has_affine = getattr(self.base_layer, "weight", None) is not None and self._bias() is not None
        return has_affine and isinstance(getattr(self.base_layer, "act", nn.Identity()), nn.Identity)

    def _bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def _set_bias(self, value: torch.Tensor) -> None:
        self.base_layer.bias.copy_(value)

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the scale and shift into ``base_layer``'s weight and bias (no-op when not mergeable)."""
        if self.merged or not self.mergeable:
            return
        weight, bias = self.base_layer.weight, self._bias()
        self._original = {"weight": weight.clone(), "bias": bias.clone()}  # for an exact unmerge
        weight.mul_(self.scale.view(-1, *([1] * (weight.ndim - 1))).to(weight.dtype))
        self._set_bias(bias.mul(self.scale.to(bias.dtype)).add_(self.shift.to(bias.dtype)))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the exact original weight and bias."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._original["weight"])
        self._set_bias(self._original["bias"])
        self._original = None
        self.merged = False

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each layer some task scales and shifts gets a :class:`MixedScaleShift` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda layers, base: MixedScaleShift(layers, num_tasks, routing, base))


class MixedScaleShift(MixedModule):
    """A shared frozen layer's output (``base``), each row scaled and shifted by its own task's
    :class:`ScaleShift` (scale 1 and shift 0, exactly the frozen output, for other tasks)."""

    def __init__(self, layers: Mapping[int, ScaleShift], num_tasks: int, routing: TaskRouting, base: nn.Module) -> None:
        super().__init__(layers, routing, base)
        self.channel_dim = int(
            shared_setting((layer.channel_dim for layer in layers.values()), "the channel dimension")
        )
        reference = next(iter(layers.values())).scale
        scale = torch.ones(num_tasks, reference.shape[0], dtype=reference.dtype)
        shift = torch.zeros(num_tasks, reference.shape[0], dtype=reference.dtype)
        with torch.no_grad():
            for task, layer in layers.items():
                scale[task], shift[task] = layer.scale, layer.shift
        self.add_tables(scale=scale, shift=shift)

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        scale, shift = (
            channel_view(t.index_select(0, ids).to(x.dtype), x, self.channel_dim) for t in (self.scale, self.shift)
        )
        return x * scale + shift


class ScaleShiftSplitBias(TakesOverQKVBiases, ScaleShift):
    """SSF after a fused qkv linear whose biases timm keeps in the attention (EVA, BEiT, Swin V2;
    see :mod:`.split_bias`): the scale and shift follow timm's own biased call, and merge into
    the weight and the three bias parts."""

    why_not_mixed = (
        "SSF on a qkv layer whose biases timm keeps in the attention (EVA, BEiT, Swin V2) has no per-sample form yet"
    )

    def __init__(self, base_layer: nn.Linear, attention: nn.Module, init_std: float = 0.02) -> None:
        super().__init__(base_layer, init_std)
        self.take_over_qkv_biases(attention)

    def _bias(self) -> torch.Tensor | None:
        return self.qkv_bias()

    def _set_bias(self, value: torch.Tensor) -> None:
        self.set_qkv_bias(value)


def _head_modules(model: nn.Module) -> set[int]:
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if get_classifier is not None else None
    return {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()


def apply_ssf(model: nn.Module, config: SSFConfig) -> None:
    """Wraps every targeted layer of the backbone (not the head) in a :class:`ScaleShift`."""
    kinds = tuple(t for target in config.targets for t in KINDS[target])
    skip = _head_modules(model)
    targets = [
        (owner, name, child)
        for owner in model.modules()
        for name, child in owner.named_children()
        if isinstance(child, kinds) and id(child) not in skip and not isinstance(owner, ScaleShift)
    ]
    if not targets:
        raise NotApplicableError(f"{type(model).__name__} has no {' / '.join(config.targets)} layer outside its head")
    for owner, name, child in targets:
        if keeps_qkv_biases_apart(owner, name):
            setattr(owner, name, ScaleShiftSplitBias(child, owner, config.init_std))
        else:
            setattr(owner, name, ScaleShift(child, config.init_std))


register_method(
    SSFConfig,
    apply_ssf,
    "SSF: a per-channel scale and shift after every linear, convolution and norm layer (mergeable)",
    capabilities=Capabilities(mergeable=True, servable=True),
)
