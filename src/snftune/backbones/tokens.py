"""What the token models (ViT, EVA, BEiT) share: prompt slots and their layer-scaled blocks.

Each token block gets a ``token_slot`` applied to the token sequence as it enters the block,
and the model a ``token_exit.slot`` applied before the final norm, so prompt methods can add
tokens after the prefix tokens and strip them before pooling without another forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .sites import ResidualSite

__all__ = ["TokenExit", "add_token_sites", "describe_token_model", "layer_scaled_pre_norm", "prepare_token_exit"]


class TokenExit(nn.Module):
    """Holds the ``slot`` run on the token sequence between the last block and the final norm.

    timm's ``forward_features`` has no seam there, so the slot runs as a forward pre-hook of
    ``model.norm`` (an ``nn.Identity`` when the model pools before its norm, which still runs
    hooks); the hook is a bound method of this module, so copies of the model stay wired to
    their own slot.
    """

    def __init__(self) -> None:
        super().__init__()
        self.slot: nn.Module = nn.Identity()

    def pre_hook(self, norm: nn.Module, args: tuple) -> tuple:
        return (self.slot(args[0]), *args[1:])


def prepare_token_exit(model: nn.Module) -> None:
    if isinstance(getattr(model, "token_exit", None), TokenExit):
        return
    model.token_exit = TokenExit()
    model.norm.register_forward_pre_hook(model.token_exit.pre_hook)


def add_token_sites(block: nn.Module, dim: int) -> None:
    """A token slot and the two residual sites (attention, MLP) of a transformer block."""
    block.token_slot = nn.Identity()
    block.attn_site = ResidualSite(dim, channel_dim=-1)
    block.mlp_site = ResidualSite(dim, channel_dim=-1)


def describe_token_model(model: nn.Module, blocks: list[nn.Module]) -> dict:
    return {
        "attentions": [b.attn for b in blocks],
        "mlps": [b.mlp for b in blocks],
        "embed_dim": model.embed_dim,
        "num_prefix_tokens": model.num_prefix_tokens,
        "patch_size": tuple(model.patch_embed.patch_size),
    }


def layer_scaled_pre_norm(
    block: nn.Module, x: torch.Tensor, attend: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The forward of EVA's and BEiT's pre-norm blocks, with both additions routed through sites:
    ``x + drop_path(gamma * attn(norm1(x)))`` then ``x + drop_path(gamma * mlp(norm2(x)))``, where a
    ``gamma_1``/``gamma_2`` of None means no layer scale. ``attend`` runs the attention on the
    normed tokens (each family passes its own position arguments)."""
    x_attn = attend(block.norm1(x))
    if block.gamma_1 is not None:
        x_attn = block.gamma_1 * x_attn
    x = block.attn_site(x, block.drop_path1(x_attn))
    x_mlp = block.mlp(block.norm2(x))
    if block.gamma_2 is not None:
        x_mlp = block.gamma_2 * x_mlp
    return block.mlp_site(x, block.drop_path2(x_mlp))
