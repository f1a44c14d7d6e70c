"""VPT (Jia et al., ECCV 2022): learned prompt tokens in a frozen token model's sequence
(ViT/DeiT, EVA/EVA-02, BEiT).

Shallow: ``length`` prompts are inserted after the class/prefix tokens as the sequence
enters block 0 and travel through every block. Deep: every block replaces the prompts it
receives with its own. Both fill the token anatomy's slots: each block's ``token_slot``
(:class:`PromptTokens`) and the model's ``token_exit.slot`` (:class:`StripPrompts`), which
removes the prompts before the final norm, so token and average pooling see exactly the
original tokens. Position encodings stay those of the original tokens: prompts get no
position embedding (it is added before block 0), the identity rotation under EVA's rope and
no relative position bias in BEiT (the backbone's token blocks see to both).

Per-block lengths (a tuple, deep only) give each block its own prompt count; a 0 leaves
that block's input as it is, so the previous block's prompts travel on (NOAH's depth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..backbones import install_sites
from ..backbones.sites import fill_slot
from ..inputs import check_value
from .common import Size, factory_kwargs, normalise_size, per_block
from .registry import MethodConfig, NotApplicableError, register_method

MAX_PROMPT_LENGTH = 1024
"""Every prompt token joins the attention sequence of every block (the paper uses up to 200 on a
sequence of 197): ``length=100000`` would be accepted and never finish an epoch."""


@dataclass
class VPTConfig(MethodConfig):
    """Settings of VPT.

    Attributes:
        length: prompt tokens, an int, or (deep only) one count per block. Default 10: the
            VPT paper searches {1, 5, 10, 50, 100, 200} per task; 10 is a common VTAB-1k choice.
        deep: ``False`` for VPT-shallow (prompts at the input), ``True`` for VPT-deep.
        dropout: dropout on the prompt tokens (VPT's prompt dropout; 0.0 as in its VTAB runs).
        init_range: prompts start uniform in ``[-init_range, init_range]``; ``None`` uses
            VPT's ``sqrt(6 / (3 * patch_h * patch_w + embed_dim))``.
    """

    method: ClassVar[str] = "vpt"

    length: Size = 10
    deep: bool = False
    dropout: float = 0.0
    init_range: float | None = None

    def __post_init__(self) -> None:
        self.length = normalise_size(self.length, "length", MAX_PROMPT_LENGTH)
        check_value(self.deep, "deep", bool)
        self.dropout = check_value(self.dropout, "dropout", float, 0.0, 1.0)
        if self.init_range is not None:
            self.init_range = check_value(self.init_range, "init_range", float, 0.0, 10.0)
        if isinstance(self.length, tuple) and not self.deep:
            raise ValueError("per-block prompt lengths need deep=True; VPT-shallow prompts exist only at the input")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_range is not None and self.init_range <= 0:
            raise ValueError(f"init_range must be > 0 or None, got {self.init_range}")


class PromptTokens(nn.Module):
    """Drops the ``replaces`` prompts carried in, then inserts ``length`` learned ones after the prefix."""

    def __init__(
        self,
        length: int,
        dim: int,
        num_prefix_tokens: int,
        replaces: int,
        init_range: float,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.replaces = replaces
        self.prompts = nn.Parameter(torch.empty(length, dim, device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout)
        nn.init.uniform_(self.prompts, -init_range, init_range)

    @property
    def length(self) -> int:
        return self.prompts.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        prompts = self.dropout(self.prompts).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :p], prompts, x[:, p + self.replaces :]], dim=1)

    def extra_repr(self) -> str:
        return f"length={self.length}, replaces={self.replaces}, num_prefix_tokens={self.num_prefix_tokens}"


class StripPrompts(nn.Module):
    """Removes the ``count`` prompt tokens that follow the prefix tokens."""

    def __init__(self, num_prefix_tokens: int, count: int) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        return torch.cat([x[:, :p], x[:, p + self.count :]], dim=1)

    def extra_repr(self) -> str:
        return f"count={self.count}, num_prefix_tokens={self.num_prefix_tokens}"


def _lengths(config: VPTConfig, num_blocks: int) -> list[int]:
    if isinstance(config.length, int) and not config.deep:
        return [config.length] + [0] * (num_blocks - 1)
    return per_block(config.length, num_blocks, "length")


def apply_vpt(model: nn.Module, config: VPTConfig) -> None:
    """Fills the token slots of the blocks that get prompts, and the token exit."""
    anat = install_sites(model)
    if anat.embed_dim is None:
        raise NotApplicableError(
            f"VPT inserts prompt tokens into a token sequence, which this {anat.family} backbone lacks: "
            f"{anat.no_token_sequence}. Use a token model (ViT/DeiT, EVA, BEiT), or a method that works "
            "on any backbone (snf, adapter, bitfit)."
        )
    kw = factory_kwargs(model)
    patch_h, patch_w = anat.patch_size
    init_range = config.init_range or math.sqrt(6.0 / (3 * patch_h * patch_w + anat.embed_dim))
    carried = 0
    for block, length in zip(anat.blocks, _lengths(config, len(anat.blocks)), strict=True):
        if length:
            prompts = PromptTokens(
                length, anat.embed_dim, anat.num_prefix_tokens, carried, init_range, config.dropout, **kw
            )
            fill_slot(block, "token_slot", prompts)
            carried = length
    if carried:
        fill_slot(model.token_exit, "slot", StripPrompts(anat.num_prefix_tokens, carried))


register_method(
    VPTConfig,
    apply_vpt,
    "VPT: learned prompt tokens after the class token (at the input, or replaced in every block)",
    presets={
        "vpt-shallow": ({"deep": False}, "VPT-shallow: 10 prompt tokens inserted at the input"),
        "vpt-deep": ({"deep": True}, "VPT-deep: 10 prompt tokens replaced in every block"),
    },
)
