"""ResNet (timm ``resnet.Bottleneck`` and ``resnet.BasicBlock``): one residual site per block.

The site's shortcut input is ``h(x)``: the identity, or the 1x1 downsample at stage
transitions, exactly as the paper places the flow.
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .sites import Family, ResidualSite, register_family


class BottleneckSiteBlock(Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(self.site(shortcut, x))


class BasicSiteBlock(BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(self.site(shortcut, x))


def _add_sites(block: nn.Module) -> None:
    last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
    block.site = ResidualSite(last_bn.num_features, channel_dim=1, branch_first=True)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {}


RESNET = register_family(
    Family(
        name="resnet",
        block_types={Bottleneck: BottleneckSiteBlock, BasicBlock: BasicSiteBlock},
        add_sites=_add_sites,
        describe=_describe,
    )
)
