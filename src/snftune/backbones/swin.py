"""Swin and Swin V2 (timm ``SwinTransformerBlock``, ``SwinTransformerV2Block``): two residual
sites per block, on (B, H, W, C) maps then (B, H*W, C) tokens, as timm runs them.

Swin V1 is pre-norm (``x + F(norm(x))``), Swin V2 post-norm (``x + norm(F(x))``). Both attend
within local windows with masks and biases sized for the window grid, so they have no global
token sequence for prompts.
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from torch import nn

from .sites import Family, ResidualSite, register_family

__all__ = ["SwinSiteBlock", "SwinV2SiteBlock", "SWIN", "SWINV2"]

NO_TOKEN_SEQUENCE = (
    "Swin attends within local windows of a (B, H, W, C) patch map (shifted-window masks and "
    "relative position biases sized for the window), so there is no global token sequence to insert prompts into"
)


class SwinSiteBlock(SwinTransformerBlock):
    """timm's pre-norm Swin block with both additions routed through sites."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = self.attn_site(x, self.drop_path1(self._attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = self.mlp_site(x, self.drop_path2(self.mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)


class SwinV2SiteBlock(SwinTransformerV2Block):
    """timm's post-norm Swin V2 block with both additions routed through sites."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = self.attn_site(x, self.drop_path1(self.norm1(self._attn(x))))
        x = x.reshape(B, -1, C)
        x = self.mlp_site(x, self.drop_path2(self.norm2(self.mlp(x))))
        return x.reshape(B, H, W, C)


def _add_sites(block: nn.Module) -> None:
    block.attn_site = ResidualSite(block.dim, channel_dim=-1)
    block.mlp_site = ResidualSite(block.dim, channel_dim=-1)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {
        "attentions": [b.attn for b in blocks],
        "mlps": [b.mlp for b in blocks],
        "no_token_sequence": NO_TOKEN_SEQUENCE,
    }


SWIN = register_family(
    Family(name="swin", block_types={SwinTransformerBlock: SwinSiteBlock}, add_sites=_add_sites, describe=_describe)
)
SWINV2 = register_family(
    Family(
        name="swinv2", block_types={SwinTransformerV2Block: SwinV2SiteBlock}, add_sites=_add_sites, describe=_describe
    )
)
