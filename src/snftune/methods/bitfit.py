"""BitFit (Ben Zaken et al., 2022): only the bias terms of the backbone train.

Biases are found structurally: the parameter a module registers under the name ``bias``
(linear, convolution and normalisation layers alike), or under a name ending in ``_bias``
(the ``q_bias``/``v_bias`` that EVA, BEiT and Swin V2 attention keep beside a bias-free
fused ``qkv`` layer). On timm's CNNs the convolutions mostly have no bias, so BitFit trains
the BatchNorm biases (their running statistics stay frozen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

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


register_method(
    BitFitConfig,
    apply_bitfit,
    "BitFit: every bias term of the backbone",
    # Mergeable with nothing to fold: the tuned biases are the backbone's own.
    capabilities=Capabilities(mergeable=True, servable=True),
)
