"""Side-tuning (Zhang et al., ECCV 2020): a small side network beside the frozen backbone.

The classifier head sees ``alpha * base + (1 - alpha) * side``: ``base`` the frozen
backbone's pooled features, ``side`` those of a small strided conv net on the image, mapped
to the same width, and ``alpha`` a learned scalar. It starts at exactly 1, so the model starts
unchanged (``1 * base + 0 * side == base`` bit for bit); its gradient ``<g, base - side>`` moves
it, after which the side network trains too. ``alpha`` is not clamped to [0, 1].

No model file is copied or patched: the :class:`SideTune` module lives at ``model.sidetune``
(its tensors are saved as ``sidetune.*``) and works through three hooks: a forward pre-hook
on the model runs the side network on the input image, a forward pre-hook on the classifier
(``model.get_classifier()``, kept as it is) blends, and a forward hook on the model drops the
side features. So the blend happens when the model is called as a whole, ``model(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..inputs import check_sequence, check_value
from .common import MAX_SIZE, factory_kwargs
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method


@dataclass
class SideTuneConfig(MethodConfig):
    """Settings of side-tuning.

    Attributes:
        channels: output channels of the side network's 3x3 stride-2 conv layers (each
            followed by ReLU), then global average pooling and a linear map to the head's
            input width. Default: four layers, 16 to 128 channels.
        alpha_init: the blend weight of the backbone's features at the start (1: unchanged model).
    """

    method: ClassVar[str] = "sidetune"

    channels: tuple[int, ...] = (16, 32, 64, 128)
    alpha_init: float = 1.0

    def __post_init__(self) -> None:
        self.channels = check_sequence(self.channels, "channels", int, 1, MAX_SIZE)
        self.alpha_init = check_value(self.alpha_init, "alpha_init", float, -1e3, 1e3)


def side_network(in_chans: int, channels: tuple[int, ...], features: int, device=None, dtype=None) -> nn.Sequential:
    """Strided 3x3 convs with ReLU, global average pooling, a linear map to ``features``."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip((in_chans, *channels[:-1]), channels, strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, device=device, dtype=dtype), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels[-1], features, device=device, dtype=dtype)]
    return nn.Sequential(*layers)


class SideTune(nn.Module):
    """The side network, the blend weight ``alpha``, and the hooks that wire them in."""

    def __init__(self, side: nn.Module, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.side = side
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init), **factory_kwargs(side)))
        self._features: torch.Tensor | None = None

    def run_side(self, model: nn.Module, args: tuple) -> None:
        self._features = self.side(args[0])

    def blend(self, head: nn.Module, args: tuple) -> tuple:
        if self._features is None:
            raise RuntimeError("side-tuning blends features inside model(x); call the model, not its head alone")
        base = args[0]
        blended = self.alpha * base + (1 - self.alpha) * self._features.to(base.dtype)
        return (blended, *args[1:])

    def drop_side(self, model: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._features = None


def _input_channels(model: nn.Module) -> int:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise NotApplicableError(f"side-tuning needs an image model; {type(model).__name__} has no Conv2d stem")
    return first_conv.in_channels


def apply_sidetune(model: nn.Module, config: SideTuneConfig) -> None:
    """Adds ``model.sidetune`` and hooks it between the input, the pooled features and the head."""
    if getattr(model, "sidetune", None) is not None:
        raise ValueError("the model already has a side network")
    get_classifier = getattr(model, "get_classifier", None)
    features = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if get_classifier is None or not features:
        raise NotApplicableError(
            f"side-tuning blends features before a timm classifier; {type(model).__name__} has no get_classifier()"
        )
    side = side_network(_input_channels(model), config.channels, features, **factory_kwargs(model))
    model.sidetune = SideTune(side, config.alpha_init)
    model.register_forward_pre_hook(model.sidetune.run_side)
    get_classifier().register_forward_pre_hook(model.sidetune.blend)
    model.register_forward_hook(model.sidetune.drop_side)


register_method(
    SideTuneConfig,
    apply_sidetune,
    "Side-tuning: a 4-layer conv side network blended with the frozen features by a learned alpha",
    capabilities=Capabilities(
        why_not={
            "mergeable": "its side network runs beside the backbone; there is no frozen weight to fold it into",
            "servable": "its side network and blend hooks have no per-sample form yet",
        },
    ),
)
