"""EVA and EVA-02 (timm ``eva.EvaBlock`` and ``eva.EvaBlockPostNorm``): two residual sites per
block, and the token slots of :mod:`.tokens`.

EVA-02 rotates queries and keys by a rotary position embedding (rope) sized for the patch
grid, applied to every token after the ``num_prefix_tokens`` class/register tokens. Tokens
that a token slot inserts after the prefix (prompts) have no grid position: they get the
identity rotation (sin 0, cos 1), which leaves them exactly as timm leaves the class token,
and every patch keeps its own rotation.
"""

from __future__ import annotations

import torch
from timm.models.eva import EvaBlock, EvaBlockPostNorm
from torch import nn

from .sites import Family, register_family
from .tokens import add_token_sites, describe_token_model, layer_scaled_pre_norm, prepare_token_exit

__all__ = ["EvaSiteBlock", "EvaPostNormSiteBlock", "rope_with_inserted_tokens", "EVA"]


def rope_with_inserted_tokens(
    rope: torch.Tensor | None, x: torch.Tensor, num_prefix_tokens: int
) -> torch.Tensor | None:
    """``rope`` (``(..., patches, 2 * d)``: sines then cosines, as timm's ``apply_rot_embed_cat``
    reads it) with identity rows in front for the tokens inserted after the prefix tokens of ``x``.
    Returns ``rope`` itself when no token was inserted, so an untouched model runs timm's exact tensors."""
    if rope is None:
        return None
    inserted = x.shape[1] - num_prefix_tokens - rope.shape[-2]
    if inserted <= 0:
        return rope
    half = rope.shape[-1] // 2
    lead = rope.shape[:-2]
    identity = torch.cat([rope.new_zeros(*lead, inserted, half), rope.new_ones(*lead, inserted, half)], dim=-1)
    return torch.cat([identity, rope], dim=-2)


class EvaSiteBlock(EvaBlock):
    """timm's pre-norm EVA block (layer scale ``gamma_1``/``gamma_2`` optional) with sites."""

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = self.token_slot(x)
        rope = rope_with_inserted_tokens(rope, x, self.attn.num_prefix_tokens)
        return layer_scaled_pre_norm(
            self, x, lambda normed: self.attn(normed, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
        )


class EvaPostNormSiteBlock(EvaBlockPostNorm):
    """timm's post-norm EVA block, ``x + drop_path(norm(F(x)))``, with sites."""

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = self.token_slot(x)
        rope = rope_with_inserted_tokens(rope, x, self.attn.num_prefix_tokens)
        x = self.attn_site(
            x, self.drop_path1(self.norm1(self.attn(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)))
        )
        x = self.mlp_site(x, self.drop_path2(self.norm2(self.mlp(x))))
        return x


def _add_sites(block: nn.Module) -> None:
    add_token_sites(block, block.attn.proj.out_features)


EVA = register_family(
    Family(
        name="eva",
        block_types={EvaBlock: EvaSiteBlock, EvaBlockPostNorm: EvaPostNormSiteBlock},
        add_sites=_add_sites,
        describe=describe_token_model,
        prepare_model=prepare_token_exit,
    )
)
