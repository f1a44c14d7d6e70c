"""EfficientNet, MobileNet V2/V3/V4 and their kin (timm ``_efficientnet_blocks``): one
residual site per block that has a skip.

timm's blocks add their skip only where the block keeps width and stride (``has_skip``);
every other block (the first of most stages) has no residual, gets no site and is listed in
the anatomy's ``skipless_blocks``. All these blocks end alike, ``x = drop_path(F(x)) + x``;
each site block below spells out its branch ``F`` as timm's forward does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models._efficientnet_blocks import (
    CondConvResidual,
    ConvBnAct,
    DepthwiseSeparableConv,
    EdgeResidual,
    InvertedResidual,
    MobileAttention,
    UniversalInvertedResidual,
)
from torch import nn

from .sites import NO_TOKENS_IN_FEATURE_MAPS, Family, feature_map_site, pointwise_names, register_family

__all__ = ["EFFICIENTNET"]


class _SkipSiteForward:
    """timm's ``if self.has_skip: x = self.drop_path(x) + shortcut`` through the site; each
    block class below defines ``branch``, its own layers in timm's order."""

    output_conv: str
    """Name of the branch's last convolution, whose width is the site's."""
    pointwise: tuple[str, ...]
    """Names of the branch's 1x1 convolution candidates (those that are 1x1 are listed)."""
    branch: Callable[[torch.Tensor], torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.branch(x)
        if self.has_skip:
            x = self.site(shortcut, self.drop_path(x))
        return x


class ConvBnActSiteBlock(_SkipSiteForward, ConvBnAct):
    output_conv, pointwise = "conv", ("conv",)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.aa(self.bn1(self.conv(x)))


class DepthwiseSeparableSiteBlock(_SkipSiteForward, DepthwiseSeparableConv):
    output_conv, pointwise = "conv_pw", ("conv_pw",)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_s2d is not None:
            x = self.bn_s2d(self.conv_s2d(x))
        x = self.se(self.aa(self.bn1(self.conv_dw(x))))
        return self.bn2(self.conv_pw(x))


class InvertedResidualSiteBlock(_SkipSiteForward, InvertedResidual):
    output_conv, pointwise = "conv_pwl", ("conv_pw", "conv_pwl")

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_s2d is not None:
            x = self.bn_s2d(self.conv_s2d(x))
        x = self.bn1(self.conv_pw(x))
        x = self.se(self.aa(self.bn2(self.conv_dw(x))))
        return self.bn3(self.conv_pwl(x))


class EdgeResidualSiteBlock(_SkipSiteForward, EdgeResidual):
    output_conv, pointwise = "conv_pwl", ("conv_pwl",)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.aa(self.bn1(self.conv_exp(x))))
        return self.bn2(self.conv_pwl(x))


class UniversalInvertedResidualSiteBlock(_SkipSiteForward, UniversalInvertedResidual):
    output_conv, pointwise = "pw_proj.conv", ("pw_exp.conv", "pw_proj.conv")

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.dw_mid(self.pw_exp(self.dw_start(x))))
        return self.layer_scale(self.dw_end(self.pw_proj(x)))


def _has_residual(block: nn.Module) -> bool:
    return bool(block.has_skip)


def _add_sites(block: nn.Module) -> None:
    if _has_residual(block):
        width = block.get_submodule(block.output_conv).out_channels
        block.site = feature_map_site(width)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {
        "pointwise_convs": [pointwise_names(b, b.pointwise) for b in blocks],
        "no_token_sequence": NO_TOKENS_IN_FEATURE_MAPS,
    }


EFFICIENTNET = register_family(
    Family(
        name="efficientnet",
        block_types={
            ConvBnAct: ConvBnActSiteBlock,
            DepthwiseSeparableConv: DepthwiseSeparableSiteBlock,
            InvertedResidual: InvertedResidualSiteBlock,
            EdgeResidual: EdgeResidualSiteBlock,
            UniversalInvertedResidual: UniversalInvertedResidualSiteBlock,
        },
        add_sites=_add_sites,
        describe=_describe,
        has_residual=_has_residual,
        refused_block_types={
            CondConvResidual: "CondConv mixes expert kernels per input (no site block yet)",
            MobileAttention: "the attention block of the MobileNetV4 hybrids (no site block yet)",
        },
    )
)
