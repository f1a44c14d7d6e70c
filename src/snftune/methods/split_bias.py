"""Wrapping a fused ``qkv`` linear whose biases timm keeps in the attention, not in the layer.

EVA, BEiT and Swin V2 attention build ``qkv`` without a bias and keep ``q_bias``, ``v_bias``
(parameters) and ``k_bias`` (a zero buffer) beside it; their forward calls
``F.linear(x, self.qkv.weight, cat(q_bias, k_bias, v_bias))`` itself, which bypasses any
module that wraps ``qkv`` (and fails on one without a ``weight``). A wrapper that mixes in
:class:`TakesOverQKVBiases` moves the three biases from the attention into itself (the
attention's become None, so timm calls ``self.qkv(x)``) and computes that same call as its
base output, so the frozen output is unchanged to the bit. The biases stay frozen;
``attn.q_bias`` becomes ``attn.qkv.q_bias`` in the state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TakesOverQKVBiases", "keeps_qkv_biases_apart"]


def keeps_qkv_biases_apart(owner: nn.Module, name: str) -> bool:
    """Whether ``owner.<name>`` is a fused qkv linear whose biases ``owner`` holds (timm's EVA/BEiT/Swin V2)."""
    return name == "qkv" and getattr(owner, "q_bias", None) is not None


class TakesOverQKVBiases:
    """Mixin for a wrapper whose frozen layer is ``self.base_layer`` (see the module doc)."""

    base_layer: nn.Linear

    def take_over_qkv_biases(self, attention: nn.Module) -> None:
        self.q_bias = attention.q_bias
        self.register_buffer("k_bias", attention.k_bias, persistent=False)
        self.v_bias = attention.v_bias
        self.bias_separate = bool(getattr(attention, "qkv_bias_separate", False))
        attention.q_bias = attention.k_bias = attention.v_bias = None

    def qkv_bias(self) -> torch.Tensor:
        return torch.cat((self.q_bias, self.k_bias, self.v_bias))

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``F.linear(x, qkv.weight, bias)``, or its ``qkv(x) += bias`` form (``qkv_bias_separate``)."""
        if self.bias_separate:
            out = self.base_layer(x)
            out += self.qkv_bias()
            return out
        return F.linear(x, weight=self.base_layer.weight, bias=self.qkv_bias())

    @torch.no_grad()
    def set_qkv_bias(self, bias: torch.Tensor) -> None:
        """Writes a fused (3 * d) bias back into the three parts (for merging into the frozen layer)."""
        for part, value in zip((self.q_bias, self.k_bias, self.v_bias), bias.chunk(3), strict=True):
            part.copy_(value)
