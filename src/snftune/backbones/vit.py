"""ViT and DeiT (timm ``vision_transformer.Block``): two residual sites per block.

Besides the sites, each block gets a ``token_slot`` applied to the token sequence as it
enters the block, and the model gets a ``token_exit.slot`` applied before the final norm, so
prompt methods can add tokens and strip them before pooling without another forward.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .sites import Family, ResidualSite, register_family


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
    dim = block.norm1.normalized_shape[0]
    block.token_slot = nn.Identity()
    block.attn_site = ResidualSite(dim, channel_dim=-1)
    block.mlp_site = ResidualSite(dim, channel_dim=-1)


class TokenExit(nn.Module):
    """Holds the ``slot`` run on the token sequence between the last block and the final norm.

    timm's ``forward_features`` has no seam there, so the slot runs as a forward pre-hook of
    ``model.norm``; the hook is a bound method of this module, so copies of the model stay
    wired to their own slot.
    """

    def __init__(self) -> None:
        super().__init__()
        self.slot: nn.Module = nn.Identity()

    def pre_hook(self, norm: nn.Module, args: tuple) -> tuple:
        return (self.slot(args[0]), *args[1:])


def _prepare_model(model: nn.Module) -> None:
    if isinstance(getattr(model, "token_exit", None), TokenExit):
        return
    model.token_exit = TokenExit()
    model.norm.register_forward_pre_hook(model.token_exit.pre_hook)


def _describe(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {
        "attentions": [b.attn for b in blocks],
        "mlps": [b.mlp for b in blocks],
        "embed_dim": model.embed_dim,
        "num_prefix_tokens": model.num_prefix_tokens,
        "patch_size": tuple(model.patch_embed.patch_size),
    }


VIT = register_family(
    Family(
        name="vit",
        block_types={Block: ViTSiteBlock},
        add_sites=_add_sites,
        describe=_describe,
        prepare_model=_prepare_model,
    )
)
