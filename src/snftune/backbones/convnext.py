"""ConvNeXt and ConvNeXt V2 (timm ``convnext.ConvNeXtBlock``): one residual site per block.

The branch is timm's: depthwise conv, norm, channel MLP (``nn.Linear`` on a channels-last
view, or 1x1 convolutions with ``conv_mlp=True``; ConvNeXt V2's GRN inside it) and the layer
scale ``gamma``. The site's shortcut input is ``h(x)``: the identity, or the block's own
``shortcut`` (``Downsample``: pooling and/or a 1x1 conv) where the block changes width or
stride, as ResNet's downsample. Maps are (B, C, H, W) (channel_dim 1), though with
channels-last strides in the default variant, which the flow keeps.
"""

from __future__ import annotations

import torch
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from .sites import NO_TOKENS_IN_FEATURE_MAPS, Family, feature_map_site, pointwise_names, register_family

__all__ = ["ConvNeXtSiteBlock", "CONVNEXT"]


class ConvNeXtSiteBlock(ConvNeXtBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.norm(x)
            x = self.mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)
            x = self.norm(x)
            x = self.mlp(x)
            x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.drop_path(x)
        return self.site(self.shortcut(shortcut), x)


def _add_sites(block: nn.Module) -> None:
    block.site = feature_map_site(block.conv_dw.out_channels)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {
        "mlps": [b.mlp for b in blocks],
        "pointwise_convs": [pointwise_names(b, ("mlp.fc1", "mlp.fc2")) for b in blocks],
        "no_token_sequence": NO_TOKENS_IN_FEATURE_MAPS,
    }


CONVNEXT = register_family(
    Family(name="convnext", block_types={ConvNeXtBlock: ConvNeXtSiteBlock}, add_sites=_add_sites, describe=_describe)
)
