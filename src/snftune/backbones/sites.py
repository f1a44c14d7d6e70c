"""Residual sites: the one place where a backbone's shortcuts become editable.

timm writes every residual connection inline (``x = x + branch(x)``), so no module stands
for the shortcut. Each supported block is given a forward that routes the addition through
a :class:`ResidualSite`, whose two slots (``shortcut`` and ``branch``) are identities until a
tuning method fills them. With empty slots the block computes exactly what timm computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "ResidualSite",
    "Anatomy",
    "UnsupportedModelError",
    "SlotTakenError",
    "Family",
    "fill_slot",
    "register_family",
    "families",
]


class UnsupportedModelError(TypeError):
    """The model has no block type that snftune knows how to expose."""


class SlotTakenError(ValueError):
    """A method tried to fill a slot that another method already holds."""


def fill_slot(owner: nn.Module, slot: str, module: nn.Module) -> None:
    """Puts ``module`` in ``owner.<slot>``, refusing a slot that is not an empty identity:
    two methods on one slot would silently replace each other."""
    current = getattr(owner, slot)
    if not isinstance(current, nn.Identity):
        raise SlotTakenError(
            f"the {slot} slot of {type(owner).__name__} is already taken by {type(current).__name__}; "
            "apply one method per model (build a fresh model for another)"
        )
    setattr(owner, slot, module)


class ResidualSite(nn.Module):
    """``shortcut_slot(h(x)) + branch_slot(F(x))`` for one residual connection.

    ``channels`` and ``channel_dim`` say where the channel vector lives (-1 for tokens and
    Swin's (B, H, W, C) maps, 1 for ResNet's (B, C, H, W) maps), so that methods can build
    per-channel modules without knowing the family.

    ``branch_first`` keeps the operand order of the timm line it replaces (``x + F(x)`` in
    transformers, ``F(x) += h(x)`` in ResNet): the sum's memory layout follows the first
    operand, and a different layout changes later reductions in the last bits.
    """

    def __init__(self, channels: int, channel_dim: int, branch_first: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.channel_dim = channel_dim
        self.branch_first = branch_first
        self.shortcut: nn.Module = nn.Identity()
        self.branch: nn.Module = nn.Identity()

    def fill(self, slot: str, module: nn.Module) -> None:
        """Puts ``module`` in the ``"shortcut"`` or ``"branch"`` slot, which must be empty."""
        if slot not in ("shortcut", "branch"):
            raise ValueError(f"a residual site has the slots 'shortcut' and 'branch', not {slot!r}")
        fill_slot(self, slot, module)

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.branch_first:
            return self.branch(branch) + self.shortcut(shortcut)
        return self.shortcut(shortcut) + self.branch(branch)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, channel_dim={self.channel_dim}"


@dataclass
class Anatomy:
    """Where a backbone's residual sites, attention projections and tokens are.

    Attributes:
        family: ``"vit"``, ``"swin"`` or ``"resnet"``.
        blocks: the site-exposing blocks, in forward order.
        sites: every residual site, in forward order (two per transformer block).
        site_names: qualified module names of ``sites`` (e.g. ``blocks.3.attn_site``).
        block_sites: for each block, its sites in order.
        attentions: per block, the attention module holding the fused ``qkv`` linear
            (empty for ResNet).
        mlps: per block, the MLP module holding the ``fc1`` and ``fc2`` linears (empty for ResNet).
        embed_dim: width of the token sequence (ViT), else None.
        num_prefix_tokens: class/register tokens ahead of the patch tokens (ViT), else 0.
        patch_size: the patch embedding's (height, width) (ViT), else None.
    """

    family: str
    blocks: list[nn.Module]
    sites: list[ResidualSite]
    site_names: list[str]
    block_sites: list[list[ResidualSite]]
    attentions: list[nn.Module] = field(default_factory=list)
    mlps: list[nn.Module] = field(default_factory=list)
    embed_dim: int | None = None
    num_prefix_tokens: int = 0
    patch_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Family:
    """A backbone family: which timm block classes it rewrites, and how."""

    name: str
    block_types: dict[type, type]
    """timm block class -> its site-exposing subclass (same state dict, slot-routed forward)."""
    add_sites: Callable[[nn.Module], None]
    """Attaches empty ResidualSite modules (and other slots) to one converted block."""
    describe: Callable[[nn.Module, list[nn.Module]], dict]
    """Model-level facts for :class:`Anatomy` (attentions, embed_dim, prefix tokens)."""
    prepare_model: Callable[[nn.Module], None] | None = None
    """Optional model-level slot set-up (e.g. the ViT token exit before the final norm)."""


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    return dict(_FAMILIES)
