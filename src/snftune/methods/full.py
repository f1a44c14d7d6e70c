"""Full fine-tuning: every parameter trains, BatchNorm statistics keep updating."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .registry import Capabilities, MethodConfig, register_method


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning has no settings (learning rates belong to the engine)."""

    method: ClassVar[str] = "full"
    updates_norm_statistics: ClassVar[bool] = True


def apply_full(model: nn.Module, config: FullConfig) -> None:
    """Makes every parameter of the model trainable again."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)


register_method(
    FullConfig,
    apply_full,
    "Full fine-tuning: every parameter, BatchNorm statistics updating",
    capabilities=Capabilities(
        mergeable=True,  # nothing to fold: the tuned model is a backbone of its own
        why_not={"servable": "every weight of the backbone changes, so each task needs a backbone of its own"},
    ),
)
