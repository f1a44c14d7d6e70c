"""Swin (timm ``swin_transformer.SwinTransformerBlock``): two residual sites per block."""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from .sites import Family, ResidualSite, register_family


class SwinSiteBlock(SwinTransformerBlock):
    """timm's Swin block on (B, H, W, C) maps with both additions routed through sites."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = self.attn_site(x, self.drop_path1(self._attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = self.mlp_site(x, self.drop_path2(self.mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)


def _add_sites(block: nn.Module) -> None:
    block.attn_site = ResidualSite(block.dim, channel_dim=-1)
    block.mlp_site = ResidualSite(block.dim, channel_dim=-1)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {"attentions": [b.attn for b in blocks], "mlps": [b.mlp for b in blocks]}


SWIN = register_family(
    Family(
        name="swin",
        block_types={SwinTransformerBlock: SwinSiteBlock},
        add_sites=_add_sites,
        describe=_describe,
    )
)
