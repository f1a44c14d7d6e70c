"""RegNet (timm ``regnet.Bottleneck``; ``regnet.PreBottleneck`` of the pre-activation RegNet-V):
one residual site per block with a shortcut.

As in timm, ``downsample`` is the shortcut: the identity, a 1x1 conv (or pooling + conv) where
the block changes width or stride, or None for a block built without a shortcut, which gets
no site (listed in the anatomy's ``skipless_blocks``). The site's shortcut input is ``h(x)``.
"""

from __future__ import annotations

import torch
from timm.models.regnet import Bottleneck, PreBottleneck
from torch import nn

from .sites import NO_TOKENS_IN_FEATURE_MAPS, Family, feature_map_site, pointwise_names, register_family

__all__ = ["RegNetBottleneckSiteBlock", "RegNetPreBottleneckSiteBlock", "REGNET"]


class RegNetBottleneckSiteBlock(Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.se(x)
        x = self.conv3(x)
        if self.downsample is not None:
            x = self.drop_path(x)
            x = self.site(self.downsample(shortcut), x)
        x = self.act3(x)
        return x


class RegNetPreBottleneckSiteBlock(PreBottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        shortcut = x
        x = self.conv1(x)
        x = self.norm2(x)
        x = self.conv2(x)
        x = self.se(x)
        x = self.norm3(x)
        x = self.conv3(x)
        if self.downsample is not None:
            x = self.drop_path(x)
            x = self.site(self.downsample(shortcut), x)
        return x


def _has_residual(block: nn.Module) -> bool:
    return block.downsample is not None


def _add_sites(block: nn.Module) -> None:
    if _has_residual(block):
        conv3 = block.conv3.conv if isinstance(block, Bottleneck) else block.conv3
        block.site = feature_map_site(conv3.out_channels)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    candidates = {Bottleneck: ("conv1.conv", "conv3.conv"), PreBottleneck: ("conv1", "conv3")}
    return {
        "pointwise_convs": [
            pointwise_names(b, next(names for cls, names in candidates.items() if isinstance(b, cls))) for b in blocks
        ],
        "no_token_sequence": NO_TOKENS_IN_FEATURE_MAPS,
    }


REGNET = register_family(
    Family(
        name="regnet",
        block_types={Bottleneck: RegNetBottleneckSiteBlock, PreBottleneck: RegNetPreBottleneckSiteBlock},
        add_sites=_add_sites,
        describe=_describe,
        has_residual=_has_residual,
    )
)
