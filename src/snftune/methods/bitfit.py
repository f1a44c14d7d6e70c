"""BitFit (Ben Zaken et al., 2022): only the bias terms of the backbone train.

Biases are found structurally: the parameter a module registers under the name ``bias``
(linear, convolution and normalisation layers alike). On timm's ResNets the convolutions
have no bias, so BitFit trains the BatchNorm biases (their running statistics stay frozen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .registry import MethodConfig, register_method


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit has no settings."""

    method: ClassVar[str] = "bitfit"


def bias_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every module's own ``bias`` parameter, by qualified name."""
    biases = {}
    for module_name, module in model.named_modules():
        bias = dict(module.named_parameters(recurse=False)).get("bias")
        if bias is not None:
            biases[f"{module_name}.bias" if module_name else "bias"] = bias
    return biases


def apply_bitfit(model: nn.Module, config: BitFitConfig) -> None:
    """Makes every bias trainable (the head's too; ``snftune.apply`` counts those as head)."""
    for bias in bias_parameters(model).values():
        bias.requires_grad_(True)


register_method(BitFitConfig, apply_bitfit, "BitFit: every bias term of the backbone")
