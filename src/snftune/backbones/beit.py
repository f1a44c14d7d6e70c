"""BEiT and BEiT v2 (timm ``beit.Block``): two residual sites per block, and the token slots
of :mod:`.tokens`.

BEiT adds a relative position bias to the attention logits, a (heads, 1 + patches,
1 + patches) table indexed for the class token and the patch grid (each block's own, and/or
one shared by all blocks). Tokens that a token slot inserts after the class token (prompts)
have no grid position: :class:`BeitSiteAttention` applies the bias among the original tokens
only (zero bias to and from the inserted ones). Without inserted tokens it is timm's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.beit import Attention, Block
from torch import nn

from .sites import Family, register_family
from .tokens import add_token_sites, describe_token_model, layer_scaled_pre_norm, prepare_token_exit

__all__ = ["BeitSiteAttention", "BeitSiteBlock", "BEIT"]


class BeitSiteAttention(Attention):
    """timm's BEiT attention, with the relative position bias kept to the original tokens when
    tokens were inserted after the class token, and timm's ``attn_mask`` (as ViT and EVA attention
    take it: a boolean mask where True takes part, or an additive float mask) on top of the bias."""

    def forward(
        self,
        x: torch.Tensor,
        shared_rel_pos_bias: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.relative_position_bias_table is not None:
            biased_tokens = self.relative_position_index.shape[0]
        elif shared_rel_pos_bias is not None:
            biased_tokens = shared_rel_pos_bias.shape[-1]
        else:
            biased_tokens = x.shape[1]
        if biased_tokens == x.shape[1] and attn_mask is None:
            return super().forward(x, shared_rel_pos_bias)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        if bias is not None and biased_tokens != x.shape[1]:
            bias = _pad_after_class_token(bias, x.shape[1])
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                    ~attn_mask, float("-inf")
                )
            bias = attn_mask if bias is None else bias + attn_mask
        return self._attend(x, bias)

    def _attend(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """timm's fused-attention path with ``bias`` as the whole additive mask."""
        B, N, C = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:
            qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
            if self.qkv_bias_separate:
                qkv = self.qkv(x)
                qkv += qkv_bias
            else:
                qkv = F.linear(x, weight=self.qkv.weight, bias=qkv_bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


def _pad_after_class_token(bias: torch.Tensor, tokens: int) -> torch.Tensor:
    """``bias`` (sized for class + patch tokens on its last two dims) with zero rows and columns
    for the tokens inserted right after the class token, up to ``tokens``."""
    inserted = tokens - bias.shape[-1]
    bias = torch.cat([bias[..., :1], bias.new_zeros(*bias.shape[:-1], inserted), bias[..., 1:]], dim=-1)
    return torch.cat([bias[..., :1, :], bias.new_zeros(*bias.shape[:-2], inserted, tokens), bias[..., 1:, :]], dim=-2)


class BeitSiteBlock(Block):
    """timm's pre-norm BEiT block (layer scale optional) with sites."""

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_slot(x)
        return layer_scaled_pre_norm(self, x, lambda normed: self.attn(normed, shared_rel_pos_bias=shared_rel_pos_bias))


def _add_sites(block: nn.Module) -> None:
    block.attn.__class__ = BeitSiteAttention
    add_token_sites(block, block.norm1.normalized_shape[0])


BEIT = register_family(
    Family(
        name="beit",
        block_types={Block: BeitSiteBlock},
        add_sites=_add_sites,
        describe=describe_token_model,
        prepare_model=prepare_token_exit,
    )
)
