"""Linear probing: the frozen backbone's features, a trained classifier head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .registry import Capabilities, MethodConfig, register_method


@dataclass
class LinearConfig(MethodConfig):
    """Linear probing has no settings: ``snftune.apply`` already trains the head alone."""

    method: ClassVar[str] = "linear"


def apply_linear(model: nn.Module, config: LinearConfig) -> None:
    """Adds nothing; the head is the only trainable part."""


register_method(
    LinearConfig,
    apply_linear,
    "Linear probing: the classifier head only",
    capabilities=Capabilities(mergeable=True, servable=True),  # nothing to fold: the backbone is untouched
)
