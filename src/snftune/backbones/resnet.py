"""ResNet (timm ``resnet.Bottleneck`` and ``resnet.BasicBlock``): one residual site per block.

The site's shortcut input is ``h(x)``: the identity, or the 1x1 downsample at stage
transitions, exactly as the paper places the flow.
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from .sites import NO_TOKENS_IN_FEATURE_MAPS, Family, feature_map_site, pointwise_names, register_family


def _residual(block: nn.Module, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The tail both timm blocks share: squeeze-excite and drop-path on the branch, the
    downsample on the shortcut, and their sum through the site (before the last activation)."""
    if block.se is not None:
        branch = block.se(branch)
    if block.drop_path is not None:
        branch = block.drop_path(branch)
    shortcut = block.downsample(x) if block.downsample is not None else x
    return block.site(shortcut, branch)


class BottleneckSiteBlock(Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.act1(self.bn1(self.conv1(x)))
        branch = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(branch)))))
        return self.act3(_residual(self, self.bn3(self.conv3(branch)), x))


class BasicSiteBlock(BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        return self.act2(_residual(self, self.bn2(self.conv2(branch)), x))


def _add_sites(block: nn.Module) -> None:
    last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
    block.site = feature_map_site(last_bn.num_features)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {
        "pointwise_convs": [pointwise_names(b, ("conv1", "conv3")) for b in blocks],
        "no_token_sequence": NO_TOKENS_IN_FEATURE_MAPS,
    }


RESNET = register_family(
    Family(
        name="resnet",
        block_types={Bottleneck: BottleneckSiteBlock, BasicBlock: BasicSiteBlock},
        add_sites=_add_sites,
        describe=_describe,
    )
)
