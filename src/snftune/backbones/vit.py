"""ViT and DeiT (timm ``vision_transformer.Block``): two residual sites per block, and the
token slots of :mod:`.tokens` for prompt methods."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .sites import Family, register_family
from .tokens import TokenExit, add_token_sites, describe_token_model, prepare_token_exit

__all__ = ["TokenExit", "ViTSiteBlock", "VIT"]


class ViTSiteBlock(Block):
    """timm's pre-norm ViT block with its two additions routed through residual sites."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = self.token_slot(x)
        x = self.attn_site(
            x, self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        )
        x = self.mlp_site(x, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))
        return x


def _add_sites(block: nn.Module) -> None:
    add_token_sites(block, block.norm1.normalized_shape[0])


VIT = register_family(
    Family(
        name="vit",
        block_types={Block: ViTSiteBlock},
        add_sites=_add_sites,
        describe=describe_token_model,
        prepare_model=prepare_token_exit,
    )
)
