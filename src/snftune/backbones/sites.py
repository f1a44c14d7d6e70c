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

from ..errors import SnftuneError

__all__ = [
    "ResidualSite",
    "Anatomy",
    "UnsupportedModelError",
    "SlotTakenError",
    "Family",
    "fill_slot",
    "register_family",
    "families",
    "NO_TOKENS_IN_FEATURE_MAPS",
    "feature_map_site",
    "is_pointwise",
    "pointwise_names",
]

NO_TOKENS_IN_FEATURE_MAPS = (
    "a CNN computes (B, C, H, W) feature maps with convolutions: there is no token sequence to insert prompts into"
)


class UnsupportedModelError(SnftuneError, TypeError):
    """The model has no block type that snftune knows how to expose."""


class SlotTakenError(SnftuneError, ValueError):
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


def is_pointwise(layer: nn.Module | None) -> bool:
    """A linear layer, or a 1x1 stride-1 ungrouped convolution (the same map on every position)."""
    if type(layer) is nn.Linear:
        return True
    return isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.groups == 1


def pointwise_names(block: nn.Module, candidates: tuple[str, ...]) -> list[str]:
    """The ``candidates`` (module names relative to ``block``) that exist and are pointwise."""
    found = dict(block.named_modules())
    return [name for name in candidates if is_pointwise(found.get(name))]


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


def feature_map_site(channels: int) -> ResidualSite:
    """The site of a CNN block: (B, C, H, W) maps, and timm's ``F(x) + h(x)`` operand order."""
    return ResidualSite(channels, channel_dim=1, branch_first=True)


@dataclass
class Anatomy:
    """Where a backbone's residual sites, attention projections and tokens are.

    Attributes:
        family: the family's name (``"vit"``, ``"eva"``, ``"beit"``, ``"swin"``, ``"swinv2"``,
            ``"resnet"``, ``"regnet"``, ``"convnext"``, ``"efficientnet"``).
        blocks: the converted blocks, in forward order (blocks without a skip included).
        sites: every residual site, in forward order (two per transformer block).
        site_names: qualified module names of ``sites`` (e.g. ``blocks.3.attn_site``).
        block_sites: for each block, its sites in order (empty for a block without a skip).
        block_names: qualified module names of ``blocks``.
        skipless_blocks: names of the blocks that have no residual connection (an
            EfficientNet block that changes width or stride, a RegNet block built without a
            shortcut): they get no site, so shortcut methods leave them as they are.
        attentions: per block, the attention module holding the ``qkv`` linear (or EVA's
            separate ``q_proj``/``k_proj``/``v_proj``); empty for CNNs.
        mlps: per block, the MLP module holding the ``fc1`` (or SwiGLU's ``fc1_g``/``fc1_x``)
            and ``fc2`` layers; empty for CNNs without one.
        pointwise_convs: per block, the names (relative to the block, e.g. ``conv_pwl`` or
            ``conv3.conv``) of the 1x1 convolutions of its branch, or of the channel MLP's
            linears that act as 1x1 convolutions (ConvNeXt); empty for transformers.
        embed_dim: width of the token sequence (token models: ViT, EVA, BEiT), else None.
        num_prefix_tokens: class/register tokens ahead of the patch tokens (token models), else 0.
        patch_size: the patch embedding's (height, width) (token models), else None.
        no_token_sequence: why prompt methods cannot insert tokens (empty for token models).
    """

    family: str
    blocks: list[nn.Module]
    sites: list[ResidualSite]
    site_names: list[str]
    block_sites: list[list[ResidualSite]]
    block_names: list[str] = field(default_factory=list)
    skipless_blocks: list[str] = field(default_factory=list)
    attentions: list[nn.Module] = field(default_factory=list)
    mlps: list[nn.Module] = field(default_factory=list)
    pointwise_convs: list[list[str]] = field(default_factory=list)
    embed_dim: int | None = None
    num_prefix_tokens: int = 0
    patch_size: tuple[int, int] | None = None
    no_token_sequence: str = ""


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
    has_residual: Callable[[nn.Module], bool] | None = None
    """For families whose blocks may lack a skip (timm's ``has_skip``): whether this block has one.
    A block without one is still converted (its forward is timm's) but gets no site."""
    refused_block_types: dict[type, str] = field(default_factory=dict)
    """timm blocks of this family's models that have a residual snftune does not expose, with the
    reason: a model holding one is refused, rather than tuned with some shortcuts left out."""


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    return dict(_FAMILIES)
