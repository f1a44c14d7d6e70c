"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck beside each block's MLP, scaled.

``x_{l+1} = x' + MLP(LN(x')) + s * up(ReLU(down(x')))``, where ``x'`` is the MLP residual's
input (the token sequence after the attention residual). The adapter reads ``x'`` before the
block's norm, as the official code does (``ffn_adapter_layernorm_option="none"``), so it is an
:class:`~snftune.methods.Adapter` in the ``shortcut`` slot of each MLP site, whose input is
exactly ``x'``. Initialisation follows the official ``"lora"`` option: the down projection
Kaiming-uniform with zero bias, the up projection and its bias zero, so the model starts
unchanged.

The defaults (width 8, scale 0.1, ReLU) are the VTAB-1k configuration the field reports
(0.16M tuned parameters on ViT-B/16, head excluded). ConvNeXt's block branch ends in a channel
MLP, so the adapter runs beside it there too; ResNet-style blocks have no MLP and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..backbones import install_sites
from .adapter import ACTIVATIONS, Adapter
from .common import POSITIVE, WIDTH, factory_kwargs
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method

NO_MLP = (
    "AdaptFormer runs a bottleneck beside a block's MLP; a {family} block has no MLP "
    "(adapter-parallel puts one beside its residual branch)"
)
UNSUPPORTED = {f: NO_MLP.format(family=f) for f in ("resnet", "regnet", "efficientnet")}


@dataclass
class AdaptFormerConfig(MethodConfig):
    """Settings of AdaptFormer.

    Attributes:
        width: bottleneck width (the paper's ``ffn_num``; 8 on VTAB-1k, 0.16M on ViT-B/16).
        scale: the fixed scale ``s`` of the adapter's output (0.1 in the paper).
        activation: ``"relu"`` (the paper's), ``"gelu"`` or ``"silu"``.
    """

    method: ClassVar[str] = "adaptformer"

    width: int = 8
    scale: float = 0.1
    activation: str = "relu"

    def __post_init__(self) -> None:
        self.width = WIDTH.check("width", self.width)
        self.scale = POSITIVE.check("scale", self.scale)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")


def apply_adaptformer(model: nn.Module, config: AdaptFormerConfig) -> None:
    """Puts a scaled, zero-initialised :class:`Adapter` in the shortcut slot of every MLP site."""
    anat = install_sites(model)
    if anat.family in UNSUPPORTED:
        raise NotApplicableError(UNSUPPORTED[anat.family])
    placement = factory_kwargs(model)
    for sites in anat.block_sites:
        site = sites[-1]  # the MLP residual (ConvNeXt: the block's one residual, ending in its MLP)
        adapter = Adapter(
            site.channels, config.width, site.channel_dim, config.activation, float(config.scale), **placement
        )
        nn.init.zeros_(adapter.down.bias)
        site.fill("shortcut", adapter)


register_method(
    AdaptFormerConfig,
    apply_adaptformer,
    "AdaptFormer: a ReLU bottleneck (width 8) beside each MLP, output scaled by 0.1",
    capabilities=Capabilities(
        mergeable=False,
        servable=True,
        unsupported_families=UNSUPPORTED,
        why_not={
            "mergeable": "the bottleneck has a ReLU between its projections, so it does not fold into a linear layer",
        },
    ),
)
