"""LN-tune (as the unified PETL study of Mai et al., 2024, defines it): only the affine scale
and shift of the backbone's LayerNorms train.

Every ``nn.LayerNorm`` outside the classifier (timm's ``LayerNorm``/``LayerNorm2d`` subclass it)
with an elementwise affine map is tuned: on ViT the two norms of every block and the final
norm. The method adds nothing, so the tuned model is the backbone itself: it is "merged" from
the start and costs the backbone's inference. Networks that normalise with BatchNorm (ResNet,
RegNet, EfficientNet) have no LayerNorm and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .registry import Capabilities, MethodConfig, NotApplicableError, register_method

BATCHNORM_ONLY = "it normalises with BatchNorm and has no LayerNorm to tune; use bitfit or ssf"


@dataclass
class LNTuneConfig(MethodConfig):
    """LN-tune has no settings."""

    method: ClassVar[str] = "ln-tune"


def layer_norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight and bias of every affine LayerNorm outside the classifier, by qualified name."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if get_classifier is not None else None
    skip = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine and id(module) not in skip:
            for leaf, parameter in module.named_parameters(recurse=False):
                found[f"{name}.{leaf}"] = parameter
    return found


def apply_ln_tune(model: nn.Module, config: LNTuneConfig) -> None:
    """Makes every LayerNorm's scale and shift trainable."""
    norms = layer_norm_parameters(model)
    if not norms:
        raise NotApplicableError(f"LN-tune does not fit {type(model).__name__}: {BATCHNORM_ONLY}")
    for parameter in norms.values():
        parameter.requires_grad_(True)


register_method(
    LNTuneConfig,
    apply_ln_tune,
    "LN-tune: the scale and shift of every LayerNorm of the backbone",
    capabilities=Capabilities(
        mergeable=True,
        servable=False,
        unsupported_families={f: BATCHNORM_ONLY for f in ("resnet", "regnet", "efficientnet")},
        why_not={
            "servable": "MultiTaskModel has a per-sample form for BitFit's biases but none yet for "
            "LayerNorm scales; serve an LN-tune file with a model of its own (snftune.load_tuned)"
        },
    ),
)
